"""The schema pairs of tests/data/suggest and how a suggestion is scored against them.

A pair is a federation (``federation.yaml``: the canonical schema, organisations
already mapped) and a new organisation listed with only its source, with the
mapping a person wrote for it (``expected.yaml``). :func:`evaluate` runs
``suggest_mapping`` on the new organisation and counts what it got right:

- renames found among the expected ones, and wrong renames (a column sent to
  another feature, or a column that maps onto nothing sent anywhere); every
  proposed rename is above the acceptance threshold, so each wrong one counts;
- the expected ``values``, ``units``, ``scale`` and ``missing`` entries found in
  the proposal (values compare as text, ``true``/``false`` for booleans).

Used by tests/schema/test_suggest_pairs.py and benchmarks/suggest_quality.py.
"""

from __future__ import annotations

import math
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fedmine.config import FeatureSpec, FederationConfig, load_config
from fedmine.schema.suggest import Suggestion, suggest_mapping

PAIRS = Path(__file__).resolve().parents[1] / "data" / "suggest"


def pair_names() -> list[str]:
    """The pairs' folder names, sorted."""
    return sorted(p.name for p in PAIRS.iterdir() if (p / "expected.yaml").is_file())


def load_pair(name: str) -> tuple[FederationConfig, dict[str, Any]]:
    """The pair's federation config and its expected mapping."""
    folder = PAIRS / name
    return load_config(folder / "federation.yaml"), yaml.safe_load((folder / "expected.yaml").read_text())


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


@dataclass
class PairResult:
    """What a suggestion got right on one pair."""

    name: str
    label: str
    expected: dict[str, str]
    proposed: dict[str, str]
    scores: dict[str, float]
    seconds: float
    entries_expected: int = 0
    entries_found: int = 0
    missed_entries: list[str] = field(default_factory=list)

    @property
    def found(self) -> list[str]:
        return [s for s, t in self.expected.items() if self.proposed.get(s) == t]

    @property
    def missed(self) -> list[str]:
        return [s for s, t in self.expected.items() if self.proposed.get(s) != t]

    @property
    def wrong(self) -> list[str]:
        return [s for s, t in self.proposed.items() if self.expected.get(s) != t]


def evaluate(name: str) -> tuple[PairResult, Suggestion]:
    """Suggest the pair's new organisation's mapping and score it against the expected one."""
    cfg, expected = load_pair(name)
    t0 = time.perf_counter()
    s = suggest_mapping(cfg, expected["new"])
    seconds = time.perf_counter() - t0
    scores = {c.column: c.score for c in s.matches}
    result = PairResult(name, cfg.label, dict(expected["rename"]), dict(s.rename), scores, seconds)
    for feature, vmap in (expected.get("values") or {}).items():
        got = {_text(k): _text(v) for k, v in s.values.get(feature, {}).items()}
        for k, v in vmap.items():
            result.entries_expected += 1
            if got.get(_text(k)) == _text(v):
                result.entries_found += 1
            else:
                result.missed_entries.append(f"values.{feature}.{k}: {v}")
    for feature, unit in (expected.get("units") or {}).items():
        result.entries_expected += 1
        if s.units.get(feature) == unit:
            result.entries_found += 1
        else:
            result.missed_entries.append(f"units.{feature}: {unit}")
    for feature, factor in (expected.get("scale") or {}).items():
        result.entries_expected += 1
        got_factor = s.scale.get(feature)
        if got_factor and math.isclose(got_factor, factor, rel_tol=0.01):
            result.entries_found += 1
        else:
            result.missed_entries.append(f"scale.{feature}: {factor}")
    for feature, markers in (expected.get("missing") or {}).items():
        got_markers = {_text(m) for m in s.missing.get(feature, [])}
        for m in markers:
            result.entries_expected += 1
            if _text(m) in got_markers:
                result.entries_found += 1
            else:
                result.missed_entries.append(f"missing.{feature}: {m}")
    return result, s


def unrelated_table(
    *, seed: int = 0, text_columns: int = 100, numeric_columns: int = 100, features: int = 80, rows: int = 2000
) -> tuple[dict[str, FeatureSpec], pd.DataFrame]:
    """A canonical schema and a table of random words that share nothing but generic words (``num``, ``text``).

    Half the features are categories of 12 random words, half floats; the
    table's text columns hold 50 random upper-case words each. No column is
    any feature, so every proposal on it is wrong.
    """
    rng = np.random.default_rng(seed)

    def word() -> str:
        return "".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(4, 12))))

    specs: dict[str, FeatureSpec] = {}
    while len(specs) < features // 2:
        specs[f"cat_{word()}"] = FeatureSpec(type="category", categories=sorted({word() for _ in range(12)}))
    while len(specs) < features:
        specs[f"num_{word()}"] = FeatureSpec(type="float")
    cols: dict[str, Any] = {}
    for _ in range(text_columns):
        vocab = [word().upper() for _ in range(50)]
        cols[f"Text {word()}"] = rng.choice(vocab, size=rows)
    for _ in range(numeric_columns):
        cols[f"Num {word()}"] = rng.normal(size=rows)
    return specs, pd.DataFrame(cols)
