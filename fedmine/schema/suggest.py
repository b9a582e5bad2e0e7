"""Mapping suggestions for an organisation that joins the federation.

The new organisation summarises its own source columns (kind, missing
markers, quantiles or value frequencies); the federation's profile of the
other organisations describes the canonical features. Each pair (source
column, canonical feature) is scored::

    score = 0.55 * name + 0.30 * fit + 0.15 * distribution

- ``name``: similarity of the normalised names (character ratio, shared or
  contained tokens, abbreviations such as ``pdays`` for ``days_since_previous``);
- ``fit``: whether the column's values can be the feature's type (for a
  category, the share of its rows whose value is in the vocabulary);
- ``distribution``: overlap of the middle 90 % with the federation's (after a
  likely unit factor when one explains the gap), the share of ``true``, or
  category frequencies.

Pairs are taken greedily from the best score, one column per feature. The
result is a YAML proposal (rename, values, missing, units or scale) with the
evidence as comments, for a person to review: nothing is applied.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from itertools import permutations
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fedmine.config import FederationConfig
from fedmine.errors import ConfigError

#: Values that usually mean "missing" in someone's export.
MISSING_WORDS = {"", "?", "na", "n/a", "nan", "null", "none", "unknown", "missing", "-", "nonexistent", "not known"}
#: Numeric codes that often mean "missing" or "never".
SENTINELS = (-1, -9, -99, -999, -9999, 99, 999, 9999, 99999)
#: Weights of the score.
W_NAME, W_FIT, W_DIST = 0.55, 0.30, 0.15
#: A pair is proposed from this score on.
MIN_SCORE = 0.5
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------


def name_tokens(name: str) -> list[str]:
    """``"previousOutcome"``, ``"previous-outcome"`` -> ``["previous", "outcome"]``."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name))
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def _token_match(a: str, b: str) -> float:
    if a == b:
        return 1.0
    if len(a) >= 3 and len(b) >= 3 and (a in b or b in a):
        return 0.8
    if len(a) >= 3 and len(b) >= 3 and (a.startswith(b[:3]) and b.startswith(a[:3])):
        return 0.6
    return 0.0


def _abbreviates(text: str, tokens: list[str]) -> bool:
    """Whether ``text`` is made of prefixes of two or more of ``tokens``, in some order (``pdays``)."""
    if len(tokens) < 2 or len(tokens) > 5:
        return False

    def fits(rest: str, toks: tuple[str, ...]) -> bool:
        if not rest:
            return True
        if not toks:
            return False
        head = toks[0]
        return any(rest.startswith(head[:k]) and fits(rest[k:], toks[1:]) for k in range(len(head), 0, -1))

    for r in range(2, len(tokens) + 1):
        for perm in permutations(tokens, r):
            if fits(text, perm):
                return True
    return False


def name_similarity(a: str, b: str) -> float:
    """Similarity of two column names in [0, 1] (1: the same after normalising)."""
    ta, tb = name_tokens(a), name_tokens(b)
    if not ta or not tb:
        return 0.0
    ca, cb = "".join(ta), "".join(tb)
    if ca == cb:
        return 1.0
    seq = SequenceMatcher(None, ca, cb).ratio()
    forward = np.mean([max(_token_match(x, y) for y in tb) for x in ta])
    backward = np.mean([max(_token_match(y, x) for x in ta) for y in tb])
    tokens = 0.75 * max(forward, backward) + 0.25 * min(forward, backward)
    abbrev = 0.85 if (_abbreviates(ca, tb) or _abbreviates(cb, ta)) else 0.0
    return float(max(seq, tokens, abbrev))


def _norm_value(v: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "", str(v).strip().lower())


# ---------------------------------------------------------------------------
# the new organisation's columns
# ---------------------------------------------------------------------------


@dataclass
class ColumnSummary:
    """What the new organisation tells about one of its columns (aggregates only)."""

    name: str
    kind: str  # numeric, text, date
    rows: int
    missing_words: list[str] = field(default_factory=list)
    sentinels: list[float] = field(default_factory=list)
    quantiles: dict[str, float] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)  # text: value -> rows (top 50)
    binary: bool = False
    true_share: float = float("nan")


def summarise_column(name: str, col: pd.Series) -> ColumnSummary:
    """A source column's kind, missing markers, sentinels, quantiles or value counts."""
    rows = len(col)
    present = col[col.notna()]
    text = present.astype(str).str.strip()
    words = sorted({v for v in text.unique() if v.lower() in MISSING_WORDS})
    text = text[~text.str.lower().isin(MISSING_WORDS)]
    numeric = pd.to_numeric(text, errors="coerce")
    s = ColumnSummary(name, "text", rows, missing_words=words)
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
        s.binary = set(np.unique(x)) <= {0.0, 1.0}
        if s.binary:
            s.true_share = float(np.mean(x == 1.0))
        return s
    if len(text) and text.str.match(r"^\d{4}-\d{2}-\d{2}").mean() > 0.9:
        s.kind = "date"
        return s
    counts = text.value_counts()
    s.values = {str(k): int(v) for k, v in counts.iloc[:50].items()}
    lowered = {v.lower() for v in counts.index}
    s.binary = bool(lowered) and lowered <= (_TRUE | _FALSE)
    if s.binary:
        s.true_share = float(text.str.lower().isin(_TRUE).mean())
    return s


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
    column: str
    feature: str
    name: float
    fit: float
    dist: float
    scale: float | None = None
    scale_reason: str = ""

    @property
    def score(self) -> float:
        return W_NAME * self.name + W_FIT * self.fit + W_DIST * self.dist


def _vocab_overlap(values: dict[str, int], vocab: list[str]) -> float:
    total = sum(values.values())
    if not total:
        return 0.0
    norm = {_norm_value(v) for v in vocab}
    return sum(n for v, n in values.items() if _norm_value(v) in norm) / total


def score_pair(col: ColumnSummary, feature: str, spec, fed: dict[str, Any] | None) -> Candidate | None:
    """The evidence that ``col`` is ``feature``; None when its values cannot be that type."""
    from fedmine.schema.profiler import nearest_factor

    kind = spec.type if spec is not None else "label"
    cand = Candidate(col.name, feature, name_similarity(col.name, feature), 0.0, 0.5)
    if kind in ("float", "int"):
        if col.kind != "numeric":
            return None
        cand.fit = 1.0
        q = (fed or {}).get("quantiles", {})
        if col.quantiles and q and q.get("p50") == q.get("p50"):
            mine = (col.quantiles["p5"], col.quantiles["p95"])
            theirs = (q["p5"], q["p95"])
            cand.dist = _overlap(mine, theirs)
            if col.quantiles["p50"] and q["p50"]:
                found = nearest_factor(q["p50"] / col.quantiles["p50"], quantity=spec.quantity or feature)
                if found:
                    scaled = _overlap((mine[0] * found[0], mine[1] * found[0]), theirs)
                    if scaled > cand.dist + 0.2:
                        cand.dist, cand.scale, cand.scale_reason = 0.9 * scaled, found[0], found[1]
    elif kind == "bool" or (kind == "label"):
        if not col.binary:
            return None
        cand.fit = 1.0
        cats = (fed or {}).get("categories")
        if cats and sum(cats.values()) and col.true_share == col.true_share:
            share = cats.get("true", 0) / sum(cats.values())
            cand.dist = 1.0 - abs(share - col.true_share)
    elif kind == "category":
        if col.kind == "numeric":
            cand.fit = 0.2
        elif col.kind == "text":
            overlap = _vocab_overlap(col.values, spec.categories)
            if col.binary and overlap == 0:
                return None
            cand.fit = max(0.3, overlap)
            cats = (fed or {}).get("categories")
            if cats and overlap > 0:
                total_fed = sum(cats.values()) or 1
                total_mine = sum(n for v, n in col.values.items() if _norm_value(v) in {_norm_value(c) for c in cats})
                mine = {_norm_value(v): n / max(total_mine, 1) for v, n in col.values.items()}
                tvd = 0.5 * sum(abs(mine.get(_norm_value(c), 0.0) - n / total_fed) for c, n in cats.items())
                cand.dist = 1.0 - tvd
            else:
                cand.dist = 0.0
        else:
            return None
    elif kind == "date":
        if col.kind != "date":
            return None
        cand.fit = 1.0
    return cand


# ---------------------------------------------------------------------------
# the proposal
# ---------------------------------------------------------------------------


@dataclass
class Suggestion:
    """A proposed mapping of one organisation, with its evidence."""

    org: str
    source: str
    read: dict[str, Any]
    matches: list[Candidate]
    kept: dict[str, str]
    rename: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    missing: dict[str, list[Any]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    unresolved: dict[str, list[str]] = field(default_factory=dict)
    unmatched_features: list[str] = field(default_factory=list)
    unmatched_columns: list[str] = field(default_factory=list)

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
        lines.append("# evidence: source column -> canonical feature  score (name, fit, distribution)")
        for c in sorted(self.matches, key=lambda c: -c.score):
            extra = f"  x{c.scale:g} ({c.scale_reason})" if c.scale else ""
            lines.append(
                f"#   {c.column} -> {c.feature}  {c.score:.2f} ({c.name:.2f}, {c.fit:.2f}, {c.dist:.2f}){extra}"
            )
        for src, dst in self.kept.items():
            lines.append(f"#   {src} -> {dst}  (already in the config)")
        for feature, vals in self.unresolved.items():
            lines.append(
                f"# values of {feature} with no match in its vocabulary (add them under values:): {', '.join(vals)}"
            )
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
    frame = connectors.load(spec.source, spec.read, base_dir=cfg.base_dir, org=org)
    fed = profile_federation(cfg, others, secure=False).federation["features"]

    kept = {s: t for s, t in spec.rename.items() if s in frame.columns}
    taken_features = set(kept.values())
    taken_columns = set(kept)
    for name in [*cfg.features, cfg.label]:  # a column already bearing a canonical name
        if name in frame.columns and name not in taken_columns and name not in taken_features:
            pass  # still scored, so that its values and units are checked
    summaries = {str(c): summarise_column(str(c), frame[c]) for c in frame.columns if c not in taken_columns}
    targets = [n for n in [*cfg.features, cfg.label] if n not in taken_features and n not in spec.derive]

    candidates = []
    for col in summaries.values():
        for feature in targets:
            c = score_pair(col, feature, cfg.features.get(feature), fed.get(feature))
            if c is not None:
                candidates.append(c)
    candidates.sort(key=lambda c: (-c.score, c.column, c.feature))
    matches: list[Candidate] = []
    used_cols: set[str] = set()
    used_feats: set[str] = set()
    for c in candidates:
        if c.column in used_cols or c.feature in used_feats:
            continue
        floor = MIN_SCORE if c.feature != cfg.label else 0.35  # a label is rarely named alike
        if c.score < floor:
            continue
        matches.append(c)
        used_cols.add(c.column)
        used_feats.add(c.feature)

    out = Suggestion(org, spec.source, dict(spec.read), matches, kept)
    for c in matches:
        col = summaries[c.column]
        if c.column != c.feature:
            out.rename[c.column] = c.feature
        markers: list[Any] = list(col.missing_words) + [int(v) if float(v).is_integer() else v for v in col.sentinels]
        if markers:
            out.missing[c.feature] = markers
        feat = cfg.features.get(c.feature)
        if feat is not None and feat.type == "category" and col.kind == "text":
            vmap, unresolved = _value_map(col.values, feat.categories)
            if vmap:
                out.values[c.feature] = vmap
            if unresolved:
                out.unresolved[c.feature] = unresolved
        if c.scale and feat is not None:
            unit = _unit_for(c.scale, feat)
            if unit:
                out.units[c.feature] = unit
            else:
                out.scale[c.feature] = float(f"{c.scale:.6g}")
    out.unmatched_features = [t for t in targets if t not in used_feats]
    out.unmatched_columns = [c for c in summaries if c not in used_cols]
    return out


def _value_map(values: dict[str, int], vocab: list[str]) -> tuple[dict[str, str], list[str]]:
    """Source value -> vocabulary entry where spelling alone tells; the rest is left to a person."""
    exact = set(vocab)
    by_norm = {_norm_value(v): v for v in vocab}
    vmap, unresolved = {}, []
    for v in values:
        if v in exact:
            continue
        n = _norm_value(v)
        if n in by_norm:
            vmap[v] = by_norm[n]
            continue
        best = max(vocab, key=lambda t: SequenceMatcher(None, n, _norm_value(t)).ratio())
        if SequenceMatcher(None, n, _norm_value(best)).ratio() >= 0.8:
            vmap[v] = best
        else:
            unresolved.append(v)
    return vmap, unresolved


def _unit_for(scale: float, feat) -> str | None:
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
