"""Mapping suggestions: the 2014 release joins a federation that knows the 2012 release."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from fedmine.config import config_from_dict
from fedmine.errors import ConfigError
from fedmine.schema.suggest import name_similarity, suggest_mapping
from tests.schema.conftest import BANK, RENAME, bank_raw


def new_member(**mapping):
    raw = bank_raw()
    raw["organisations"]["bank_additional"] = {
        "source": BANK["organisations"]["bank_additional"]["source"],
        "read": {"sep": ";"},
        **mapping,
    }
    return config_from_dict(raw)


def test_suggest_matches_the_shared_columns():
    s = suggest_mapping(new_member(), "bank_additional")
    shared = {k: v for k, v in RENAME.items() if k != "y"}
    assert {k: s.rename[k] for k in shared} == shared
    assert s.rename.get("y") == "subscribed"  # the label, by its values alone
    assert "age" not in s.rename and "job" not in s.rename  # already named alike
    assert s.missing["days_since_previous"] == [999]
    assert s.missing["previous_outcome"] == ["nonexistent"]
    assert s.missing["credit_default"] == ["unknown"]
    assert set(s.unresolved["education"]) == {
        "basic.4y",
        "basic.6y",
        "basic.9y",
        "high.school",
        "professional.course",
        "university.degree",
        "illiterate",
    }
    assert s.unmatched_features == ["balance"]
    assert s.unmatched_columns == [
        "day_of_week",
        "emp.var.rate",
        "cons.price.idx",
        "cons.conf.idx",
        "euribor3m",
        "nr.employed",
    ]


def test_suggestion_is_yaml_for_review_and_loads_as_a_mapping():
    s = suggest_mapping(new_member(), "bank_additional")
    text = s.to_yaml()
    assert text.startswith("# Proposed mapping for organisation bank_additional: review every line")
    assert "#   pdays -> days_since_previous" in text
    proposal = yaml.safe_load(text)["organisations"]["bank_additional"]
    raw = bank_raw()
    raw["organisations"]["bank_additional"] = proposal
    cfg = config_from_dict(raw)  # the proposal is a valid mapping as it stands
    assert cfg.organisations["bank_additional"].rename["poutcome"] == "previous_outcome"


def test_existing_entries_are_kept():
    s = suggest_mapping(new_member(rename={"pdays": "days_since_previous"}), "bank_additional")
    assert s.kept == {"pdays": "days_since_previous"} and "pdays" not in s.rename


def test_unit_factor_is_proposed(tmp_path):
    raw = bank_raw()
    frame = pd.read_csv(BANK["organisations"]["bank"]["source"], sep=";")
    frame["duration_min"] = frame.pop("duration") / 60.0
    path = tmp_path / "minutes.csv"
    frame.to_csv(path, sep=";", index=False)
    raw["organisations"]["minutes"] = {"source": str(path), "read": {"sep": ";"}}
    s = suggest_mapping(config_from_dict(raw), "minutes")
    assert s.rename["duration_min"] == "call_duration"
    assert s.units == {"call_duration": "minutes"}


def test_unknown_org_is_an_input_error():
    with pytest.raises(
        ConfigError, match=r"--org nobody: not an organisation of bank-marketing; allowed: bank, bank_additional"
    ):
        suggest_mapping(new_member(), "nobody")


@pytest.mark.parametrize(
    ("a", "b", "low"),
    [
        ("pdays", "days_since_previous", 0.8),
        ("poutcome", "previous_outcome", 0.8),
        ("housing", "housing_loan", 0.8),
        ("customerAge", "customer_age", 1.0),
    ],
)
def test_name_similarity(a, b, low):
    assert name_similarity(a, b) >= low
    assert name_similarity("day_of_week", "balance") < 0.4
