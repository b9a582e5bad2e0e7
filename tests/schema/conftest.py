"""The two releases of UCI Bank Marketing as two organisations of one canonical schema."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

DATA = Path(__file__).resolve().parents[1] / "data" / "uci_bank_marketing"

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
RENAME = {
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

BANK = {
    "name": "bank-marketing",
    "objective": "binary",
    "label": "subscribed",
    "features": {
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
    },
    "organisations": {
        "bank": {
            "source": str(DATA / "bank.csv"),
            "read": {"sep": ";"},
            "rename": RENAME,
            "missing": {"*": ["unknown"], "days_since_previous": [-1]},
            "industry": "banking",
        },
        "bank_additional": {
            "source": str(DATA / "bank-additional.csv"),
            "read": {"sep": ";"},
            "rename": RENAME,
            "missing": {"*": ["unknown", "nonexistent"], "days_since_previous": [999]},
            "industry": "banking",
        },
    },
    "training": {"strategy": "histogram", "rounds": 3},
}


def bank_raw(**changes) -> dict:
    """The bank federation as plain data; keyword arguments replace top-level keys."""
    raw = copy.deepcopy(BANK)
    raw.update(changes)
    return raw


@pytest.fixture
def bank_config(tmp_path) -> Path:
    """The bank federation as a YAML file, its MLflow store in tmp_path."""
    raw = bank_raw(tracking={"uri": "sqlite:///" + str(tmp_path / "mlflow.db")})
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
