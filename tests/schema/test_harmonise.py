"""Harmonisation onto the canonical schema, and its one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmine.config import config_from_dict
from fedmine.errors import DataError
from fedmine.schema import harmonise, harmonise_features


def make_cfg(**org_overrides):
    org = {
        "source": "bank.csv",
        "rename": {"customer_age": "age", "yearly_income": "income", "area": "region", "flag": "defaulted"},
        "values": {"region": {"N": "north", "S": "south"}, "defaulted": {"Y": 1, "N": 0}},
        "scale": {"income": 1000},
        "missing": {"age": [-9]},
    }
    org.update(org_overrides)
    return config_from_dict(
        {
            "name": "t",
            "objective": "binary",
            "label": "defaulted",
            "features": {
                "age": {"type": "float"},
                "income": {"type": "float"},
                "region": {"type": "category", "categories": ["north", "south", "east"]},
            },
            "organisations": {"bank": org},
        }
    )


def raw_frame(**cols):
    base = {
        "customer_age": [30, -9, 50, 41],
        "yearly_income": ["40.5", "55", None, "61"],
        "area": ["N", "S", "east", None],
        "flag": ["Y", "N", "N", "Y"],
        "unused": [1, 2, 3, 4],
    }
    base.update(cols)
    return pd.DataFrame(base)


def test_rename_missing_values_scale():
    h = harmonise(raw_frame(), make_cfg(), "bank")
    assert h.feature_names == ["age", "income", "region"]
    np.testing.assert_array_equal(h.X[:, 0], [30, np.nan, 50, 41])
    np.testing.assert_array_equal(h.X[:, 1], [40500, 55000, np.nan, 61000])
    np.testing.assert_array_equal(h.X[:, 2], [0, 1, 2, np.nan])
    np.testing.assert_array_equal(h.y, [1, 0, 0, 1])
    assert h.report["rows"] == 4
    assert h.report["missing_rate"]["age"] == 0.25


def test_raw_frame_not_modified():
    frame = raw_frame()
    before = frame.copy()
    harmonise(frame, make_cfg(), "bank")
    pd.testing.assert_frame_equal(frame, before)


def test_numeric_value_map_keys_match_text_columns():
    cfg = make_cfg(values={"region": {1: "north", 2: "south"}, "defaulted": {"Y": 1, "N": 0}})
    h = harmonise(raw_frame(area=["1", "2", 1, None]), cfg, "bank")
    np.testing.assert_array_equal(h.X[:, 2], [0, 1, 0, np.nan])


@pytest.mark.parametrize(
    ("frame_kw", "cfg_kw", "message"),
    [
        ({"area": ["N", "S", "Mars", None]}, {}, r"organisation bank: column 'region' has unknown category 'Mars' \(1 rows\); allowed: north, south, east"),
        ({"yearly_income": ["40", "n/a", "1", "2"]}, {}, r"organisation bank: column 'income' has non-numeric value 'n/a'"),
        ({"flag": ["Y", None, "N", "Y"]}, {}, r"organisation bank: label 'defaulted' is missing in 1 rows \(first at row 1\)"),
        ({"flag": ["Y", "N", "maybe", "Y"]}, {}, r"organisation bank: label 'defaulted' is not binary: value 'maybe'"),
        ({}, {"rename": {"cust_age": "age", "yearly_income": "income", "area": "region", "flag": "defaulted"}}, r"organisation bank: rename names column 'cust_age' that its source does not have; columns: customer_age, "),
        ({}, {"rename": {"yearly_income": "income", "area": "region", "flag": "defaulted"}}, r"organisation bank: canonical feature 'age' not found after rename; columns: "),
        ({}, {"rename": {"customer_age": "age", "yearly_income": "income", "area": "region"}}, r"organisation bank: canonical label 'defaulted' not found after rename"),
    ],
)
def test_errors_name_organisation_column_and_example(frame_kw, cfg_kw, message):
    with pytest.raises(DataError, match=message):
        harmonise(raw_frame(**frame_kw), make_cfg(**cfg_kw), "bank")


def test_label_not_binary():
    cfg = make_cfg(values={"region": {"N": "north", "S": "south"}})
    with pytest.raises(DataError, match=r"organisation bank: label 'defaulted' is not binary: value 2 \(1 rows\); allowed: 0, 1, true/false, yes/no"):
        harmonise(raw_frame(flag=[0, 1, 2, 1]), cfg, "bank")


def test_empty_organisation():
    with pytest.raises(DataError, match=r"organisation bank: no rows in source bank.csv"):
        harmonise(raw_frame().iloc[:0], make_cfg(), "bank")


def test_features_only_for_scoring():
    X = harmonise_features(raw_frame().drop(columns=["flag"]), make_cfg(), "bank")
    assert X.shape == (4, 3)
    np.testing.assert_array_equal(X[:, 1], [40500, 55000, np.nan, 61000])
