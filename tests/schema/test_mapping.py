"""The grown mapping: units, dates, derived values, unknown-category policies, markers, required.

Every mapping error has a test of its exact message.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmine.config import config_from_dict
from fedmine.errors import ConfigError, DataError
from fedmine.schema import harmonise

FEATURES = {
    "age": {"type": "int", "unit": "years", "min": 18, "max": 110},
    "glucose": {"type": "float", "unit": "mg/dL", "min": 20, "max": 600},
    "temperature": {"type": "float", "unit": "C"},
    "income": {"type": "float", "unit": "units", "required": False},
    "visit": {"type": "date", "min": "2000-01-01", "max": "2030-12-31"},
    "smoker": {"type": "bool"},
    "region": {"type": "category", "categories": ["north", "south", "other"]},
    "plan": {"type": "category", "categories": ["basic", "premium"]},
}


def cfg_with(org=None, features=None):
    org_spec = {
        "source": "clinic.csv",
        "rename": {"dob": "birth_date", "glc": "glucose", "temp_f": "temperature", "seen": "visit", "y": "sick"},
        "units": {"glucose": "mmol/L", "temperature": "F"},
        "dates": {"birth_date": "%d/%m/%Y", "visit": "%Y-%m-%d"},
        "derive": {"age": {"from": "birth_date", "as": "years_since", "at": "2024-01-01"}},
        "missing": {"*": ["?", "-9"]},
        "unknown_categories": {"region": "other", "plan": "missing"},
    }
    org_spec.update(org or {})
    return config_from_dict(
        {
            "name": "clinics",
            "label": "sick",
            "features": features or FEATURES,
            "organisations": {"clinic": org_spec},
        }
    )


def clinic_frame(**cols):
    base = {
        "dob": ["15/06/1980", "01/01/2000", "?", "31/12/1950"],
        "glc": [5.0, "?", 10.0, 4.2],
        "temp_f": [98.6, 212, "-9", ""],
        "seen": ["2023-05-01", "2024-01-31", "2022-12-24", None],
        "smoker": ["yes", "no", "no", "?"],
        "region": ["north", "Mars", "south", "Venus"],
        "plan": ["basic", "gold", "premium", "basic"],
        "y": [0, 1, 0, 1],
        "extra": [1, 2, 3, 4],
    }
    base.update(cols)
    return pd.DataFrame(base)


def test_units_dates_derive_policies_markers():
    h = harmonise(clinic_frame(), cfg_with(), "clinic")
    X = dict(zip(h.feature_names, h.X.T))
    np.testing.assert_array_equal(X["age"], [43, 24, np.nan, 73])
    np.testing.assert_allclose(X["glucose"], [90.08, np.nan, 180.16, 75.6672])
    np.testing.assert_allclose(X["temperature"], [37.0, 100.0, np.nan, np.nan])
    assert np.isnan(X["income"]).all()  # optional and absent
    expected_days = (pd.to_datetime(["2023-05-01", "2024-01-31", "2022-12-24"]) - pd.Timestamp("1970-01-01")).days
    np.testing.assert_array_equal(X["visit"][:3], expected_days)
    np.testing.assert_array_equal(X["smoker"], [1, 0, 0, np.nan])
    np.testing.assert_array_equal(X["region"], [0, 2, 1, 2])  # unknown -> other
    np.testing.assert_array_equal(X["plan"], [0, np.nan, 1, 0])  # unknown -> missing
    r = h.report
    assert r["unknown_categories"]["region"] == {"count": 2, "examples": ["Mars", "Venus"], "policy": "other"}
    assert r["unknown_categories"]["plan"] == {"count": 1, "examples": ["gold"], "policy": "missing"}
    assert r["unmapped_columns"] == ["extra"]
    assert r["absent_features"] == ["income"]
    assert r["out_of_range"] == {"age": 0, "glucose": 0, "visit": 0}
    assert r["problems"] == []


def test_feature_date_bounds_are_days():
    cfg = cfg_with()
    assert cfg.features["visit"].min == 10957.0  # 2000-01-01


def test_collect_lists_every_violation_and_keeps_going():
    frame = clinic_frame(glc=[5.0, "high", 10.0, 40.0], seen=["2023-05-01", "yesterday", None, None])
    cfg = cfg_with(
        {"unknown_categories": "error"},
        features={**FEATURES, "region": {"type": "category", "categories": ["north", "south"]}},
    )
    h = harmonise(frame, cfg, "clinic", collect=True)
    problems = h.report["problems"]
    assert any("column 'glucose' has non-numeric value 'high'" in p for p in problems)
    assert any("column 'visit' has value 'yesterday' that is not a date in format %Y-%m-%d" in p for p in problems)
    assert any("column 'region' has unknown category 'Mars'" in p for p in problems)
    assert h.report["out_of_range"]["glucose"] == 1  # 40 mmol/L = 720 mg/dL > 600


# -- config errors: file, key, both names ------------------------------------


@pytest.mark.parametrize(
    ("org", "message"),
    [
        (
            {"rename": {"dob": "birth_date", "glc": "glucose", "glucose_mg": "glucose", "y": "sick"}},
            r"organisations.clinic.rename: glc and glucose_mg both map to 'glucose'; map one column per feature",
        ),
        (
            {"rename": {"dob": "birth_date", "years": "age", "y": "sick"}},
            r"organisations.clinic: years \(rename\) and birth_date \(derive\) both map to 'age'; map one column per feature",
        ),
        (
            {"units": {"glucose": "mmol/L", "region": "F"}},
            r"organisations.clinic.units.region: units convert numbers; region is type category \(allowed with type float or int\)",
        ),
        ({"units": {"glucose": "stone"}}, r"organisations.clinic.units.glucose: unknown unit 'stone'; known: C, F, K"),
        (
            {"units": {"glucose": "kg"}},
            r"organisations.clinic.units.glucose: cannot convert kg \(mass\) to mg/dL \(concentration\)",
        ),
        (
            {"units": {"glucose": "mmol/L"}, "scale": {"glucose": 18}},
            r"organisations.clinic.units.glucose: glucose has both units and scale/offset; use one of them",
        ),
        ({"units": {"income": "thousands"}, "scale": {}}, None),
        ({"dates": {"smoker": "%Y"}}, r"organisations.clinic.dates.smoker: features.smoker has type bool, not date"),
        (
            {"dates": {"born": "%Y"}},
            r"organisations.clinic.dates.born: not a canonical column; allowed: age, birth_date, glucose",
        ),
        (
            {"derive": {"age": {"from": "birth_date", "as": "years_since"}}},
            r"organisations.clinic.derive.age: as: years_since needs 'at', the reference date \(for example at: 2024-01-01\)",
        ),
        (
            {"derive": {"region": {"from": "birth_date", "as": "year"}}},
            r"organisations.clinic.derive.region: features.region has type category; derived values are numbers",
        ),
        (
            {"unknown_categories": "other"},
            r"organisations.clinic.unknown_categories: 'other' needs 'other' in features.plan.categories \(basic, premium\)",
        ),
        (
            {"unknown_categories": {"smoker": "missing"}},
            r"organisations.clinic.unknown_categories.smoker: not a category feature; allowed: plan, region",
        ),
        (
            {"unknown_categories": "ignore"},
            r"organisations.clinic.unknown_categories: 'ignore' is not allowed; allowed: error, other, missing$",
        ),
        (
            {"missing": {"weight": [-9]}},
            r"organisations.clinic.missing.weight: not a canonical column; allowed: age, glucose",
        ),
    ],
)
def test_mapping_errors_name_both(org, message):
    if message is None:
        cfg_with(org)  # a valid variant
        return
    with pytest.raises(ConfigError, match=message):
        cfg_with(org)


def test_units_need_the_canonical_unit():
    features = {**FEATURES, "glucose": {"type": "float"}}
    with pytest.raises(
        ConfigError,
        match=r"organisations.clinic.units.glucose: features.glucose declares no unit to convert 'mmol/L' to; add its unit",
    ):
        cfg_with(features=features)


def test_date_bounds_need_a_date_feature():
    features = {**FEATURES, "glucose": {"type": "float", "min": "2020-01-01"}}
    with pytest.raises(
        ConfigError,
        match=r"features.glucose: .*min is a date \(2020-01-01\); dates are allowed with type: date \(type is float\)",
    ):
        cfg_with(features=features)


def test_other_policy_without_other_in_vocabulary_names_feature():
    with pytest.raises(ConfigError, match=r"'other' needs 'other' in features.plan.categories"):
        cfg_with({"unknown_categories": {"plan": "other"}})


# -- data errors: found only when the source's columns are known ---------------


def test_source_column_and_renamed_column_onto_one_feature():
    frame = clinic_frame(glucose=[1, 2, 3, 4])
    with pytest.raises(
        DataError,
        match=r"organisation clinic: source columns 'glc' and 'glucose' both map to 'glucose'; map one column per feature \(rename the other away\)",
    ):
        harmonise(frame, cfg_with(), "clinic")


def test_required_feature_unmapped_names_feature_and_columns():
    frame = clinic_frame().drop(columns=["glc"])
    cfg = cfg_with({"rename": {"dob": "birth_date", "temp_f": "temperature", "seen": "visit", "y": "sick"}})
    with pytest.raises(
        DataError,
        match=r"organisation clinic: canonical feature 'glucose' not found after rename; columns: birth_date, temperature, visit, smoker, region, plan, sick, extra \(map a column onto it with rename, derive, or mark it required: false\)",
    ):
        harmonise(frame, cfg, "clinic")


def test_unknown_category_error_policy():
    cfg = cfg_with({"unknown_categories": {"region": "error"}})
    with pytest.raises(
        DataError,
        match=r"organisation clinic: column 'region' has unknown category 'Mars' \(2 rows\); allowed: north, south, other",
    ):
        harmonise(clinic_frame(), cfg, "clinic")


def test_bad_date_names_format():
    with pytest.raises(
        DataError,
        match=r"organisation clinic: column 'birth_date' has value '1980-06-15' that is not a date in format %d/%m/%Y \(1 rows\)",
    ):
        harmonise(clinic_frame(dob=["1980-06-15", "01/01/2000", "?", "31/12/1950"]), cfg_with(), "clinic")


def test_derive_source_missing():
    frame = clinic_frame().drop(columns=["dob"])
    cfg = cfg_with({"rename": {"glc": "glucose", "temp_f": "temperature", "seen": "visit", "y": "sick"}})
    with pytest.raises(
        DataError,
        match=r"organisation clinic: derive.age reads column 'birth_date' that its source does not have after rename; columns: glucose, temperature",
    ):
        harmonise(frame, cfg, "clinic")
