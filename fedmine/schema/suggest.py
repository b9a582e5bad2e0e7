"""Mapping suggestions for an organisation that joins the federation.

The new organisation summarises its own source columns (kind, missing
markers, quantiles or value counts); the federation's profile of the other
organisations describes the canonical features. Each pair (source column,
canonical feature or label) the column's values could be is scored::

    score = 0.55 * identity + 0.30 * fit + 0.15 * distribution

- ``identity``: the evidence that they are the same thing: the names' words
  (:mod:`fedmine.schema.names`: units and punctuation set aside, ``pdays`` for
  ``days_since_previous``), or the values themselves where they name it (a
  category's distinctive vocabulary, a ``Housing loan``/``No housing loan``
  flag, a label's usual name or place as the last column), and the mapped
  organisations' own mappings in the config (:func:`precedents`: their source
  column for a feature is another name of it, their value maps read the same
  codes, their missing markers mark the same codes missing);
- ``fit``: how well the values can be the type (for a category, the share of
  rows whose value reads onto the vocabulary, :mod:`fedmine.schema.vocabulary`;
  a count column with values beyond a coded vocabulary fits badly);
- ``distribution``: overlap of the middle 90 % with the federation's (after
  the unit the column's name declares, or a likely unit factor when one
  explains the gap), the share of ``true``, or category frequencies.

A pair is acceptable from a score of :data:`MIN_SCORE` when it has evidence of
identity: a name that matches well, values that name the feature, or a fair
name with a matching distribution. A column whose name is the feature's name
(the same words) is taken first. The rest is an assignment problem: one
column per feature, the set of pairs with the largest total score
(:func:`assign`, the Hungarian method), not the best pair first. The result
is a YAML proposal (rename, values, missing, units or scale) with the evidence
as comments, for a person to review: nothing is applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fedmine.config import FeatureSpec, FederationConfig
from fedmine.errors import ConfigError
from fedmine.schema.names import declared_unit, name_similarity, read_name, same_name
from fedmine.schema.vocabulary import (
    FALSE_WORDS,
    TRUE_WORDS,
    FlagReading,
    VocabularyMatch,
    calendar,
    match_vocabulary,
    norm_value,
    read_flag,
)

#: Values that usually mean "missing" in someone's export.
MISSING_WORDS = {"", "?", "na", "n/a", "nan", "null", "none", "unknown", "missing", "-", "nonexistent", "not known"}
#: Numeric codes that often mean "missing" or "never".
SENTINELS = (-1, -9, -99, -999, -9999, 99, 999, 9999, 99999)
#: Weights of the score.
W_NAME, W_FIT, W_DIST = 0.55, 0.30, 0.15
#: A pair is proposed from this score on (with evidence of identity, see the module docstring).
MIN_SCORE = 0.5
#: Names that usually mean "the label" (a column of only this word).
LABEL_WORDS = frozenset({"y", "target", "label", "class", "outcome", "response"})
#: Distinct values up to which a numeric column is also counted per value (codes, flags, counts).
MAX_CODES = 50


def name_tokens(name: str) -> list[str]:
    """A column name's words: ``"Previous Outcome (code)"`` -> ``["previous", "outcome"]``."""
    return list(read_name(name).words)


# ---------------------------------------------------------------------------
# the new organisation's columns
# ---------------------------------------------------------------------------


@dataclass
class ColumnSummary:
    """What the new organisation tells about one of its columns (aggregates only).

    ``values``: value -> rows, most frequent first (top 50); for a numeric
    column only when it has at most 50 distinct values. ``last``: the table's
    last column (where a label usually is).
    """

    name: str
    kind: str  # numeric, text, date
    rows: int
    missing_words: list[str] = field(default_factory=list)
    sentinels: list[float] = field(default_factory=list)
    quantiles: dict[str, float] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    distinct: int = 0
    integer: bool = False
    last: bool = False

    @property
    def binary(self) -> bool:
        """Two values (or one), not counting missing markers."""
        return 0 < self.distinct <= 2


def _number_text(x: float) -> str:
    """A number as a value map's key reads it: ``1.0`` -> ``"1"``, ``2.5`` -> ``"2.5"``."""
    return str(int(x)) if x.is_integer() else repr(x)


def summarise_column(name: str, col: pd.Series, *, last: bool = False) -> ColumnSummary:
    """A source column's kind, missing markers, sentinels, quantiles and value counts."""
    rows = len(col)
    present = col[col.notna()]
    text = present.astype(str).str.strip()
    words = sorted({v for v in text.unique() if v.lower() in MISSING_WORDS})
    text = text[~text.str.lower().isin(MISSING_WORDS)]
    numeric = pd.to_numeric(text, errors="coerce")
    s = ColumnSummary(name, "text", rows, missing_words=words, last=last)
    if len(text) and numeric.notna().mean() > 0.98:
        s.kind = "numeric"
        x = numeric.dropna().to_numpy(dtype=np.float64)
        distinct = np.unique(x)
        for code in SENTINELS:
            share = float(np.mean(x == code))
            if share < 0.01 or len(distinct) < 3:
                continue
            others = distinct[distinct != code]
            if (code == distinct[-1] and others[-1] * 2 < code) or (code == distinct[0] and code < 0 <= others[0]):
                s.sentinels.append(float(code))
        x = x[~np.isin(x, s.sentinels)]
        if len(x):
            s.quantiles = {
                k: float(v)
                for k, v in zip(("p5", "p25", "p50", "p75", "p95"), np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95]))
            }
        uniq, counts = np.unique(x, return_counts=True)
        s.distinct = len(uniq)
        s.integer = bool(len(x)) and bool(np.all(x == np.round(x)))
        if len(uniq) <= MAX_CODES:
            order = np.argsort(-counts, kind="stable")
            s.values = {_number_text(float(uniq[i])): int(counts[i]) for i in order}
        return s
    if len(text) and text.str.match(r"^\d{4}-\d{2}-\d{2}").mean() > 0.9:
        s.kind = "date"
        return s
    counts = text.value_counts()
    s.distinct = len(counts)
    s.values = {str(k): int(v) for k, v in counts.iloc[:MAX_CODES].items()}
    return s


# ---------------------------------------------------------------------------
# what the other organisations' mappings say
# ---------------------------------------------------------------------------


@dataclass
class Precedent:
    """How the organisations already mapped reach one canonical column, from the config.

    ``names``: their source columns renamed onto it (organisation -> column);
    ``values``: their value maps for it (organisation -> {source value as text: canonical value});
    ``missing``: their missing markers for it, as text (``"*"`` markers included).
    """

    names: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: dict[str, set[str]] = field(default_factory=dict)


def precedents(cfg: FederationConfig, others: list[str]) -> dict[str, Precedent]:
    """Canonical column -> how ``others`` map onto it (their ``rename`` and ``values`` entries)."""
    out: dict[str, Precedent] = {}
    for org in others:
        spec = cfg.organisations[org]
        for src, dst in spec.rename.items():
            out.setdefault(dst, Precedent()).names[org] = src
        for dst, vmap in spec.values.items():
            out.setdefault(dst, Precedent()).values[org] = {_key_text(k): v for k, v in vmap.items()}
        for dst, markers in spec.missing.items():
            for name in [dst] if dst != "*" else [*cfg.features, cfg.label]:
                out.setdefault(name, Precedent()).missing.setdefault(org, set()).update(map(_key_text, markers))
    return out


def _key_text(key: Any) -> str:
    """A value-map key or marker as text, as harmonisation compares them (``1`` and ``1.0`` -> ``"1"``)."""
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return _number_text(float(key))
    return str(key)


def _known_values(col: ColumnSummary, precedent: Precedent | None) -> tuple[str, dict[str, Any], float]:
    """The other organisations' value map that covers most of the column's rows: (organisation, map, share)."""
    best: tuple[str, dict[str, Any], float] = ("", {}, 0.0)
    total = sum(col.values.values())
    if precedent is None or not total:
        return best
    for org, vmap in precedent.values.items():
        covered = sum(n for v, n in col.values.items() if v in vmap)
        if covered / total > best[2]:
            best = (org, {v: vmap[v] for v in col.values if v in vmap}, covered / total)
    return best


# ---------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    union = max(a[1], b[1]) - min(a[0], b[0])
    if union <= 0:
        return 1.0 if a == b else 0.0
    return max(hi - lo, 0.0) / union


@dataclass
class Candidate:
    """The evidence that a source column is a canonical feature (or the label).

    ``name`` is the names' similarity and ``identity`` the strongest evidence
    that they are the same thing (the name, or values that name the feature);
    ``exact``: the same words; ``measured``: ``dist`` compares with the
    federation's profile (else it is a neutral 0.5); ``values`` the proposed
    value mapping, ``unresolved`` the values left to a person, ``hint`` codes
    paired with categories by frequency (a comment only); ``scale`` with
    ``unit`` (a unit of the table) or alone (a free factor).
    """

    column: str
    feature: str
    name: float
    fit: float
    dist: float
    identity: float = 0.0
    exact: bool = False
    measured: bool = False
    scale: float | None = None
    scale_reason: str = ""
    unit: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hint: dict[str, tuple[str, float, float]] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return W_NAME * max(self.name, self.identity) + W_FIT * self.fit + W_DIST * self.dist

    @property
    def acceptable(self) -> bool:
        """Score above :data:`MIN_SCORE` with evidence of identity (module docstring)."""
        evidence = (
            self.exact
            or self.identity >= 0.5
            or self.name >= 0.75
            or (self.name >= 0.4 and self.measured and self.dist >= 0.3 and self.fit >= 0.5)
        )
        return evidence and self.score >= MIN_SCORE


def _numeric_pair(cand: Candidate, *, col: ColumnSummary, spec: FeatureSpec, fed: dict[str, Any]) -> Candidate | None:
    from fedmine.schema.profiler import nearest_factor
    from fedmine.schema.units import UnitError, conversion

    if col.kind != "numeric":
        return None
    cand.fit = 1.0
    q = fed.get("quantiles") or {}
    theirs = (q.get("p5", math.nan), q.get("p95", math.nan))
    known = bool(col.quantiles) and all(v == v for v in theirs)
    mine = (col.quantiles["p5"], col.quantiles["p95"]) if col.quantiles else (math.nan, math.nan)
    raw = _overlap(mine, theirs) if known else 0.5
    cand.dist, cand.measured = raw, known
    declared = declared_unit(col.name)
    if declared is not None:
        try:
            if spec.unit:
                s, o = conversion(declared, spec.unit, quantity=spec.quantity or cand.feature)
                unit: str | None = declared
            else:  # no canonical unit: a count prefix (thousands, millions) is a free factor
                s, o = conversion(declared, "units")
                unit = None
        except UnitError:
            s, o, unit = 1.0, 0.0, None
        if o == 0 and s > 0 and s != 1.0:
            scaled = _overlap((mine[0] * s, mine[1] * s), theirs) if known else 0.5
            if scaled >= raw - 0.1:
                cand.scale, cand.unit, cand.dist = s, unit, scaled
                cand.scale_reason = f"the name says {declared}"
    if cand.scale is None and known and col.quantiles.get("p50") and q.get("p50"):
        found = nearest_factor(q["p50"] / col.quantiles["p50"], quantity=spec.quantity or cand.feature)
        if found:
            scaled = _overlap((mine[0] * found[0], mine[1] * found[0]), theirs)
            if scaled > raw + 0.2:
                cand.dist, cand.scale, cand.scale_reason = 0.9 * scaled, found[0], found[1]
    factor = cand.scale or 1.0
    if spec.type == "int" and col.kind == "numeric" and not col.integer and factor == 1.0:
        cand.fit -= 0.3
    if col.quantiles:
        lo, hi = col.quantiles["p5"] * factor, col.quantiles["p95"] * factor
        if spec.min is not None and lo < float(spec.min) - 1e-9:  # type: ignore[arg-type]
            cand.fit -= 0.3
        if spec.max is not None and hi > float(spec.max) + 1e-9:  # type: ignore[arg-type]
            cand.fit -= 0.3
    cand.fit = max(cand.fit, 0.0)
    return cand


def _category_pair(
    cand: Candidate,
    *,
    col: ColumnSummary,
    vocab: list[str],
    fed: dict[str, Any],
    distinctive: bool,
    precedent: Precedent | None = None,
) -> Candidate | None:
    if col.kind == "date" or not col.values:
        return None
    numeric = col.kind == "numeric"
    coded = all(norm_value(v).lstrip("-").isdigit() for v in vocab)
    cal = calendar(vocab)
    match = match_vocabulary(col.values, vocab=vocab, numeric=numeric)
    org, known, share = _known_values(col, precedent)
    if known and share >= 0.8 and share > match.coverage:
        known = {v: str(c) for v, c in known.items() if str(c) in vocab}
        rest = {v: n for v, n in col.values.items() if v not in known}
        more = match_vocabulary(rest, vocab=vocab, numeric=numeric) if rest else VocabularyMatch()
        total = sum(col.values.values())
        match = VocabularyMatch(
            {**{v: c for v, c in known.items() if v != c}, **more.mapping},
            {**{v: f"{org}'s map" for v, c in known.items() if v != c}, **more.how},
            more.unresolved,
            (sum(col.values[v] for v in known) + more.coverage * sum(rest.values())) / total,
        )
        numeric = False  # the codes are known: they read like names
    if col.binary and match.coverage == 0 and all(norm_value(v) in TRUE_WORDS | FALSE_WORDS for v in col.values):
        return None  # a yes/no column is no category of other words
    fit = match.coverage
    if numeric and (coded or cal):
        outside = 1.0 - match.coverage
        if col.distinct > len(vocab) + 2 or outside > 0.05:  # a count or measure, not these codes
            fit = match.coverage * 0.5
            cand.notes.append(f"{col.distinct} distinct values against {len(vocab)} codes")
    elif numeric:
        fit = max(fit, 0.2)  # codes of a named vocabulary: the values are a person's to map
        cand.hint = _codes_by_frequency(col.values, fed.get("categories") or {})
    else:
        fit = max(fit, 0.3)
    cand.fit = fit
    cats = fed.get("categories") or {}
    total_fed = sum(cats.values())
    if total_fed and match.coverage > 0:
        mapped: dict[str, float] = {}
        for v, n in col.values.items():
            target = match.mapping.get(v, v)
            if target in cats:
                mapped[target] = mapped.get(target, 0.0) + n
        total_mine = sum(mapped.values()) or 1.0
        tvd = 0.5 * sum(abs(mapped.get(c, 0.0) / total_mine - n / total_fed) for c, n in cats.items())
        cand.dist, cand.measured = 1.0 - tvd, True
    else:
        cand.dist = 0.0
    if distinctive and not numeric and match.coverage >= 0.5:
        cand.identity = 0.9 * match.coverage
    cand.values = dict(match.mapping)
    cand.unresolved = list(match.unresolved)
    if match.how:
        hows = sorted(set(match.how.values()))
        cand.notes.append(f"values by {', '.join(hows)}")
    return cand


def _codes_by_frequency(values: dict[str, int], cats: dict[str, int]) -> dict[str, tuple[str, float, float]]:
    """Codes paired with categories of the same rank of frequency: code -> (category, its share, the code's share).

    Only a hint for a person (a comment of the proposal, never a ``values``
    entry), and only when there are as many codes as categories with rows and
    neighbouring shares differ enough (by 5 points) to tell the ranks apart.
    """
    total_fed, total = sum(cats.values()), sum(values.values())
    present = {c: n / total_fed for c, n in cats.items() if n} if total_fed else {}
    if not present or len(values) != len(present) or not total:
        return {}
    mine = sorted(((n / total, v) for v, n in values.items()), reverse=True)
    theirs = sorted(((share, c) for c, share in present.items()), reverse=True)
    for ranked in (mine, theirs):
        if any(a[0] - b[0] < 0.05 for a, b in pairwise(ranked)):
            return {}
    return {v: (c, fed_share, share) for (share, v), (fed_share, c) in zip(mine, theirs, strict=True)}


def _truth(value: Any) -> bool | None:
    text = norm_value(value)
    return True if text in TRUE_WORDS else False if text in FALSE_WORDS else None


def _bool_pair(
    cand: Candidate, *, col: ColumnSummary, fed: dict[str, Any], name: str, precedent: Precedent | None = None
) -> Candidate | None:
    if not col.binary:
        return None
    flag = read_flag(col.values, name=name)
    org, known, share = _known_values(col, precedent)
    truth = {v: _truth(c) for v, c in known.items()}
    if share == 1.0 and all(b is not None for b in truth.values()) and (flag is None or not flag.mapping):
        mapping = {v: bool(b) for v, b in truth.items()}
        total = sum(col.values.values())
        flag = FlagReading(mapping, "known", true_share=sum(col.values[v] for v, b in mapping.items() if b) / total)
        cand.notes.append(f"values as {org} maps them")
    if flag is None:
        return None
    cand.fit = 1.0 if flag.mapping else 0.5
    if flag.how in ("negation", "named"):
        cand.identity = name_similarity(flag.subject, name)
        cand.notes.append(f"values {' / '.join(map(str, col.values))} read as a flag of {flag.subject!r}")
    cats = fed.get("categories") or {}
    total = sum(cats.values())
    if total and flag.true_share == flag.true_share:
        share = cats.get("true", 0) / total
        cand.dist, cand.measured = max(0.0, 1.0 - 2.5 * abs(share - flag.true_share)), True
    if (col.kind == "text" or flag.how == "known") and flag.mapping:
        cand.values = dict(flag.mapping)
    elif col.kind == "text":
        cand.unresolved = list(col.values)
    return cand


def score_pair(
    col: ColumnSummary,
    *,
    feature: str,
    spec: FeatureSpec | None,
    fed: dict[str, Any] | None,
    cfg: FederationConfig | None = None,
    precedent: Precedent | None = None,
) -> Candidate | None:
    """The evidence that ``col`` is ``feature`` (``spec`` None: the label); None when its values cannot be it.

    ``fed``: the federation's profile of the feature (quantiles, categories);
    ``precedent``: how the mapped organisations reach it (their column names
    count as the feature's other names, their value maps as known codes).
    """
    fed = fed or {}
    name = name_similarity(col.name, feature)
    alias = ""
    for org, src in precedent.names.items() if precedent else ():
        similar = 0.95 * name_similarity(col.name, src)  # another organisation's name for it: a little below its own
        if similar > name:
            name, alias = similar, f"{org} calls it {src!r}"
    cand = Candidate(col.name, feature, name, 0.0, 0.5, exact=same_name(col.name, feature))
    if alias:
        cand.notes.append(alias)
    if spec is None:
        return _label_pair(cand, col=col, cfg=cfg, precedent=precedent)
    if spec.type in ("float", "int"):
        return _numeric_pair(cand, col=col, spec=spec, fed=fed)
    if spec.type == "bool":
        return _bool_pair(cand, col=col, fed=fed, name=feature, precedent=precedent)
    if spec.type == "category":
        vocab = list(spec.categories or [])
        distinctive = len(vocab) >= 3 and not all(norm_value(v).isdigit() for v in vocab)
        return _category_pair(cand, col=col, vocab=vocab, fed=fed, distinctive=distinctive, precedent=precedent)
    if spec.type == "date":
        if col.kind != "date":
            return None
        cand.fit = 1.0
        return cand
    return None


def _label_pair(
    cand: Candidate, *, col: ColumnSummary, cfg: FederationConfig | None, precedent: Precedent | None = None
) -> Candidate | None:
    objective = cfg.objective if cfg is not None else "binary"
    classes = cfg.classes if cfg is not None else None
    if objective in ("regression", "poisson", "tweedie"):
        if col.kind != "numeric":
            return None
        cand.fit = 1.0
    elif classes is not None:
        vocab = [str(c) for c in classes]
        out = _category_pair(cand, col=col, vocab=vocab, fed={}, distinctive=len(classes) >= 3, precedent=precedent)
        if out is None or (out.fit < 0.5):
            return None
    elif objective == "multiclass":
        if not (col.kind == "numeric" and col.integer and 2 < col.distinct <= 100):
            return None
        cand.fit = 1.0
    else:
        out = _bool_pair(cand, col=col, fed={}, name=cand.feature, precedent=precedent)
        if out is None:
            return None
    cand.dist = 0.5  # the profile has no label counts
    prior = 0.0
    words = read_name(col.name).words
    if len(words) == 1 and words[0] in LABEL_WORDS:
        prior = 0.6
        cand.notes.append(f"{col.name!r} is a usual name of a label")
    if col.last:
        prior = max(prior, 0.5)
        cand.notes.append("the last column")
    cand.identity = max(cand.identity, prior)
    return cand


# ---------------------------------------------------------------------------
# assignment
# ---------------------------------------------------------------------------


def assign(score: np.ndarray) -> list[tuple[int, int]]:
    """The pairs (row, column) of one-to-one assignment with the largest total score (Hungarian method).

    Parameters
    ----------
    score : ndarray of shape (n_rows, n_cols); any shape, each row and column used at most once.

    Returns
    -------
    list of (row, col), min(n_rows, n_cols) pairs sorted by row. Deterministic: ties go to the lower index.
    """
    s = np.asarray(score, dtype=np.float64)
    if s.size == 0:
        return []
    flip = s.shape[0] > s.shape[1]
    if flip:
        s = s.T
    n, m = s.shape
    cost = s.max() - s
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)  # p[j]: row (1-based) assigned to column j
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used[1:]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    pairs = [(int(p[j]) - 1, j - 1) for j in range(1, m + 1) if p[j] != 0]
    if flip:
        pairs = [(c, r) for r, c in pairs]
    return sorted(pairs)


def choose(candidates: list[Candidate], columns: list[str], targets: list[str]) -> list[Candidate]:
    """One column per target: exact names first, then the assignment of largest total score.

    Only acceptable candidates (:attr:`Candidate.acceptable`) are chosen.
    """
    ok = [c for c in candidates if c.acceptable]
    chosen: list[Candidate] = []
    used_cols: set[str] = set()
    used_feats: set[str] = set()
    exact = sorted((c for c in ok if c.exact), key=lambda c: (-c.score, columns.index(c.column)))
    for c in exact:
        if c.column not in used_cols and c.feature not in used_feats:
            chosen.append(c)
            used_cols.add(c.column)
            used_feats.add(c.feature)
    rest_cols = [c for c in columns if c not in used_cols]
    rest_feats = [t for t in targets if t not in used_feats]
    if rest_cols and rest_feats:
        by_pair = {(c.column, c.feature): c for c in ok if c.column in rest_cols and c.feature in rest_feats}
        matrix = np.zeros((len(rest_cols), len(rest_feats)))
        for (col, feat), c in by_pair.items():
            matrix[rest_cols.index(col), rest_feats.index(feat)] = c.score
        for i, j in assign(matrix):
            c = by_pair.get((rest_cols[i], rest_feats[j]))
            if c is not None:
                chosen.append(c)
    return chosen


# ---------------------------------------------------------------------------
# the proposal
# ---------------------------------------------------------------------------


@dataclass
class Suggestion:
    """A proposed mapping of one organisation, with its evidence."""

    org: str
    source: str | None
    read: dict[str, Any]
    matches: list[Candidate]
    kept: dict[str, str]
    label: str = ""
    rename: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: dict[str, list[Any]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    unresolved: dict[str, list[str]] = field(default_factory=dict)
    hints: dict[str, dict[str, tuple[str, float, float]]] = field(default_factory=dict)
    unmatched_features: list[str] = field(default_factory=list)
    unmatched_columns: list[str] = field(default_factory=list)
    runners_up: list[Candidate] = field(default_factory=list)

    def mapping(self) -> dict[str, Any]:
        """The proposed organisation entry, as plain data."""
        out: dict[str, Any] = {"source": self.source}
        if self.read:
            out["read"] = self.read
        for key in ("rename", "values", "missing", "units", "scale"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out

    def to_yaml(self) -> str:
        """The proposal as YAML, the evidence as comments. Review it; nothing was applied."""
        lines = [
            f"# Proposed mapping for organisation {self.org}: review every line before using it.",
            "# Generated by `fedmine schema suggest` from column names, types and distribution",
            "# summaries compared with the federation's profile of the other organisations.",
            "# Nothing was applied to the config.",
            "organisations:",
        ]
        body = yaml.safe_dump({self.org: self.mapping()}, sort_keys=False, allow_unicode=True, width=100)
        lines += ["  " + line for line in body.rstrip().splitlines()]
        lines.append("")
        lines.append("# evidence: source column -> canonical feature  score (identity, fit, distribution)")
        for c in sorted(self.matches, key=lambda c: -c.score):
            extra = f"  x{c.scale:g} ({c.scale_reason})" if c.scale else ""
            what = " [label]" if c.feature == self.label else ""
            notes = f"; {'; '.join(c.notes)}" if c.notes else ""
            lines.append(
                f"#   {c.column} -> {c.feature}{what}  {c.score:.2f} "
                f"({max(c.name, c.identity):.2f}, {c.fit:.2f}, {c.dist:.2f}){extra}{notes}"
            )
        for src, dst in self.kept.items():
            lines.append(f"#   {src} -> {dst}  (already in the config)")
        for feature, vals in self.unresolved.items():
            lines.append(
                f"# values of {feature} with no match in its vocabulary (add them under values:): "
                f"{', '.join(map(str, vals))}"
            )
            hint = self.hints.get(feature)
            if hint:
                pairs = ", ".join(f"{v} -> {c} ({s:.0%} here, {f:.0%} there)" for v, (c, f, s) in hint.items())
                lines.append(f"#   by frequency against the federation's (a guess to check): {pairs}")
        if self.runners_up:
            lines.append("# not proposed (another column fits better, or too little evidence):")
            for c in self.runners_up:
                lines.append(f"#   {c.column} -> {c.feature}  {c.score:.2f}")
        if self.unmatched_features:
            lines.append(f"# canonical columns with no proposal: {', '.join(self.unmatched_features)}")
        if self.unmatched_columns:
            lines.append(f"# source columns left out: {', '.join(self.unmatched_columns)}")
        return "\n".join(lines) + "\n"


def suggest_mapping(cfg: FederationConfig, org: str) -> Suggestion:
    """Propose ``org``'s mapping from its own columns and the other organisations' profile.

    Raises
    ------
    ConfigError
        ``org`` is not in the config, or there is no other organisation to compare with.
    """
    from fedmine import connectors
    from fedmine.schema.profiler import profile_federation

    if org not in cfg.organisations:
        raise ConfigError(f"--org {org}: not an organisation of {cfg.name}; allowed: {', '.join(cfg.organisations)}")
    others = [o for o in cfg.organisations if o != org]
    if not others:
        raise ConfigError(f"--org {org}: no other organisation to compare it with; add the mapped ones to the config")
    spec = cfg.organisations[org]
    if spec.source is None:
        raise ConfigError(
            f"organisations.{org}.source: not set; suggest reads the new organisation's source "
            "(run it where the rows are)"
        )
    frame = connectors.load(spec.source, spec.read, base_dir=cfg.base_dir, org=org)
    fed = profile_federation(cfg, others, secure=False).federation["features"]

    kept = {s: t for s, t in spec.rename.items() if s in frame.columns}
    taken_features = set(kept.values())
    names = [str(c) for c in frame.columns]
    summaries = {
        n: summarise_column(n, frame[c], last=i == len(names) - 1)
        for i, (n, c) in enumerate(zip(names, frame.columns, strict=True))
        if c not in kept
    }
    targets = [n for n in [*cfg.features, cfg.label] if n not in taken_features and n not in spec.derive]
    known = precedents(cfg, others)

    candidates = []
    for col in summaries.values():
        for feature in targets:
            c = score_pair(
                col,
                feature=feature,
                spec=cfg.features.get(feature),
                fed=fed.get(feature),
                cfg=cfg,
                precedent=known.get(feature),
            )
            if c is not None:
                candidates.append(c)
    matches = choose(candidates, list(summaries), targets)
    matches.sort(key=lambda c: targets.index(c.feature))

    out = Suggestion(org, spec.source, dict(spec.read), matches, kept, label=cfg.label)
    chosen = {(c.column, c.feature) for c in matches}
    for c in matches:
        col = summaries[c.column]
        if c.column != c.feature:
            out.rename[c.column] = c.feature
        markers: list[Any] = list(col.missing_words) + [int(v) if float(v).is_integer() else v for v in col.sentinels]
        if markers:
            out.missing[c.feature] = markers
        if c.values:
            out.values[c.feature] = {_yaml_key(k, col): v for k, v in c.values.items()}
        precedent = known.get(c.feature)
        marked = precedent.missing if precedent else {}
        also = [v for v in c.unresolved if any(v in m for m in marked.values())]
        if also:
            out.missing[c.feature] = [*out.missing.get(c.feature, []), *(_yaml_key(v, col) for v in also)]
            orgs = sorted(o for o, m in marked.items() if set(also) & m)
            c.notes.append(f"{', '.join(also)} missing as {' and '.join(orgs)} marks it")
        unresolved = [v for v in c.unresolved if v not in also]
        if unresolved:
            out.unresolved[c.feature] = unresolved
        if c.hint:
            out.hints[c.feature] = c.hint
        if c.scale:
            feat = cfg.features.get(c.feature)
            unit = c.unit or (_unit_for(c.scale, feat) if feat is not None else None)
            if unit:
                out.units[c.feature] = unit
            else:
                out.scale[c.feature] = float(f"{c.scale:.6g}")
    used_cols = {c.column for c in matches}
    used_feats = {c.feature for c in matches}
    out.unmatched_features = [t for t in targets if t not in used_feats]
    out.unmatched_columns = [c for c in summaries if c not in used_cols]
    best_other = {}
    for c in sorted(candidates, key=lambda c: -c.score):
        if (c.column, c.feature) in chosen or c.score < MIN_SCORE or c.column in best_other:
            continue
        if c.column in used_cols and c.feature in used_feats:
            continue
        best_other[c.column] = c
    out.runners_up = list(best_other.values())
    return out


def _yaml_key(key: str, col: ColumnSummary) -> Any:
    """A value-map key as the source holds it: a number for a numeric column."""
    if col.kind == "numeric":
        number = float(key)
        return int(number) if number.is_integer() else number
    return key


def _unit_for(scale: float, feat: FeatureSpec) -> str | None:
    """A source unit whose conversion to the feature's unit is ``scale``, if the table has one."""
    from fedmine.schema.units import UNITS, UnitError, conversion

    if not feat.unit:
        return None
    for u in UNITS:
        try:
            s, o = conversion(u.name, feat.unit, quantity=feat.quantity)
        except UnitError:
            continue
        if o == 0 and s > 0 and abs(math.log(s / scale)) < 0.02 and s != 1.0:
            return u.name
    return None
