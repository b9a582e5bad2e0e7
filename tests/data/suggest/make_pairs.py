"""Write the schema pairs of tests/data/suggest from the public tables they sample.

Usage::

    python tests/data/suggest/make_pairs.py DATA_DIR

``DATA_DIR`` holds the original files: ``uci_bank_marketing/bank-full.csv``,
``uci_bank_marketing/bank-additional-full.csv``,
``uci_default_credit_card_taiwan/UCI_Credit_Card.csv`` and
``uci_wholesale_customers/Wholesale customers data.csv`` (README.md names
their origin and licence). Each pair is a folder with ``federation.yaml``
(the canonical schema, the organisations already mapped, and the new
organisation with only its ``source``), the sampled tables, and
``expected.yaml``: the mapping a person would write for the new organisation
(``rename``; ``values``, ``units``, ``scale`` and ``missing`` entries that a
proposal must contain; ``left_out``: source columns that map onto nothing).

The samples are seeded, so running this again writes the same files. The new
organisations' tables are the original rows with the renamings, codes and
units another organisation's export would have; what each one changes is
written beside it below.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
SEED = 20260
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
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
MONTH_NAMES = dict(
    zip(
        MONTHS,
        [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ],
        strict=True,
    )
)
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
WEEKDAY_NAMES = dict(zip(WEEKDAYS, ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"], strict=True))

BANK_FEATURES: dict[str, Any] = {
    "age": {"type": "int", "unit": "years", "min": 18, "max": 100},
    "job": {"type": "category", "categories": JOBS},
    "marital_status": {"type": "category", "categories": ["divorced", "married", "single"]},
    "education": {"type": "category", "categories": ["primary", "secondary", "tertiary"]},
    "credit_default": {"type": "bool"},
    "housing_loan": {"type": "bool"},
    "personal_loan": {"type": "bool"},
    "contact_channel": {"type": "category", "categories": ["cellular", "telephone"]},
    "contact_month": {"type": "category", "categories": MONTHS},
    "call_duration": {"type": "float", "unit": "seconds", "min": 0},
    "campaign_contacts": {"type": "int", "min": 1},
    "days_since_previous": {"type": "float", "unit": "days", "min": 0},
    "previous_contacts": {"type": "int", "min": 0},
    "previous_outcome": {"type": "category", "categories": ["failure", "success", "other"]},
    "balance": {"type": "float", "unit": "EUR", "required": False, "description": "yearly average"},
}
BANK_RENAME = {
    "marital": "marital_status",
    "default": "credit_default",
    "housing": "housing_loan",
    "loan": "personal_loan",
    "contact": "contact_channel",
    "month": "contact_month",
    "duration": "call_duration",
    "campaign": "campaign_contacts",
    "pdays": "days_since_previous",
    "previous": "previous_contacts",
    "poutcome": "previous_outcome",
    "y": "subscribed",
}
BANK_2012 = {
    "source": "../../uci_bank_marketing/bank.csv",
    "read": {"sep": ";"},
    "rename": BANK_RENAME,
    "missing": {"*": ["unknown"], "days_since_previous": [-1]},
}
BANK_2014 = {
    "source": "../../uci_bank_marketing/bank-additional.csv",
    "read": {"sep": ";"},
    "rename": BANK_RENAME,
    "missing": {"*": ["unknown", "nonexistent"], "days_since_previous": [999]},
}


def write_pair(
    name: str, config: dict[str, Any], expected: dict[str, Any], tables: dict[str, pd.DataFrame], about: str
) -> None:
    folder = HERE / name
    folder.mkdir(exist_ok=True)
    for file, frame in tables.items():
        frame.to_csv(folder / file, index=False)
    header = f"# {about}\n"
    (folder / "federation.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False, width=110))
    (folder / "expected.yaml").write_text(header + yaml.safe_dump(expected, sort_keys=False, width=110))


def sample(frame: pd.DataFrame, n: int, *, seed: int, exclude: pd.Index | None = None) -> pd.DataFrame:
    pool = frame if exclude is None else frame.drop(index=exclude)
    return pool.sample(n=n, random_state=seed).sort_index()


def bank_releases() -> None:
    """The 2014 release joins a federation that knows the 2012 release: both unchanged."""
    config = {
        "name": "bank-releases",
        "label": "subscribed",
        "features": BANK_FEATURES,
        "organisations": {"bank": BANK_2012, "bank_additional": {"source": BANK_2014["source"], "read": {"sep": ";"}}},
    }
    expected = {
        "new": "bank_additional",
        "rename": BANK_RENAME,
        "missing": {"days_since_previous": [999], "previous_outcome": ["nonexistent"]},
        "left_out": ["day_of_week", "emp.var.rate", "cons.price.idx", "cons.conf.idx", "euribor3m", "nr.employed"],
    }
    write_pair(name="bank_releases", config=config, expected=expected, tables={}, about=bank_releases.__doc__ or "")


def bank_crm(data: Path) -> None:
    """A CRM export of 2014-release rows: names with units and punctuation, upper-case codes, month names."""
    raw = pd.read_csv(data / "uci_bank_marketing/bank-additional-full.csv", sep=";")
    rows = sample(raw, 1200, seed=SEED)
    new = pd.DataFrame(
        {
            "Age (years)": rows["age"],
            "OCCUPATION": rows["job"].str.upper(),
            "Marital Status": rows["marital"].str.title(),
            "Education Level": rows["education"],
            "Credit In Default": rows["default"].str.title(),
            "Housing Loan?": rows["housing"],
            "Personal Loan?": rows["loan"],
            "Contact Type": rows["contact"].str.upper(),
            "Last Contact Month": rows["month"].map(MONTH_NAMES),
            "Last Contact Weekday": rows["day_of_week"].map(WEEKDAY_NAMES),
            "Call Duration (min)": (rows["duration"] / 60).round(2),
            "Contacts This Campaign": rows["campaign"],
            "Days Since Last Contact": rows["pdays"],
            "Prior Contacts": rows["previous"],
            "Prior Campaign Outcome": rows["poutcome"].str.title(),
            "Employment Variation Rate": rows["emp.var.rate"],
            "Consumer Price Index": rows["cons.price.idx"],
            "Euribor 3M (%)": rows["euribor3m"],
            "Employees (thousands)": rows["nr.employed"],
            "Term Deposit": rows["y"],
        }
    )
    config = {
        "name": "bank-crm",
        "label": "subscribed",
        "features": BANK_FEATURES,
        "organisations": {"bank": BANK_2012, "bank_additional": BANK_2014, "crm": {"source": "crm.csv"}},
    }
    expected = {
        "new": "crm",
        "rename": {
            "Age (years)": "age",
            "OCCUPATION": "job",
            "Marital Status": "marital_status",
            "Education Level": "education",
            "Credit In Default": "credit_default",
            "Housing Loan?": "housing_loan",
            "Personal Loan?": "personal_loan",
            "Contact Type": "contact_channel",
            "Last Contact Month": "contact_month",
            "Call Duration (min)": "call_duration",
            "Contacts This Campaign": "campaign_contacts",
            "Days Since Last Contact": "days_since_previous",
            "Prior Contacts": "previous_contacts",
            "Prior Campaign Outcome": "previous_outcome",
            "Term Deposit": "subscribed",
        },
        "values": {
            "job": {"ADMIN.": "admin.", "BLUE-COLLAR": "blue-collar", "SELF-EMPLOYED": "self-employed"},
            "marital_status": {"Married": "married", "Single": "single", "Divorced": "divorced"},
            "contact_channel": {"CELLULAR": "cellular", "TELEPHONE": "telephone"},
            "contact_month": {"March": "mar", "May": "may", "September": "sep", "December": "dec"},
            "previous_outcome": {"Failure": "failure", "Success": "success"},
            "credit_default": {"No": False},  # a handful of the 41,188 rows say yes; none of these
        },
        "units": {"call_duration": "minutes"},
        "missing": {"days_since_previous": [999], "previous_outcome": ["Nonexistent"], "credit_default": ["Unknown"]},
        "left_out": [
            "Last Contact Weekday",
            "Employment Variation Rate",
            "Consumer Price Index",
            "Euribor 3M (%)",
            "Employees (thousands)",
        ],
    }
    write_pair("bank_crm", config, expected, {"crm.csv": new}, bank_crm.__doc__ or "")


TAIWAN_EDUCATION = {1: "graduate school", 2: "university", 3: "high school", 4: "others", 5: "others", 6: "others"}
TAIWAN_MARRIAGE = {1: "married", 2: "single", 3: "others"}


def credit_taiwan(data: Path) -> None:
    """Two Taiwanese card issuers: codes against names, M/F, thousands of NT$, month-named columns."""
    raw = pd.read_csv(data / "uci_default_credit_card_taiwan/UCI_Credit_Card.csv")
    mapped = sample(raw, 1500, seed=SEED)
    rows = sample(raw, 1000, seed=SEED + 1, exclude=mapped.index)
    features = {
        "credit_limit": {"type": "float", "min": 0, "description": "NT$"},
        "sex": {"type": "category", "categories": ["male", "female"]},
        "education": {"type": "category", "categories": ["graduate school", "university", "high school", "others"]},
        "marital_status": {"type": "category", "categories": ["married", "single", "others"]},
        "age": {"type": "int", "unit": "years", "min": 18, "max": 100},
        "repayment_status_sep": {"type": "int", "min": -2, "max": 9},
        "repayment_status_aug": {"type": "int", "min": -2, "max": 9},
        "bill_amount_sep": {"type": "float"},
        "bill_amount_aug": {"type": "float"},
        "payment_amount_sep": {"type": "float", "min": 0},
        "payment_amount_aug": {"type": "float", "min": 0},
    }
    taipei = {
        "source": "taipei.csv",
        "rename": {
            "LIMIT_BAL": "credit_limit",
            "SEX": "sex",
            "EDUCATION": "education",
            "MARRIAGE": "marital_status",
            "AGE": "age",
            "PAY_0": "repayment_status_sep",
            "PAY_2": "repayment_status_aug",
            "BILL_AMT1": "bill_amount_sep",
            "BILL_AMT2": "bill_amount_aug",
            "PAY_AMT1": "payment_amount_sep",
            "PAY_AMT2": "payment_amount_aug",
            "DEFAULT_PAYMENT_NEXT_MONTH": "default_next_month",
        },
        "values": {"sex": {1: "male", 2: "female"}, "education": TAIWAN_EDUCATION, "marital_status": TAIWAN_MARRIAGE},
        "missing": {"education": [0], "marital_status": [0]},
    }
    edu = rows["EDUCATION"].map(TAIWAN_EDUCATION).fillna("unknown").str.upper()
    new = pd.DataFrame(
        {
            "Customer No": np.arange(1, len(rows) + 1),
            "Credit Limit (NT$ thousands)": rows["LIMIT_BAL"] / 1000,
            "GENDER": rows["SEX"].map({1: "M", 2: "F"}),
            "EDUCATION": edu,
            "Marital": rows["MARRIAGE"].map({1: "Married", 2: "Single", 3: "Other", 0: "Unknown"}),
            "AGE_YRS": rows["AGE"],
            "Status Sep 2005": rows["PAY_0"],
            "Status Aug 2005": rows["PAY_2"],
            "Status Jul 2005": rows["PAY_3"],
            "Bill Sep 2005": rows["BILL_AMT1"],
            "Bill Aug 2005": rows["BILL_AMT2"],
            "Bill Jul 2005": rows["BILL_AMT3"],
            "Payment Sep 2005": rows["PAY_AMT1"],
            "Payment Aug 2005": rows["PAY_AMT2"],
            "Payment Jul 2005": rows["PAY_AMT3"],
            "Defaulted": rows["DEFAULT_PAYMENT_NEXT_MONTH"].map({1: "Y", 0: "N"}),
        }
    )
    config = {
        "name": "credit-taiwan",
        "label": "default_next_month",
        "features": features,
        "organisations": {"taipei": taipei, "kaohsiung": {"source": "kaohsiung.csv"}},
    }
    expected = {
        "new": "kaohsiung",
        "rename": {
            "Credit Limit (NT$ thousands)": "credit_limit",
            "GENDER": "sex",
            "EDUCATION": "education",
            "Marital": "marital_status",
            "AGE_YRS": "age",
            "Status Sep 2005": "repayment_status_sep",
            "Status Aug 2005": "repayment_status_aug",
            "Bill Sep 2005": "bill_amount_sep",
            "Bill Aug 2005": "bill_amount_aug",
            "Payment Sep 2005": "payment_amount_sep",
            "Payment Aug 2005": "payment_amount_aug",
            "Defaulted": "default_next_month",
        },
        "values": {
            "sex": {"M": "male", "F": "female"},
            "education": {"GRADUATE SCHOOL": "graduate school", "HIGH SCHOOL": "high school", "OTHERS": "others"},
            "marital_status": {"Married": "married", "Single": "single", "Other": "others"},
        },
        "scale": {"credit_limit": 1000.0},
        "missing": {"marital_status": ["Unknown"]},
        "left_out": ["Customer No", "Status Jul 2005", "Bill Jul 2005", "Payment Jul 2005"],
    }
    tables = {"taipei.csv": mapped, "kaohsiung.csv": new}
    write_pair("credit_taiwan", config, expected, tables, credit_taiwan.__doc__ or "")


def credit_codes(data: Path) -> None:
    """A credit bureau keeps Taiwan's numeric codes as the vocabulary; a count column sits beside them."""
    raw = pd.read_csv(data / "uci_default_credit_card_taiwan/UCI_Credit_Card.csv")
    pays = ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]
    raw["MONTHS_DELAYED"] = (raw[pays] >= 1).sum(axis=1)
    mapped = sample(raw, 1500, seed=SEED + 2)
    rows = sample(raw, 1000, seed=SEED + 3, exclude=mapped.index)
    features = {
        "limit_balance": {"type": "float", "min": 0},
        "sex": {"type": "category", "categories": ["1", "2"], "description": "1 male, 2 female"},
        "education": {
            "type": "category",
            "categories": ["1", "2", "3", "4"],
            "description": "1 graduate school, 2 university, 3 high school, 4 others",
        },
        "marriage": {"type": "category", "categories": ["1", "2", "3"], "description": "1 married, 2 single, 3 others"},
        "age": {"type": "int", "unit": "years", "min": 18, "max": 100},
        "months_delayed": {"type": "int", "min": 0, "max": 6, "description": "months of six paid late"},
    }
    bureau = {
        "source": "bureau.csv",
        "rename": {
            "LIMIT_BAL": "limit_balance",
            "SEX": "sex",
            "EDUCATION": "education",
            "MARRIAGE": "marriage",
            "AGE": "age",
            "MONTHS_DELAYED": "months_delayed",
            "DEFAULT_PAYMENT_NEXT_MONTH": "default",
        },
        "values": {"education": {5: 4, 6: 4}},
        "missing": {"education": [0], "marriage": [0]},
    }
    keep = ["ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "MONTHS_DELAYED", "DEFAULT_PAYMENT_NEXT_MONTH"]
    new = pd.DataFrame(
        {
            "Limit": rows["LIMIT_BAL"],
            "Sex Code": rows["SEX"],
            "Education Code": rows["EDUCATION"].replace({5: 4, 6: 4, 0: 4}),
            "Marital Code": rows["MARRIAGE"].replace({0: 3}),
            "age": rows["AGE"],
            "Late Payments (count)": rows["MONTHS_DELAYED"],
            "Bills Over 50k (count)": (rows[[f"BILL_AMT{i}" for i in range(1, 7)]] > 50000).sum(axis=1),
            "Default Next Month": rows["DEFAULT_PAYMENT_NEXT_MONTH"],
        }
    )
    config = {
        "name": "credit-codes",
        "label": "default",
        "features": features,
        "organisations": {"bureau": bureau, "registry": {"source": "registry.csv"}},
    }
    expected = {
        "new": "registry",
        "rename": {
            "Limit": "limit_balance",
            "Sex Code": "sex",
            "Education Code": "education",
            "Marital Code": "marriage",
            "Late Payments (count)": "months_delayed",
            "Default Next Month": "default",
        },
        "left_out": ["Bills Over 50k (count)"],
    }
    write_pair(
        "credit_codes", config, expected, {"bureau.csv": mapped[keep], "registry.csv": new}, credit_codes.__doc__ or ""
    )


def wholesale(data: Path) -> None:
    """A wholesaler's second warehouse: spending in thousands, region names, the label as a channel name."""
    raw = pd.read_csv(data / "uci_wholesale_customers/Wholesale customers data.csv")
    mapped = sample(raw, 300, seed=SEED)
    rows = raw.drop(index=mapped.index)
    spend = {
        "Fresh": "fresh",
        "Milk": "milk",
        "Grocery": "grocery",
        "Frozen": "frozen",
        "Detergents_Paper": "detergents_paper",
        "Delicassen": "delicatessen",
    }
    features: dict[str, Any] = {"region": {"type": "category", "categories": ["lisbon", "oporto", "other"]}}
    for name in spend.values():
        features[name] = {"type": "float", "unit": "units", "min": 0, "description": "yearly spending, m.u."}
    lisbon = {
        "source": "warehouse_a.csv",
        "rename": {"Channel": "retail", "Region": "region", **spend},
        "values": {"retail": {1: 0, 2: 1}, "region": {1: "lisbon", 2: "oporto", 3: "other"}},
    }
    new = pd.DataFrame(
        {
            "Customer Channel": rows["Channel"].map({1: "Hotel/Restaurant/Cafe", 2: "Retail"}),
            "REGION": rows["Region"].map({1: "LISBON", 2: "OPORTO", 3: "OTHER REGION"}),
            "Fresh Products (k m.u.)": rows["Fresh"] / 1000,
            "Milk (k m.u.)": rows["Milk"] / 1000,
            "Grocery (k m.u.)": rows["Grocery"] / 1000,
            "Frozen Foods (k m.u.)": rows["Frozen"] / 1000,
            "Detergents & Paper (k m.u.)": rows["Detergents_Paper"] / 1000,
            "Delicatessen (k m.u.)": rows["Delicassen"] / 1000,
        }
    )
    config = {
        "name": "wholesale",
        "label": "retail",
        "features": features,
        "organisations": {"warehouse_a": lisbon, "warehouse_b": {"source": "warehouse_b.csv"}},
    }
    expected = {
        "new": "warehouse_b",
        "rename": {
            "Customer Channel": "retail",
            "REGION": "region",
            "Fresh Products (k m.u.)": "fresh",
            "Milk (k m.u.)": "milk",
            "Grocery (k m.u.)": "grocery",
            "Frozen Foods (k m.u.)": "frozen",
            "Detergents & Paper (k m.u.)": "detergents_paper",
            "Delicatessen (k m.u.)": "delicatessen",
        },
        "values": {
            "region": {"LISBON": "lisbon", "OPORTO": "oporto", "OTHER REGION": "other"},
            "retail": {"Retail": True, "Hotel/Restaurant/Cafe": False},
        },
        "units": {name: "thousands" for name in spend.values()},
        "left_out": [],
    }
    write_pair(
        "wholesale", config, expected, {"warehouse_a.csv": mapped, "warehouse_b.csv": new}, wholesale.__doc__ or ""
    )


def bank_flags(data: Path) -> None:
    """A marketing list of 2012-release rows: "X"/"No X" flags, months and quarters as numbers, look-alike flags."""
    raw = pd.read_csv(data / "uci_bank_marketing/bank-full.csv", sep=";")
    raw["quarter"] = raw["month"].map({m: i // 3 + 1 for i, m in enumerate(MONTHS)})
    mapped = sample(raw, 1500, seed=SEED + 4)
    rows = sample(raw, 1000, seed=SEED + 5, exclude=mapped.index)
    features = {
        **BANK_FEATURES,
        "contact_quarter": {
            "type": "category",
            "categories": ["1", "2", "3", "4"],
            "description": "quarter of the year",
        },
    }
    branch = {**BANK_2012, "source": "branch.csv", "read": {}}
    branch["rename"] = {**BANK_RENAME, "quarter": "contact_quarter"}

    def flag(col: pd.Series, word: str) -> pd.Series:
        return col.map({"yes": word, "no": "No " + word.lower(), "unknown": "unknown"})

    new = pd.DataFrame(
        {
            "client_age": rows["age"],
            "job_title": rows["job"],
            "civil_status": rows["marital"],
            "EDUCATION": rows["education"]
            .map({"primary": "PRIMARY SCHOOL", "secondary": "SECONDARY SCHOOL", "tertiary": "TERTIARY EDUCATION"})
            .fillna("UNKNOWN"),
            "Default": flag(rows["default"], "Default"),
            "Housing Loan": flag(rows["housing"], "Housing loan"),
            "Personal Loan": flag(rows["loan"], "Personal loan"),
            "Any Loan": np.where((rows["housing"] == "yes") | (rows["loan"] == "yes"), "Yes", "No"),
            "Contacted Before": np.where(rows["pdays"] != -1, "Yes", "No"),
            "Contact Channel": rows["contact"].str.title(),
            "Month": rows["month"].map({m: i + 1 for i, m in enumerate(MONTHS)}),
            "Qtr": rows["quarter"],
            "Day": rows["day"],
            "Contacts": rows["campaign"],
            "Duration (s)": rows["duration"],
            "Days Since Last Call": rows["pdays"],
            "Previous Calls": rows["previous"],
            "Previous Result": rows["poutcome"].str.upper(),
            "Avg Yearly Balance (EUR)": rows["balance"],
            "Outcome": rows["y"].map({"yes": "Subscribed", "no": "Not subscribed"}),
        }
    )
    config = {
        "name": "bank-flags",
        "label": "subscribed",
        "features": features,
        "organisations": {"branch": branch, "marketing": {"source": "marketing.csv"}},
    }
    expected = {
        "new": "marketing",
        "rename": {
            "client_age": "age",
            "job_title": "job",
            "civil_status": "marital_status",
            "EDUCATION": "education",
            "Default": "credit_default",
            "Housing Loan": "housing_loan",
            "Personal Loan": "personal_loan",
            "Contact Channel": "contact_channel",
            "Month": "contact_month",
            "Qtr": "contact_quarter",
            "Contacts": "campaign_contacts",
            "Duration (s)": "call_duration",
            "Days Since Last Call": "days_since_previous",
            "Previous Calls": "previous_contacts",
            "Previous Result": "previous_outcome",
            "Avg Yearly Balance (EUR)": "balance",
            "Outcome": "subscribed",
        },
        "values": {
            "education": {
                "PRIMARY SCHOOL": "primary",
                "SECONDARY SCHOOL": "secondary",
                "TERTIARY EDUCATION": "tertiary",
            },
            "housing_loan": {"Housing loan": True, "No housing loan": False},
            "personal_loan": {"Personal loan": True, "No personal loan": False},
            "credit_default": {"Default": True, "No default": False},
            "contact_channel": {"Cellular": "cellular", "Telephone": "telephone"},
            "contact_month": {1: "jan", 5: "may", 12: "dec"},
            "previous_outcome": {"FAILURE": "failure", "SUCCESS": "success", "OTHER": "other"},
            "subscribed": {"Subscribed": True, "Not subscribed": False},
        },
        "missing": {"days_since_previous": [-1]},
        "left_out": ["Any Loan", "Contacted Before", "Day"],
    }
    write_pair("bank_flags", config, expected, {"branch.csv": mapped, "marketing.csv": new}, bank_flags.__doc__ or "")


def bank_weekdays(data: Path) -> None:
    """Upper-case names and codes, weekdays as numbers, initials (CPI), Euribor as a fraction against percent."""
    raw = pd.read_csv(data / "uci_bank_marketing/bank-additional-full.csv", sep=";")
    rows = sample(raw, 1000, seed=SEED + 6)
    features = {
        "age": BANK_FEATURES["age"],
        "job": BANK_FEATURES["job"],
        "marital_status": BANK_FEATURES["marital_status"],
        "contact_channel": BANK_FEATURES["contact_channel"],
        "contact_month": BANK_FEATURES["contact_month"],
        "contact_weekday": {"type": "category", "categories": WEEKDAYS},
        "call_duration": BANK_FEATURES["call_duration"],
        "campaign_contacts": BANK_FEATURES["campaign_contacts"],
        "employment_variation_rate": {"type": "float"},
        "consumer_price_index": {"type": "float"},
        "consumer_confidence_index": {"type": "float"},
        "euribor_3m": {"type": "float", "unit": "%", "description": "3-month Euribor rate"},
    }
    bank = {
        "source": "../../uci_bank_marketing/bank-additional.csv",
        "read": {"sep": ";"},
        "rename": {
            "marital": "marital_status",
            "contact": "contact_channel",
            "month": "contact_month",
            "day_of_week": "contact_weekday",
            "duration": "call_duration",
            "campaign": "campaign_contacts",
            "emp.var.rate": "employment_variation_rate",
            "cons.price.idx": "consumer_price_index",
            "cons.conf.idx": "consumer_confidence_index",
            "euribor3m": "euribor_3m",
            "y": "subscribed",
        },
        "missing": {"*": ["unknown"]},
    }
    new = pd.DataFrame(
        {
            "AGE": rows["age"],
            "JOB": rows["job"].str.upper(),
            "MARITAL": rows["marital"].str.upper(),
            "CONTACT": rows["contact"].str.upper(),
            "MONTH": rows["month"].str.upper(),
            "WEEKDAY": rows["day_of_week"].map({d: i + 1 for i, d in enumerate(WEEKDAYS)}),
            "DURATION_SEC": rows["duration"],
            "CAMPAIGN_CALLS": rows["campaign"],
            "EMP_VAR_RATE": rows["emp.var.rate"],
            "CPI": rows["cons.price.idx"],
            "CCI": rows["cons.conf.idx"],
            "EURIBOR_3M": (rows["euribor3m"] / 100).round(6),
            "NR_EMPLOYED": rows["nr.employed"],
            "Y": rows["y"].str.upper(),
        }
    )
    config = {
        "name": "bank-weekdays",
        "label": "subscribed",
        "features": features,
        "organisations": {"bank_additional": bank, "callcentre": {"source": "callcentre.csv"}},
    }
    expected = {
        "new": "callcentre",
        "rename": {
            "AGE": "age",
            "JOB": "job",
            "MARITAL": "marital_status",
            "CONTACT": "contact_channel",
            "MONTH": "contact_month",
            "WEEKDAY": "contact_weekday",
            "DURATION_SEC": "call_duration",
            "CAMPAIGN_CALLS": "campaign_contacts",
            "EMP_VAR_RATE": "employment_variation_rate",
            "CPI": "consumer_price_index",
            "CCI": "consumer_confidence_index",
            "EURIBOR_3M": "euribor_3m",
            "Y": "subscribed",
        },
        "values": {
            "job": {"ADMIN.": "admin.", "BLUE-COLLAR": "blue-collar"},
            "marital_status": {"MARRIED": "married"},
            "contact_channel": {"CELLULAR": "cellular"},
            "contact_month": {"MAY": "may", "NOV": "nov"},
            "contact_weekday": {1: "mon", 5: "fri"},
        },
        "units": {"euribor_3m": "fraction"},
        "left_out": ["NR_EMPLOYED"],
    }
    write_pair("bank_weekdays", config, expected, {"callcentre.csv": new}, bank_weekdays.__doc__ or "")


def bank_2012_joins() -> None:
    """The other way round: the 2012 release joins a federation that knows the 2014 release; both unchanged."""
    config = {
        "name": "bank-2012-joins",
        "label": "subscribed",
        "features": BANK_FEATURES,
        "organisations": {"bank_additional": BANK_2014, "bank": {"source": BANK_2012["source"], "read": {"sep": ";"}}},
    }
    expected = {
        "new": "bank",
        "rename": BANK_RENAME,
        "missing": {"days_since_previous": [-1], "previous_outcome": ["unknown"]},
        "left_out": ["day"],
    }
    write_pair("bank_2012_joins", config, expected, {}, bank_2012_joins.__doc__ or "")


def credit_original(data: Path) -> None:
    """Card clients under the original export's names and codes join the issuer that maps codes to names."""
    raw = pd.read_csv(data / "uci_default_credit_card_taiwan/UCI_Credit_Card.csv")
    rows = sample(raw, 1000, seed=SEED + 7)
    keep = ["ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "DEFAULT_PAYMENT_NEXT_MONTH"]
    config = yaml.safe_load((HERE / "credit_taiwan" / "federation.yaml").read_text())
    features = config["features"]
    config = {
        "name": "credit-original",
        "label": "default_next_month",
        "features": {k: features[k] for k in ("credit_limit", "sex", "education", "marital_status", "age")},
        "organisations": {
            "taipei": {**config["organisations"]["taipei"], "source": "../credit_taiwan/taipei.csv"},
            "original": {"source": "original.csv"},
        },
    }
    expected = {
        "new": "original",
        "rename": {
            "LIMIT_BAL": "credit_limit",
            "SEX": "sex",
            "EDUCATION": "education",
            "MARRIAGE": "marital_status",
            "AGE": "age",
            "DEFAULT_PAYMENT_NEXT_MONTH": "default_next_month",
        },
        "values": {  # taipei's codes: the config holds its value map
            "sex": {1: "male", 2: "female"},
            "education": {1: "graduate school", 4: "others", 5: "others"},
            "marital_status": {1: "married", 3: "others"},
        },
        "missing": {"education": [0], "marital_status": [0]},
        "left_out": ["ID"],
    }
    write_pair("credit_original", config, expected, {"original.csv": rows[keep]}, credit_original.__doc__ or "")


def wholesale_original(data: Path) -> None:
    """The second warehouse under the original names and codes: the label is the channel code 1/2."""
    raw = pd.read_csv(data / "uci_wholesale_customers/Wholesale customers data.csv")
    mapped = sample(raw, 300, seed=SEED)
    rows = raw.drop(index=mapped.index)
    config = yaml.safe_load((HERE / "wholesale" / "federation.yaml").read_text())
    config["name"] = "wholesale-original"
    config["organisations"] = {
        "warehouse_a": {**config["organisations"]["warehouse_a"], "source": "../wholesale/warehouse_a.csv"},
        "warehouse_c": {"source": "warehouse_c.csv"},
    }
    expected = {
        "new": "warehouse_c",
        "rename": {
            "Channel": "retail",
            "Region": "region",
            "Fresh": "fresh",
            "Milk": "milk",
            "Grocery": "grocery",
            "Frozen": "frozen",
            "Detergents_Paper": "detergents_paper",
            "Delicassen": "delicatessen",
        },
        "values": {"region": {1: "lisbon", 2: "oporto", 3: "other"}, "retail": {1: False, 2: True}},
        "left_out": [],
    }
    write_pair("wholesale_original", config, expected, {"warehouse_c.csv": rows}, wholesale_original.__doc__ or "")


def main() -> None:
    data = Path(sys.argv[1])
    bank_releases()
    bank_crm(data)
    credit_taiwan(data)
    credit_codes(data)
    wholesale(data)
    bank_flags(data)
    bank_weekdays(data)
    bank_2012_joins()
    credit_original(data)
    wholesale_original(data)


if __name__ == "__main__":
    main()
