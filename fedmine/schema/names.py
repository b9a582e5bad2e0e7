"""Column names: their words, the unit a name declares, and how alike two names are.

Organisations name one thing in many ways: ``"Age (years)"``, ``AGE_YRS``,
``customerAge``, ``age``. A name is read as words (camelCase and punctuation
split, lower case), with what it says about units set aside: text in
parentheses or brackets (``"Call Duration (min)"``) and a trailing unit word
(``BALANCE_EUR``, ``duration_sec``) are the name's *annotation*, not its words.
A few common abbreviations and synonyms are read as the word they stand for
(``qtr`` quarter, ``gender`` sex, ``prior`` previous).

:func:`name_similarity` compares the words of two names in [0, 1]: 1 when
they are the same words, high when one name's words are contained in the
other's or one abbreviates the other (``pdays`` for ``days_since_previous``,
``CPI`` for ``consumer_price_index``), low otherwise. Character similarity
alone counts only when it is high, so unrelated names of similar length
score near 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache
from itertools import permutations

import numpy as np

#: Words that carry no meaning in a column name.
STOP_WORDS = frozenset(
    {"of", "the", "a", "an", "in", "on", "at", "is", "has", "have", "this", "for", "to", "by", "was"}
)
#: Abbreviations and synonyms, read as the word they stand for.
SYNONYMS: dict[str, str] = {
    "qtr": "quarter",
    "yr": "year",
    "yrs": "years",
    "mo": "month",
    "mth": "month",
    "wk": "week",
    "dow": "weekday",
    "amt": "amount",
    "bal": "balance",
    "avg": "average",
    "cnt": "count",
    "num": "number",
    "nr": "number",
    "no": "number",
    "qty": "quantity",
    "pct": "percent",
    "dur": "duration",
    "prev": "previous",
    "prior": "previous",
    "gender": "sex",
    "occupation": "job",
    "profession": "job",
    "civil": "marital",
    "marriage": "marital",
    "mortgage": "housing",
    "calls": "contacts",
    "called": "contacted",
    "result": "outcome",
    "last": "previous",
    "late": "delayed",
    "overdue": "delayed",
    "edu": "education",
    "temp": "temperature",
    "addr": "address",
    "tel": "telephone",
    "phone": "telephone",
    "dob": "birth",
}
#: Words that name a unit (besides the unit table's spellings), as the table's unit.
UNIT_WORDS: dict[str, str] = {
    "k": "thousands",
    "000": "thousands",
    "000s": "thousands",
    "1000s": "thousands",
    "mn": "millions",
    "mio": "millions",
    "secs": "seconds",
    "sec": "seconds",
    "mins": "minutes",
    "hrs": "hours",
    "yrs": "years",
    "percentage": "%",
}
#: Currency words: a unit the table does not convert, but not part of a name's meaning.
CURRENCIES = frozenset({"eur", "euro", "euros", "usd", "gbp", "chf", "jpy", "ntd", "nt", "twd", "mu"})


@dataclass(frozen=True)
class Name:
    """A column name read as words.

    Attributes
    ----------
    text : the name as written.
    words : its words, lower case, synonyms replaced, stop words and the annotation removed.
    annotation : the words of its parenthesised part and trailing unit word (``["min"]``).
    """

    text: str
    words: tuple[str, ...]
    annotation: tuple[str, ...]

    @property
    def joined(self) -> str:
        return "".join(self.words)


def _split(text: str) -> list[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", text)
    return [t for t in re.split(r"[^a-z0-9%]+", text.lower()) if t]


#: Trailing words read as a unit (``AGE_YRS``, ``duration_sec``, ``BALANCE_EUR``); singular calendar words
#: (``contact_month``, ``birth_year``) stay words.
TRAILING_UNITS = frozenset(
    {
        *UNIT_WORDS,
        *CURRENCIES,
        "%",
        "yr",
        "years",
        "months",
        "weeks",
        "days",
        "hours",
        "h",
        "min",
        "minutes",
        "seconds",
        "ms",
        "kg",
        "lb",
        "lbs",
        "cm",
        "mm",
        "km",
        "pct",
        "percent",
        "thousands",
        "millions",
    }
)


@lru_cache(maxsize=4096)
def read_name(text: str) -> Name:
    """``"Call Duration (min)"`` -> words ``("call", "duration")``, annotation ``("min",)``."""
    text = str(text)
    inner = " ".join(re.findall(r"[(\[{]([^)\]}]*)[)\]}]", text))
    outer = re.sub(r"[(\[{][^)\]}]*[)\]}]", " ", text)
    words = _split(outer)
    annotation = _split(inner)
    while len(words) > 1 and words[-1] in TRAILING_UNITS:
        annotation.insert(0, words.pop())
    words = [w for w in words if w != "%"]
    kept = [SYNONYMS.get(w, w) for w in words if w not in STOP_WORDS] or words
    return Name(text, tuple(kept), tuple(annotation))


def name_tokens(name: str) -> list[str]:
    """``"previousOutcome"``, ``"Previous Outcome (code)"`` -> ``["previous", "outcome"]``."""
    return list(read_name(name).words)


def same_name(a: str, b: str) -> bool:
    """Whether two names are the same words (``"Marital Status"`` and ``marital_status``)."""
    na, nb = read_name(a), read_name(b)
    return bool(na.words) and na.joined == nb.joined


def _token_match(a: str, b: str) -> float:
    if a == b:
        return 1.0
    if len(a) >= 3 and len(b) >= 3 and (a in b or b in a):
        return 0.8
    if len(a) >= 3 and len(b) >= 3 and a[:3] == b[:3]:
        return 0.6
    return 0.0


def _abbreviates(text: str, tokens: tuple[str, ...]) -> bool:
    """Whether ``text`` is made of prefixes of two or more of ``tokens``, in some order (``pdays``, ``cpi``)."""
    if len(tokens) < 2 or len(tokens) > 5 or len(text) < 2:
        return False

    def fits(rest: str, toks: tuple[str, ...]) -> bool:
        if not rest or not toks:
            return not rest and not toks
            return False
        head = toks[0]
        return any(rest.startswith(head[:k]) and fits(rest[k:], toks[1:]) for k in range(len(head), 0, -1))

    for r in range(2, len(tokens) + 1):
        for perm in permutations(tokens, r):
            if fits(text, perm):
                return True
    return False


@lru_cache(maxsize=65536)
def words_similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """Similarity of two names' words in [0, 1] (see the module docstring)."""
    if not a or not b:
        return 0.0
    ca, cb = "".join(a), "".join(b)
    if ca == cb:
        return 1.0
    shared = set(a) & set(b)
    rest_a = "".join(w for w in a if w not in shared)
    rest_b = "".join(w for w in b if w not in shared)
    if shared and rest_a and rest_b:  # a shared word says nothing of the others' spelling
        ca, cb = rest_a, rest_b
    seq = SequenceMatcher(None, ca, cb).ratio()
    seq = seq if seq >= 0.8 else max(0.0, 2.0 * seq - 1.0) * 0.6  # near spellings only
    forward = float(np.mean([max(_token_match(x, y) for y in b) for x in a]))
    backward = float(np.mean([max(_token_match(y, x) for x in a) for y in b]))
    tokens = 0.75 * max(forward, backward) + 0.25 * min(forward, backward)
    single = (len(a) == 1 and len(ca) >= 2 and _abbreviates(ca, b)) or (
        len(b) == 1 and len(cb) >= 2 and _abbreviates(cb, a)
    )
    abbrev = 0.85 if single else 0.0
    return float(max(seq, tokens, abbrev))


def name_similarity(a: str, b: str) -> float:
    """Similarity of two column names in [0, 1] (1: the same words)."""
    return words_similarity(read_name(a).words, read_name(b).words)


def declared_unit(name: str) -> str | None:
    """The unit a column's name declares (``"Call Duration (min)"`` -> ``minutes``), if the unit table has it."""
    from fedmine.schema.units import UnitError, lookup

    for word in read_name(name).annotation:
        if word in UNIT_WORDS:
            return UNIT_WORDS[word]
        if len(word) < 1 or word in CURRENCIES:
            continue
        try:
            return lookup(word).name
        except UnitError:
            continue
    return None
