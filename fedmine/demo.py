"""The demo federation: a bank, a retailer and a telecom operator.

All three describe the same kind of customer, drawn from one shared ground
truth (who defaults on credit), but each keeps its own table in its own
format, with its own column names, units, category codes and missing-value
markers, and each sees a skewed slice of the population:

============  ========  ===================================================
organisation  source    habits
============  ========  ===================================================
bank          CSV (;)   ``customer_age``, ``yearly_income``, regions N/S/E/W,
                        ``?`` for unknown income, label ``default_flag`` Y/N;
                        older, wealthier customers
retailer      Parquet   ``age_years``, ``income_k`` (thousands), debt ratio in
                        percent, region names capitalised, label 0/1;
                        younger customers, mostly north and south
telecom       SQLite    ``AGE`` with -9 for unknown, monthly income, area codes
                        1-4, label yes/no; few rows, mostly east and west
============  ========  ===================================================

:func:`write_demo` writes the three sources and ``federation.yaml`` that maps
them onto one canonical schema.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REGIONS = ["north", "south", "east", "west"]


def _population(
    rng: np.random.Generator, n: int, *, age_mean: float, income_scale: float, region_p, signal: float = 1.8
) -> pd.DataFrame:
    age = np.clip(rng.normal(age_mean, 12, n), 18, 90)
    income = rng.lognormal(np.log(income_scale), 0.5, n)
    region = rng.choice(4, size=n, p=region_p)
    debt_ratio = np.clip(rng.beta(2, 5, n) + 0.1 * (region == 2), 0, 1.5)
    late = rng.poisson(0.4 + 1.2 * debt_ratio, n)
    tenure = np.clip(rng.exponential(4 + (age - 18) / 10, n), 0, 40)
    # The shared ground truth: who defaults.
    logit = (
        -1.4
        + 3.2 * (debt_ratio - 0.3)
        + 0.55 * late
        - 0.8 * np.log(income / 40_000)
        - 0.025 * (age - 45)
        + 0.0009 * (age - 45) ** 2
        - 0.09 * tenure
        + np.array([0.0, 0.5, -0.4, 0.9])[region]
        + 1.1 * (debt_ratio > 0.6) * (late >= 2)
    )
    y = rng.random(n) < 1 / (1 + np.exp(-signal * logit))
    return pd.DataFrame(
        {
            "age": age,
            "income": income,
            "region": region,
            "debt_ratio": debt_ratio,
            "late_payments": late,
            "tenure_years": tenure,
            "defaulted": y.astype(int),
        }
    )


def make_demo_frames(seed: int = 7, *, scale: float = 1.0) -> dict[str, pd.DataFrame]:
    """The three organisations' raw tables, in their own shapes (not yet harmonised)."""
    rng = np.random.default_rng(seed)
    n = lambda k: max(int(k * scale), 60)  # noqa: E731
    bank = _population(rng, n(840), age_mean=52, income_scale=60_000, region_p=[0.3, 0.3, 0.2, 0.2])
    retail = _population(rng, n(600), age_mean=32, income_scale=35_000, region_p=[0.45, 0.4, 0.1, 0.05])
    telco = _population(rng, n(300), age_mean=42, income_scale=45_000, region_p=[0.1, 0.1, 0.4, 0.4])

    codes = np.array(["N", "S", "E", "W"])
    bank_raw = pd.DataFrame(
        {
            "customer_id": np.arange(len(bank)),
            "customer_age": bank.age.round(0).astype(int),
            "yearly_income": bank.income.round(0).astype(object),
            "region": codes[bank.region],
            "debt_to_income": bank.debt_ratio.round(4),
            "missed_payments": bank.late_payments,
            "years_as_client": bank.tenure_years.round(1),
            "default_flag": np.where(bank.defaulted == 1, "Y", "N"),
        }
    )
    unknown = rng.random(len(bank_raw)) < 0.05
    bank_raw.loc[unknown, "yearly_income"] = "?"

    retail_raw = pd.DataFrame(
        {
            "age_years": retail.age.round(1),
            "income_k": (retail.income / 1000).round(2),
            "home_region": np.array([r.capitalize() for r in REGIONS])[retail.region],
            "debt_pct": (retail.debt_ratio * 100).round(2),
            "late_count": retail.late_payments,
            "loyalty_years": retail.tenure_years.round(1),
            "late_payer": retail.defaulted,
        }
    )

    telco_raw = pd.DataFrame(
        {
            "AGE": telco.age.round(0).astype(int),
            "monthly_income": (telco.income / 12).round(2),
            "area_code": telco.region + 1,
            "dti": telco.debt_ratio.round(4),
            "late_bills": telco.late_payments,
            "contract_years": telco.tenure_years.round(1),
            "bad_debt": np.where(telco.defaulted == 1, "yes", "no"),
        }
    )
    unknown = rng.random(len(telco_raw)) < 0.04
    telco_raw.loc[unknown, "AGE"] = -9
    return {"bank": bank_raw, "retailer": retail_raw, "telecom": telco_raw}


def demo_config(tracking_uri: str) -> dict:
    """The federation config that maps the three demo sources onto one schema."""
    return {
        "name": "retail-credit",
        "objective": "binary",
        "label": "defaulted",
        "features": {
            "age": {"type": "float", "unit": "years", "min": 18, "max": 90},
            "income": {"type": "float", "unit": "currency per year"},
            "region": {"type": "category", "categories": REGIONS},
            "debt_ratio": {"type": "float", "unit": "fraction"},
            "late_payments": {"type": "int"},
            "tenure_years": {"type": "float", "unit": "years"},
        },
        "organisations": {
            "bank": {
                "industry": "banking",
                "source": "data/bank.csv",
                "read": {"sep": ";", "na_values": ["?"]},
                "rename": {
                    "customer_age": "age",
                    "yearly_income": "income",
                    "debt_to_income": "debt_ratio",
                    "missed_payments": "late_payments",
                    "years_as_client": "tenure_years",
                    "default_flag": "defaulted",
                },
                "values": {
                    "region": {"N": "north", "S": "south", "E": "east", "W": "west"},
                    "defaulted": {"Y": 1, "N": 0},
                },
            },
            "retailer": {
                "industry": "retail",
                "source": "data/retailer.parquet",
                "rename": {
                    "age_years": "age",
                    "income_k": "income",
                    "home_region": "region",
                    "debt_pct": "debt_ratio",
                    "late_count": "late_payments",
                    "loyalty_years": "tenure_years",
                    "late_payer": "defaulted",
                },
                "values": {"region": {"North": "north", "South": "south", "East": "east", "West": "west"}},
                "scale": {"income": 1000, "debt_ratio": 0.01},
            },
            "telecom": {
                "industry": "telecommunications",
                "source": "sqlite:///data/telecom.db?table=customers",
                "rename": {
                    "AGE": "age",
                    "monthly_income": "income",
                    "area_code": "region",
                    "dti": "debt_ratio",
                    "late_bills": "late_payments",
                    "contract_years": "tenure_years",
                    "bad_debt": "defaulted",
                },
                "missing": {"age": [-9]},
                "values": {"region": {1: "north", 2: "south", 3: "east", 4: "west"}, "defaulted": {"yes": 1, "no": 0}},
                "scale": {"income": 12},
            },
        },
        "training": {
            "strategy": "histogram",
            "rounds": 40,
            "learning_rate": 0.1,
            "num_leaves": 15,
            "min_data_in_leaf": 20,
            "validation_fraction": 0.3,
            "seed": 7,
        },
        "tracking": {"uri": tracking_uri},
    }


def write_demo(folder: str | Path, *, tracking_uri: str, seed: int = 7, scale: float = 1.0) -> Path:
    """Write the demo sources under ``folder/data`` and ``folder/federation.yaml``; return the config path.

    The SQLite source is referenced relative to the config file's folder, as
    any relative source is.
    """
    folder = Path(folder)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    frames = make_demo_frames(seed, scale=scale)
    frames["bank"].to_csv(data / "bank.csv", sep=";", index=False)
    frames["retailer"].to_parquet(data / "retailer.parquet", index=False)
    db = data / "telecom.db"
    db.unlink(missing_ok=True)
    with sqlite3.connect(db) as con:
        frames["telecom"].to_sql("customers", con, index=False)
    con.close()
    path = folder / "federation.yaml"
    path.write_text(
        "# The demo federation: three organisations, three industries, one canonical schema.\n"
        + yaml.safe_dump(demo_config(tracking_uri), sort_keys=False)
    )
    return path
