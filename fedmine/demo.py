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
        "tune": {  # fedmine tune's search space (docs/tune.md)
            "trials": 10,
            "startup_trials": 2,
            "warmup_rounds": 10,
            "space": {
                "learning_rate": {"low": 0.02, "high": 0.3, "log": True},
                "num_leaves": {"low": 4, "high": 31},
                "min_data_in_leaf": {"low": 5, "high": 50},
            },
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


# -- the vertical demo: the same customers, different columns -------------------------------------------


def make_vertical_frames(seed: int = 11, *, n: int = 2400) -> dict[str, pd.DataFrame]:
    """A bank, a retailer and a telecom operator that share some customers and hold different columns.

    The bank holds the label (``default``) and account features, the retailer
    purchase behaviour, the telecom usage; who defaults depends on all three.
    Each names its customers its own way (``C00042``, `` c00042 ``), which the
    id normalisation (trim, case) reconciles. The bank knows 80% of the
    customers, the retailer 75%, the telecom 70%, partly overlapping.
    """
    rng = np.random.default_rng(seed)
    balance = rng.lognormal(np.log(3000), 1.0, n)
    utilisation = np.clip(rng.beta(2, 4, n), 0, 1)
    account_years = np.clip(rng.exponential(6, n), 0, 40)
    missed = rng.poisson(0.3 + 0.8 * utilisation, n)
    spend = rng.lognormal(np.log(400), 0.6, n)
    online = np.clip(rng.beta(2, 2, n), 0, 1)
    basket = np.clip(rng.normal(45, 15, n), 5, None)
    returns = np.clip(rng.beta(1.2, 8, n), 0, 1)
    data_gb = rng.lognormal(np.log(8), 0.8, n)
    late_bills = rng.poisson(0.2 + 2.0 * returns, n)
    contract = rng.choice(3, size=n, p=[0.35, 0.5, 0.15])
    tenure = np.clip(rng.exponential(30, n), 1, 200)
    logit = (
        -2.2
        + 2.5 * (utilisation - 0.3)
        + 0.5 * missed
        - 0.3 * np.log(balance / 3000)
        - 0.04 * account_years
        + 0.9 * (spend > 900)
        + 3.0 * (returns - 0.12)
        + 0.6 * late_bills
        + np.array([0.7, 0.0, -0.6])[contract]
        - 0.006 * tenure
    )
    default = rng.random(n) < 1 / (1 + np.exp(-1.6 * logit))
    ids = np.array([f"C{i:05d}" for i in range(n)])

    def pick(p):
        return np.sort(rng.choice(n, size=int(p * n), replace=False))

    b, r, t = pick(0.8), pick(0.75), pick(0.7)
    bank = pd.DataFrame(
        {
            "customer_id": ids[b],
            "balance": balance[b].round(2),
            "credit_utilisation": utilisation[b].round(4),
            "account_years": account_years[b].round(1),
            "missed_payments": missed[b],
            "default": np.where(default[b], "yes", "no"),
        }
    )
    retail = pd.DataFrame(
        {
            "shopper": [f" {i.lower()} " for i in ids[r]],
            "monthly_spend": spend[r].round(2),
            "online_share_pct": (online[r] * 100).round(1),
            "basket_eur": basket[r].round(2),
            "return_rate": returns[r].round(4),
        }
    )
    retail.loc[rng.random(len(retail)) < 0.05, "basket_eur"] = np.nan
    telco = pd.DataFrame(
        {
            "msisdn_owner": ids[t],
            "data_gb": data_gb[t].round(2),
            "late_bills": late_bills[t],
            "plan": np.array(["prepaid", "postpaid", "business"])[contract[t]],
            "tenure_months": tenure[t].round(0),
        }
    )
    return {"bank": bank.sample(frac=1.0, random_state=1), "retailer": retail, "telecom": telco}


def vertical_demo_config(tracking_uri: str) -> dict:
    """The config of the vertical demo: who holds which feature, the id columns, the label holder."""
    return {
        "name": "shared-customers",
        "partition": "vertical",
        "objective": "binary",
        "label": "default",
        "features": {
            "balance": {"type": "float", "unit": "currency"},
            "credit_utilisation": {"type": "float", "min": 0, "max": 1},
            "account_years": {"type": "float", "unit": "years"},
            "missed_payments": {"type": "int"},
            "monthly_spend": {"type": "float", "unit": "currency"},
            "online_share": {"type": "float", "min": 0, "max": 1},
            "basket": {"type": "float", "unit": "currency"},
            "return_rate": {"type": "float", "min": 0, "max": 1},
            "data_gb": {"type": "float"},
            "late_bills": {"type": "int"},
            "plan": {"type": "category", "categories": ["prepaid", "postpaid", "business"]},
            "tenure_months": {"type": "float"},
        },
        "organisations": {
            "bank": {
                "industry": "banking",
                "source": "data/bank.csv",
                "id": {"column": "customer_id"},
                "holds_label": True,
                "features": ["balance", "credit_utilisation", "account_years", "missed_payments"],
                "values": {"default": {"yes": 1, "no": 0}},
            },
            "retailer": {
                "industry": "retail",
                "source": "data/retailer.csv",
                "id": {"column": "shopper", "trim": True, "case": "lower"},
                "features": ["monthly_spend", "online_share", "basket", "return_rate"],
                "rename": {"online_share_pct": "online_share", "basket_eur": "basket"},
                "scale": {"online_share": 0.01},
            },
            "telecom": {
                "industry": "telecommunications",
                "source": "data/telecom.csv",
                "id": "msisdn_owner",
                "features": ["data_gb", "late_bills", "plan", "tenure_months"],
            },
        },
        "vertical": {"salt": "shared-customers-demo", "min_shared_rows": 100, "publish_thresholds": True},
        "training": {
            "rounds": 20,
            "learning_rate": 0.15,
            "num_leaves": 15,
            "max_bin": 32,
            "min_data_in_leaf": 20,
            "validation_fraction": 0.3,
            "seed": 7,
        },
        "tracking": {"uri": tracking_uri},
    }


def write_vertical_demo(folder: str | Path, *, tracking_uri: str, seed: int = 11, n: int = 2400) -> Path:
    """Write the vertical demo's three CSV sources under ``folder/data`` and ``folder/federation.yaml``."""
    folder = Path(folder)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, frame in make_vertical_frames(seed, n=n).items():
        frame.to_csv(data / f"{name}.csv", index=False)
    path = folder / "federation.yaml"
    path.write_text(
        "# The vertical demo: three organisations share customers, not columns; the bank holds the label.\n"
        + yaml.safe_dump(vertical_demo_config(tracking_uri), sort_keys=False)
    )
    return path
