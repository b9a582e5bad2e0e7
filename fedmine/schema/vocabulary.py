"""Source values read onto a canonical vocabulary, and two-valued columns read as booleans.

Organisations spell one category in many ways: ``ADMIN.`` for ``admin.``,
``March`` or ``3`` for ``mar``, ``PRIMARY SCHOOL`` for ``primary``, ``M`` for
``male``. :func:`match_vocabulary` maps each source value where its spelling
tells, in this order:

1. the same text, or the same letters and digits in any case (``Self-Employed``);
2. a month or weekday, by name, abbreviation or number (1 = January, 1 = Monday),
   when the vocabulary is one of those calendars;
3. a vocabulary entry whose words are all among the value's words
   (``OTHER REGION`` -> ``other``), or that starts with the value or the
   value with it (``M`` -> ``male``, ``Other`` -> ``others``), when only one entry does;
4. a close spelling (character ratio 0.8 and up).

Everything else is left for a person (``unresolved``). :func:`read_flag`
reads a column of two values as ``true``/``false``: yes/no and the like,
``X``/``No X`` (``Housing loan``/``No housing loan``, ``Smoker``/``Non-smoker``),
or one value naming the feature (``Retail``/``Hotel/Restaurant/Cafe`` for ``retail``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Any

TRUE_WORDS = frozenset({"1", "true", "yes", "y", "t"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "f"})
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTH_NAMES = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NEGATION = re.compile(r"^\s*(?:(?:not|no|without|never)\b|non|un)[\s_\-]*(.+)$", re.IGNORECASE)


def norm_value(v: Any) -> str:
    """A value's letters and digits, lower case; whole numbers without their ``.0`` (``"1.0"`` -> ``"1"``)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    text = str(v).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _words(v: Any) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", str(v).lower()) if w]


def _calendar_index(n: str) -> tuple[str, int] | None:
    """``"march"``, ``"mar"`` -> ``("month", 2)``; ``"tuesday"``, ``"tue"``, ``"tues"`` -> ``("weekday", 1)``."""
    for kind, short, full in (("month", MONTHS, MONTH_NAMES), ("weekday", WEEKDAYS, WEEKDAY_NAMES)):
        for i, (s, f) in enumerate(zip(short, full, strict=True)):
            if n in (s, f) or (len(n) >= 3 and f.startswith(n)):
                return kind, i
    return None


def calendar(vocab: list[str]) -> str | None:
    """``"month"`` or ``"weekday"`` when most of the vocabulary names months or weekdays, else None."""
    kinds = [_calendar_index(norm_value(v)) for v in vocab]
    for kind in ("month", "weekday"):
        if len(vocab) >= 4 and sum(1 for k in kinds if k and k[0] == kind) >= 0.75 * len(vocab):
            return kind
    return None


@dataclass
class VocabularyMatch:
    """How a column's values meet a vocabulary.

    Attributes
    ----------
    mapping : source value -> vocabulary entry, for values spelt otherwise.
    how : source value -> the rule that matched it (``case``, ``month``, ``contains``, ...).
    unresolved : source values no rule matched, most frequent first.
    coverage : share of the column's rows whose value is in the vocabulary or mapped onto it.
    """

    mapping: dict[str, str] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)
    coverage: float = 0.0


@dataclass(frozen=True)
class _Index:
    """What matching needs of a vocabulary, worked out once per vocabulary."""

    vocab: tuple[str, ...]
    by_norm: dict[str, str]
    norms: tuple[str, ...]
    words: tuple[frozenset[str], ...]
    calendar: str | None
    by_day: dict[int, str]  # month or weekday index -> entry, for a calendar vocabulary


@lru_cache(maxsize=256)
def _index(vocab: tuple[str, ...]) -> _Index:
    by_norm: dict[str, str] = {}
    for v in vocab:
        by_norm.setdefault(norm_value(v), v)
    kind = calendar(list(vocab))
    by_day: dict[int, str] = {}
    if kind:
        for v in vocab:
            found = _calendar_index(norm_value(v))
            if found and found[0] == kind:
                by_day.setdefault(found[1], v)
    return _Index(
        vocab,
        by_norm,
        tuple(norm_value(v) for v in vocab),
        tuple(frozenset(_words(v)) for v in vocab),
        kind,
        by_day,
    )


def _close_spelling(n: str, index: _Index, *, least: float = 0.8) -> str | None:
    best, best_ratio = None, least
    for v, t in zip(index.vocab, index.norms, strict=True):
        if 2.0 * min(len(n), len(t)) < best_ratio * (len(n) + len(t)):  # the ratio's upper bound
            continue
        sm = SequenceMatcher(None, n, t)
        if sm.real_quick_ratio() < best_ratio or sm.quick_ratio() < best_ratio:
            continue
        ratio = sm.ratio()
        if ratio >= best_ratio and (best is None or ratio > best_ratio):
            best, best_ratio = v, ratio
    return best


def match_value(
    value: str, *, vocab: list[str], numeric: bool = False, spelling: bool = True
) -> tuple[str | None, str]:
    """The vocabulary entry ``value`` stands for, and the rule that says so (``(None, "none")`` if no rule does).

    ``numeric``: the source column holds numbers (then only a number in the
    vocabulary, or a month or weekday number of a calendar vocabulary, matches).
    ``spelling``: also try close spellings (rule 4).
    """
    index = _index(tuple(vocab))
    n = norm_value(value)
    if n in index.by_norm:
        target = index.by_norm[n]
        return target, "same" if str(value) == target else "case"
    kind = index.calendar
    if kind and n:
        if n.isdigit():
            i = int(n) - 1
            if i in index.by_day and (kind == "month" or int(n) <= 7):
                return index.by_day[i], f"{kind} number"
        else:
            found = _calendar_index(n)
            if found and found[0] == kind and found[1] in index.by_day:
                return index.by_day[found[1]], f"{kind} name"
    if numeric or not n:
        return None, "none"
    words = set(_words(value))
    contained = [v for v, w in zip(index.vocab, index.words, strict=True) if w and w <= words]
    if len(contained) == 1:
        return contained[0], "contains"
    prefixed = [v for v, t in zip(index.vocab, index.norms, strict=True) if t and (t.startswith(n) or n.startswith(t))]
    if len(prefixed) == 1:
        return prefixed[0], "prefix"
    best = _close_spelling(n, index) if spelling else None
    if best is not None:
        return best, "spelling"
    return None, "none"


def match_vocabulary(values: dict[str, int], *, vocab: list[str], numeric: bool = False) -> VocabularyMatch:
    """Map a column's values (value -> rows, most frequent first) onto ``vocab``; see the module docstring.

    Close spellings (rule 4) are looked for only in a column some of whose
    values the other rules matched, or with about as many values as the
    vocabulary: a column of other things is not searched for typos.
    """
    out = VocabularyMatch()
    total = sum(values.values())
    found: dict[str, tuple[str | None, str]] = {
        v: match_value(v, vocab=vocab, numeric=numeric, spelling=False) for v in values
    }
    if not numeric and (any(t is not None for t, _ in found.values()) or len(values) <= len(vocab) + 2):
        index = _index(tuple(vocab))
        for v, (target, _) in found.items():
            if target is None:
                close = _close_spelling(norm_value(v), index)
                if close is not None:
                    found[v] = (close, "spelling")
    covered = 0
    for value, rows in values.items():
        target, how = found[value]
        if target is None:
            out.unresolved.append(value)
            continue
        covered += rows
        if str(value) != target:
            out.mapping[value] = target
            out.how[value] = how
    out.coverage = covered / total if total else 0.0
    return out


@dataclass
class FlagReading:
    """A two-valued column read as a boolean.

    Attributes
    ----------
    mapping : source value -> True or False (empty when the column's values do not say which is which).
    how : ``words`` (yes/no, 1/0, ...), ``negation`` (``X``/``No X``), ``named`` (a value names the
        feature) or ``unknown``.
    subject : what a ``negation`` or ``named`` flag is about (``"housing loan"``), else ``""``.
    true_share : share of rows read as true (NaN when unknown).
    """

    mapping: dict[str, bool]
    how: str
    subject: str = ""
    true_share: float = float("nan")


def read_flag(values: dict[str, int], *, name: str = "") -> FlagReading | None:
    """Read a column of two values (value -> rows) as a boolean; None when it has more or fewer values.

    ``name``: the feature it might be; a value that names it is read as true
    when the values say nothing else.
    """
    from fedmine.schema.names import name_similarity

    if len(values) != 2 and not (len(values) == 1 and norm_value(next(iter(values))) in TRUE_WORDS | FALSE_WORDS):
        return None
    total = sum(values.values()) or 1
    keys = list(values)

    def share(mapping: dict[str, bool]) -> float:
        return sum(n for v, n in values.items() if mapping.get(v)) / total

    lowered = {v: norm_value(v) for v in keys}
    if all(w in TRUE_WORDS | FALSE_WORDS for w in lowered.values()) and len(
        {w in TRUE_WORDS for w in lowered.values()}
    ) == len(keys):
        mapping = {v: lowered[v] in TRUE_WORDS for v in keys}
        return FlagReading(mapping, "words", true_share=share(mapping))
    if len(keys) != 2:
        return None
    for neg, pos in ((keys[0], keys[1]), (keys[1], keys[0])):
        m = _NEGATION.match(neg)
        subject = norm_value(m.group(1)) if m else ""
        if subject and (norm_value(pos) == subject or norm_value(pos).endswith(subject) or norm_value(pos) == "yes"):
            mapping = {pos: True, neg: False}
            return FlagReading(mapping, "negation", subject=m.group(1).strip().lower(), true_share=share(mapping))
    if name:
        sims = [name_similarity(v, name) for v in keys]
        if max(sims) >= 0.75 and min(sims) < 0.5:
            pos = keys[sims.index(max(sims))]
            mapping = {v: v == pos for v in keys}
            return FlagReading(mapping, "named", subject=pos.lower(), true_share=share(mapping))
    return FlagReading({}, "unknown")
