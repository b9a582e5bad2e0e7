"""Harmonisation speed: one organisation's raw frame onto the canonical schema.

Usage::

    python benchmarks/harmonise.py [--rows 1000000] [--repeat 3] [--seed 0]

Generates (seeded) a raw frame of 28 source columns plus a label, the way a
CSV source arrives: floats and ints with sentinel codes (-999, -9, -1) and
unit conversions (Fahrenheit, mmol/L, thousands, pounds, minutes, percent,
a free scale and offset), numbers as text with ``NA``, ``?``, ``-999`` and
blank text, booleans as yes/no text in many spellings and as 0/1 ints,
categories in mixed case mapped under ``values:`` (from text and from integer
codes) under each unknown-category policy, and an ISO date. Every column has
its own missing-marker list as well as the ``"*"`` markers. It then times
:func:`fedmine.schema.harmonise` (one warm-up, best of ``--repeat``) and
prints rows, features, seconds, rows per second and whether the goal is met.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fedmine.config import FederationConfig, config_from_dict
from fedmine.schema import harmonise

GOAL_SECONDS = 1.5
ORG = "clinic"
JOBS = [
    "admin.",
    "blue-collar",
    "entrepreneur",
    "housemaid",
    "management",
    "retired",
    "self-employed",
    "services",
    "student",
    "technician",
    "unemployed",
]


def _text(values: np.ndarray) -> pd.Series:
    return pd.Series(pd.array(values.astype(object), dtype="str"))


def _sprinkle(rng: np.random.Generator, values: np.ndarray, markers: list, share: float) -> np.ndarray:
    """``values`` as objects with a ``share`` of the rows replaced by markers (None for NaN)."""
    out = values.astype(object)
    hit = rng.random(len(out)) < share
    out[hit] = rng.choice(np.array(markers, dtype=object), size=int(hit.sum()))
    return out


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """A raw frame of ``n`` rows: 28 source columns and the label ``y``."""
    rng = np.random.default_rng(seed)

    def floats(mean: float, sd: float, decimals: int, sentinel: float, share: float = 0.03) -> np.ndarray:
        x = np.round(rng.normal(mean, sd, n), decimals)
        x[rng.random(n) < share] = sentinel
        x[rng.random(n) < 0.01] = np.nan
        return x

    def ints(low: int, high: int, sentinel: int, share: float = 0.02) -> np.ndarray:
        x = rng.integers(low, high, n)
        x[rng.random(n) < share] = sentinel
        return x

    def number_text(mean: float, sd: float, decimals: int) -> pd.Series:
        x = np.round(rng.normal(mean, sd, n), decimals)
        text = x.astype(str) if decimals else x.astype(np.int64).astype(str)
        return _text(_sprinkle(rng, text, ["NA", "?", "-999", " ", "", None], 0.04))

    def spellings(words: list[str], markers: list) -> pd.Series:
        return _text(_sprinkle(rng, rng.choice(np.array(words, dtype=object), n), markers, 0.03))

    days = rng.integers(0, 365 * 20, n)
    dates = (np.datetime64("2004-01-01") + days).astype(str)
    region = ["north", "North", "NORTH", "N", "south", "South", "S", "east", "East", "west", "West", "W", "Mars"]
    plan = ["basic", "Basic", "BASIC", "premium", "Premium", "gold"]
    return pd.DataFrame(
        {
            "temp_f": floats(98.6, 1.2, 1, -999.0),
            "glc_mmol": floats(5.5, 1.1, 2, -9.0),
            "income_k": floats(42.0, 15.0, 1, -1.0),
            "weight_lb": floats(170.0, 30.0, 1, -999.0),
            "height_cm": floats(172.0, 9.0, 0, 0.0),
            "score": floats(640.0, 80.0, 0, -1.0),
            "call_min": floats(4.5, 2.0, 2, -1.0),
            "share_pct": floats(35.0, 12.0, 1, 999.0),
            "age": ints(18, 95, -1),
            "visits": ints(0, 40, -999),
            "children": ints(0, 6, 99),
            "region_code": ints(1, 6, 0),
            "bp_text": number_text(120.0, 15.0, 1),
            "chol_text": number_text(5.2, 0.9, 2),
            "days_text": number_text(30.0, 10.0, 0),
            "rent_text": number_text(900.0, 250.0, 2),
            "smoker": spellings(["yes", "no", "Yes", "NO", "y", "n", " yes"], ["?", "NA", None]),
            "insured": spellings(["true", "false", "TRUE", "False", "1", "0"], ["?", None]),
            "employed": spellings(["Y", "N", "t", "f"], ["NA", None]),
            "vip": ints(0, 2, -9, share=0.01),
            "region": spellings(region, ["?", "NA", None]),
            "plan": spellings(plan, ["none", None]),
            "job": spellings(JOBS + ["Student", "pilot"], ["unknown", None]),
            "marital": spellings(["M", "S", "D", "m", "s", "W"], ["?", None]),
            "channel": spellings(["cellular", "telephone", "Cell", "TEL"], ["unknown", None]),
            "colour": spellings(["red", "green", "blue", "Red", "BLUE"], ["unknown", "NA", None]),
            "education": spellings(
                ["primary", "secondary", "tertiary", "basic.4y", "university.degree"], ["unknown", None]
            ),
            "visit_date": _text(_sprinkle(rng, dates, ["?", "NA", None], 0.02)),
            "y": _text(rng.choice(np.array(["yes", "no"], dtype=object), n)),
        }
    )


def make_config() -> FederationConfig:
    """The canonical schema and the organisation's mapping for :func:`make_frame`."""
    features = {
        "temperature": {"type": "float", "unit": "C"},
        "glucose": {"type": "float", "unit": "mg/dL", "min": 20, "max": 600},
        "income": {"type": "float", "unit": "units"},
        "weight": {"type": "float", "unit": "kg"},
        "height": {"type": "float", "unit": "m"},
        "score": {"type": "float"},
        "call_duration": {"type": "float", "unit": "seconds", "min": 0},
        "share": {"type": "float", "unit": "fraction"},
        "age": {"type": "int", "unit": "years", "min": 18, "max": 110},
        "visits": {"type": "int", "min": 0},
        "children": {"type": "int"},
        "region_code": {"type": "category", "categories": ["north", "south", "east", "west", "other"]},
        "blood_pressure": {"type": "float"},
        "cholesterol": {"type": "float", "unit": "mg/dL"},
        "days_since": {"type": "int", "min": 0},
        "rent": {"type": "float", "unit": "yearly"},
        "smoker": {"type": "bool"},
        "insured": {"type": "bool"},
        "employed": {"type": "bool"},
        "vip": {"type": "bool"},
        "region": {"type": "category", "categories": ["north", "south", "east", "west", "other"]},
        "plan": {"type": "category", "categories": ["basic", "premium"]},
        "job": {"type": "category", "categories": JOBS},
        "marital": {"type": "category", "categories": ["married", "single", "divorced", "widowed"]},
        "channel": {"type": "category", "categories": ["cellular", "telephone"]},
        "colour": {"type": "category", "categories": ["red", "green", "blue"]},
        "education": {"type": "category", "categories": ["primary", "secondary", "tertiary"]},
        "visit": {"type": "date", "min": "2000-01-01", "max": "2030-12-31"},
    }
    rename = {
        "temp_f": "temperature",
        "glc_mmol": "glucose",
        "income_k": "income",
        "weight_lb": "weight",
        "height_cm": "height",
        "call_min": "call_duration",
        "share_pct": "share",
        "bp_text": "blood_pressure",
        "chol_text": "cholesterol",
        "days_text": "days_since",
        "rent_text": "rent",
        "visit_date": "visit",
        "y": "sick",
    }
    missing = {
        "*": ["?", "NA"],
        "temperature": [-999],
        "glucose": [-9],
        "income": [-1],
        "weight": [-999],
        "height": [0],
        "score": [-1],
        "call_duration": [-1],
        "share": [999],
        "age": [-1, 999],
        "visits": [-999],
        "children": [99],
        "region_code": [0],
        "blood_pressure": ["-999"],
        "cholesterol": [-999],
        "days_since": [-999, "n/a"],
        "rent": ["-999", "none"],
        "smoker": ["unknown"],
        "insured": ["unknown"],
        "employed": ["unknown"],
        "vip": [-9],
        "region": ["unknown"],
        "plan": ["none"],
        "job": ["unknown"],
        "marital": ["unknown"],
        "channel": ["unknown"],
        "colour": ["unknown"],
        "education": ["unknown"],
        "visit": ["1900-01-01"],
        "sick": ["unknown"],
    }
    org = {
        "source": "clinic.csv",
        "rename": rename,
        "units": {
            "temperature": "F",
            "glucose": "mmol/L",
            "income": "thousands",
            "weight": "lb",
            "height": "cm",
            "call_duration": "minutes",
            "share": "%",
            "cholesterol": "mmol/L",
            "rent": "monthly",
        },
        "scale": {"score": 0.1},
        "offset": {"score": -50.0},
        "missing": missing,
        "values": {
            "region_code": {1: "north", 2: "south", 3: "east", 4: "west"},
            "region": {
                "North": "north",
                "NORTH": "north",
                "N": "north",
                "South": "south",
                "S": "south",
                "East": "east",
                "West": "west",
                "W": "west",
            },
            "plan": {"Basic": "basic", "BASIC": "basic", "Premium": "premium"},
            "job": {"Student": "student"},
            "marital": {"M": "married", "m": "married", "S": "single", "s": "single", "D": "divorced", "W": "widowed"},
            "channel": {"Cell": "cellular", "TEL": "telephone"},
            "colour": {"Red": "red", "BLUE": "blue"},
            "education": {"basic.4y": "primary", "university.degree": "tertiary"},
        },
        "dates": {"visit": "%Y-%m-%d"},
        "unknown_categories": {"region_code": "other", "region": "other", "plan": "missing", "job": "missing"},
    }
    return config_from_dict(
        {
            "name": "harmonise-benchmark",
            "objective": "binary",
            "label": "sick",
            "features": features,
            "organisations": {ORG: org},
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    frame = make_frame(args.rows, args.seed)
    cfg = make_config()
    h = harmonise(frame, cfg, ORG)  # warm-up
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        harmonise(frame, cfg, ORG)
        times.append(time.perf_counter() - t0)
    best = min(times)
    rows, features = h.X.shape
    goal = GOAL_SECONDS * args.rows / 1_000_000
    print(f"rows {rows}  features {features}  source columns {frame.shape[1] - 1} + label")
    print(
        f"harmonise: {best:.3f} s (best of {args.repeat}: {', '.join(f'{t:.3f}' for t in times)})  "
        f"{rows / best:,.0f} rows/s"
    )
    print(
        f"goal: {goal:.2f} s for {args.rows:,} rows ({GOAL_SECONDS} s per million)  "
        f"{'met' if best <= goal else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
