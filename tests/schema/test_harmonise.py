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
        (
            {"area": ["N", "S", "Mars", None]},
            {},
            r"organisation bank: column 'region' has unknown category 'Mars' \(1 rows\); allowed: north, south, east",
        ),
        (
            {"yearly_income": ["40", "n/a", "1", "2"]},
            {},
            r"organisation bank: column 'income' has non-numeric value 'n/a'",
        ),
        (
            {"flag": ["Y", None, "N", "Y"]},
            {},
            r"organisation bank: label 'defaulted' is missing in 1 rows \(first at row 1\)",
        ),
        ({"flag": ["Y", "N", "maybe", "Y"]}, {}, r"organisation bank: label 'defaulted' is not binary: value 'maybe'"),
        (
            {},
            {"rename": {"cust_age": "age", "yearly_income": "income", "area": "region", "flag": "defaulted"}},
            r"organisation bank: rename names column 'cust_age' that its source does not have; columns: customer_age, ",
        ),
        (
            {},
            {"rename": {"yearly_income": "income", "area": "region", "flag": "defaulted"}},
            r"organisation bank: canonical feature 'age' not found after rename; columns: ",
        ),
        (
            {},
            {"rename": {"customer_age": "age", "yearly_income": "income", "area": "region"}},
            r"organisation bank: canonical label 'defaulted' not found after rename",
        ),
    ],
)
def test_errors_name_organisation_column_and_example(frame_kw, cfg_kw, message):
    with pytest.raises(DataError, match=message):
        harmonise(raw_frame(**frame_kw), make_cfg(**cfg_kw), "bank")


def test_label_not_binary():
    cfg = make_cfg(values={"region": {"N": "north", "S": "south"}})
    with pytest.raises(
        DataError,
        match=r"organisation bank: label 'defaulted' is not binary: value 2 \(1 rows\); allowed: 0, 1, true/false, yes/no",
    ):
        harmonise(raw_frame(flag=[0, 1, 2, 1]), cfg, "bank")


def test_empty_organisation():
    with pytest.raises(DataError, match=r"organisation bank: no rows in source bank.csv"):
        harmonise(raw_frame().iloc[:0], make_cfg(), "bank")


def test_features_only_for_scoring():
    X = harmonise_features(raw_frame().drop(columns=["flag"]), make_cfg(), "bank")
    assert X.shape == (4, 3)
    np.testing.assert_array_equal(X[:, 1], [40500, 55000, np.nan, 61000])


# -- tricky input: one feature x, label y -------------------------------------


def one_feature_cfg(spec, objective="binary", classes=None, **org):
    raw = {
        "name": "t",
        "objective": objective,
        "label": "y",
        "features": {"x": spec},
        "organisations": {"o": {"source": "s.csv", **org}},
    }
    if classes:
        raw["classes"] = classes
    return config_from_dict(raw)


def harmonise_x(x, cfg, y=None, collect=False):
    y = [i % 2 for i in range(len(x))] if y is None else y
    return harmonise(pd.DataFrame({"x": x, "y": y}), cfg, "o", collect=collect)


CATEGORY = {"type": "category", "categories": ["north", "south", "other"]}


@pytest.mark.parametrize(
    "x",
    [
        [1, 2.0, "1", None],
        np.array([1.0, 2.0, 1.0, np.nan]),
        pd.array([1, 2, 1, None], dtype="Int64"),
        ["1", "2", "1", None],
    ],
)
def test_value_map_keys_compare_as_text(x):
    for keys in ({1: "north", 2: "south"}, {"1": "north", "2": "south"}):
        h = harmonise_x(x, one_feature_cfg(CATEGORY, values={"x": keys}))
        np.testing.assert_array_equal(h.X[:, 0], [0, 1, 0, np.nan])


@pytest.mark.parametrize(
    ("x", "shown"),
    [([1, 2, 1, 7], "7"), ([1, 2, 1, 7.5], "7.5"), (["1", "2", "1", "7"], "'7'"), ([1, "2", 1.0, 7], "7")],
)
def test_unmapped_values_keep_their_type(x, shown):
    cfg = one_feature_cfg(CATEGORY, values={"x": {1: "north", 2: "south"}})
    with pytest.raises(
        DataError,
        match=rf"^organisation o: column 'x' has unknown category {shown} \(1 rows\); allowed: north, south, other$",
    ):
        harmonise_x(x, cfg)


def test_unmapped_numbers_and_numeric_text_next_to_mapped_text():
    h = harmonise_x(["old", 30, "41", 50.5], one_feature_cfg({"type": "float"}, values={"x": {"old": 90}}))
    np.testing.assert_array_equal(h.X[:, 0], [90, 30, 41, 50.5])


def test_value_map_onto_null_is_missing():
    h = harmonise_x(
        ["N", "S", "gone", None], one_feature_cfg(CATEGORY, values={"x": {"N": "north", "S": "south", "gone": None}})
    )
    np.testing.assert_array_equal(h.X[:, 0], [0, 1, np.nan, np.nan])
    assert h.report["unknown_categories"] == {}


@pytest.mark.parametrize(
    ("x", "markers", "expected"),
    [
        ([5.0, "?", -9, "-9"], {"*": ["?"], "x": [-9]}, [5, np.nan, np.nan, np.nan]),
        ([-9.0, "n/a", 7, "7"], {"x": [-9, "n/a"]}, [np.nan, np.nan, 7, 7]),
        ([-9.0, -9.5, 7.0, np.nan], {"x": [-9]}, [np.nan, -9.5, 7, np.nan]),
        ([-9.0, -9.5, 7.0, 9.0], {"x": ["-9.5", "9.0"]}, [-9, np.nan, 7, 9]),
        ([-999, 12, 999, -999], {"*": ["-999"], "x": [999.0]}, [np.nan, 12, np.nan, np.nan]),
        (["-999", "12", "999.0", "NA"], {"*": ["NA", -999, 999]}, [np.nan, 12, 999, np.nan]),
    ],
)
def test_missing_markers_match_as_text(x, markers, expected):
    h = harmonise_x(x, one_feature_cfg({"type": "float"}, missing=markers))
    np.testing.assert_array_equal(h.X[:, 0], expected)
    assert h.report["missing_rate"]["x"] == float(np.isnan(expected).mean())


def test_empty_and_whitespace_text_is_missing():
    h = harmonise_x(["", " ", "\t\n", "3"], one_feature_cfg({"type": "float"}))
    np.testing.assert_array_equal(h.X[:, 0], [np.nan, np.nan, np.nan, 3])
    h = harmonise_x(["", "north", " ", "south"], one_feature_cfg(CATEGORY))
    np.testing.assert_array_equal(h.X[:, 0], [np.nan, 0, np.nan, 1])


def test_float_valued_integers_match_integer_keys_and_vocabulary():
    h = harmonise_x(np.array([1.0, 2.0, 2.0, 1.0]), one_feature_cfg(CATEGORY, values={"x": {1: "north", 2: "south"}}))
    np.testing.assert_array_equal(h.X[:, 0], [0, 1, 1, 0])
    h = harmonise_x(np.array([1.0, 2.0, np.nan, 2.0]), one_feature_cfg({"type": "category", "categories": ["1", "2"]}))
    np.testing.assert_array_equal(h.X[:, 0], [0, 1, np.nan, 1])


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (["yes", "No", " TRUE ", "f", "Y", "n", "1", "0", "t", "False"], [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]),
        ([1, 0, 1, 0], [1, 0, 1, 0]),
        ([1.0, 0.0, np.nan, 1.0], [1, 0, np.nan, 1]),
        ([True, False, None, True], [1, 0, np.nan, 1]),
        (np.array([True, False, False, True]), [1, 0, 0, 1]),
        (["yes", "?", "", "no"], [1, np.nan, np.nan, 0]),
    ],
)
def test_bools_from_many_spellings(x, expected):
    h = harmonise_x(x, one_feature_cfg({"type": "bool"}, missing={"*": ["?"]}))
    np.testing.assert_array_equal(h.X[:, 0], expected)


@pytest.mark.parametrize(
    ("x", "shown"), [(["yes", "maybe", "nope", None], "'maybe'"), ([1, 2, 0, 3], "2"), ([1.0, 0.5, 0, 3], "0.5")]
)
def test_not_a_bool_names_first_offending_value(x, shown):
    with pytest.raises(
        DataError,
        match=rf"^organisation o: column 'x' has value {shown} that is not a bool; allowed: 1/0, true/false, yes/no$",
    ):
        harmonise_x(x, one_feature_cfg({"type": "bool"}))


UNKNOWN = ["north", "Mars", "Venus", "Mars", None, "south"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("other", [0, 2, 2, 2, np.nan, 1]), ("missing", [0, np.nan, np.nan, np.nan, np.nan, 1])],
)
def test_unknown_categories_other_and_missing(policy, expected):
    h = harmonise_x(UNKNOWN, one_feature_cfg(CATEGORY, unknown_categories=policy))
    np.testing.assert_array_equal(h.X[:, 0], expected)
    assert h.report["unknown_categories"] == {"x": {"count": 3, "examples": ["Mars", "Venus"], "policy": policy}}
    assert h.report["problems"] == []


def test_unknown_categories_error_raises_or_is_collected():
    message = "organisation o: column 'x' has unknown category 'Mars' (3 rows); allowed: north, south, other"
    with pytest.raises(DataError, match=rf"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        harmonise_x(UNKNOWN, one_feature_cfg(CATEGORY))
    h = harmonise_x(UNKNOWN, one_feature_cfg(CATEGORY), collect=True)
    np.testing.assert_array_equal(h.X[:, 0], [0, np.nan, np.nan, np.nan, np.nan, 1])
    assert h.report["unknown_categories"] == {"x": {"count": 3, "examples": ["Mars", "Venus"], "policy": "error"}}
    assert h.report["problems"] == [message]


def test_unknown_category_examples_most_frequent_first_at_most_five():
    x = ["Zed", "Ann", "Zed", "Ann", "Bob", "north", "Cy", "Di", "Ed", "Ann"]
    h = harmonise_x(x, one_feature_cfg(CATEGORY, unknown_categories="missing"))
    assert h.report["unknown_categories"]["x"] == {
        "count": 9,
        "examples": ["Ann", "Zed", "Bob", "Cy", "Di"],
        "policy": "missing",
    }
    h = harmonise_x(
        [1, 2, 7, 7], one_feature_cfg({"type": "category", "categories": ["1", "2"]}, unknown_categories="missing")
    )
    np.testing.assert_array_equal(h.X[:, 0], [0, 1, np.nan, np.nan])
    assert h.report["unknown_categories"]["x"] == {"count": 2, "examples": [7], "policy": "missing"}


def test_unknown_category_message_shortens_a_long_vocabulary():
    cfg = one_feature_cfg({"type": "category", "categories": [f"c{i}" for i in range(25)]})
    with pytest.raises(
        DataError, match=r"has unknown category 'zz' \(1 rows\); allowed: c0, c1, c2, .*, c18, c19, \.\.\.$"
    ):
        harmonise_x(["c1", "zz"], cfg)


@pytest.mark.parametrize(
    ("x", "spec", "message"),
    [
        (
            ["40", "n/a", "x", "2"],
            {"type": "float"},
            r"^organisation o: column 'x' has non-numeric value 'n/a' \(2 rows\); map it under values: or mark it missing$",
        ),
        (
            ["nan", "1", "2", "3"],
            {"type": "float"},
            r"^organisation o: column 'x' has non-numeric value 'nan' \(1 rows\)",
        ),
        ([1, 1.5, 2.25, 3], {"type": "int"}, r"^organisation o: column 'x' is declared int but has value \S*1\.5\b"),
        (
            ["1", "2.5", "3", "4"],
            {"type": "int"},
            r"^organisation o: column 'x' is declared int but has value \S*2\.5\b",
        ),
        (
            ["2020-01-02", "yesterday", "", None],
            {"type": "date"},
            r"^organisation o: column 'x' has value 'yesterday' that is not a date in format ISO 8601 \(YYYY-MM-DD\) \(1 rows\); "
            r"set dates: \{x: FORMAT\} or mark it missing$",
        ),
    ],
)
def test_feature_errors_name_first_offending_value(x, spec, message):
    with pytest.raises(DataError, match=message):
        harmonise_x(x, one_feature_cfg(spec))


@pytest.mark.parametrize(
    ("y", "cfg_kw", "message"),
    [
        (
            ["a", "b", "c", "d"],
            {"objective": "multiclass", "classes": ["a", "b", "c"]},
            r"^organisation o: column 'y' has unknown label value 'd' \(1 rows\); allowed: a, b, c$",
        ),
        (
            [1, 2, -1, -3],
            {"objective": "poisson"},
            r"^organisation o: label 'y' has negative value \S*-1\.0\b.*; objective poisson needs labels >= 0$",
        ),
        (
            ["1", "x", "3", "y"],
            {"objective": "regression"},
            r"^organisation o: column 'y' has non-numeric value 'x' \(2 rows\); map it under values: or mark it missing$",
        ),
        (
            [1.0, 0.0, 2.0, 1],
            {},
            r"^organisation o: label 'y' is not binary: value 2.0 \(1 rows\); allowed: 0, 1, true/false, yes/no \(or declare classes: \[negative, positive\]\)$",
        ),
        (
            ["pos", "neg", "?", "pos"],
            {"values": {"y": {"pos": 1, "neg": 0}}, "missing": {"y": ["?"]}},
            r"^organisation o: label 'y' is missing in 1 rows \(first at row 2\); drop those rows or map them under values:$",
        ),
        (["1", "0", "0", "1"], {"scale": {"y": 2}}, r"^organisation o: label 'y' is not binary: value 2.0 \(2 rows\)"),
    ],
)
def test_label_errors(y, cfg_kw, message):
    with pytest.raises(DataError, match=message):
        harmonise_x([1, 2, 3, 4], one_feature_cfg({"type": "float"}, **cfg_kw), y=y)


@pytest.mark.parametrize(
    ("y", "cfg_kw", "expected"),
    [
        (["Yes", "no", " TRUE", 0], {}, [1, 0, 1, 0]),
        (["1", "2", "3", "4"], {"objective": "regression", "scale": {"y": 2}, "offset": {"y": 1}}, [3, 5, 7, 9]),
        (["b", "a", "c", "a"], {"objective": "multiclass", "classes": ["a", "b", "c"]}, [1, 0, 2, 0]),
    ],
)
def test_label_encoding(y, cfg_kw, expected):
    h = harmonise_x([1, 2, 3, 4], one_feature_cfg({"type": "float"}, **cfg_kw), y=y)
    np.testing.assert_array_equal(h.y, expected)


def test_dates_with_markers_and_blank_text():
    h = harmonise_x(["2020-01-02", "?", "", None], one_feature_cfg({"type": "date"}, missing={"*": ["?"]}))
    np.testing.assert_array_equal(h.X[:, 0], [18263, np.nan, np.nan, np.nan])


def test_collect_turns_offending_values_missing_and_lists_each_violation():
    h = harmonise_x(["1", "x", "3", "4.5"], one_feature_cfg({"type": "int"}), collect=True)
    np.testing.assert_array_equal(h.X[:, 0], [1, np.nan, 3, 4.5])
    assert len(h.report["problems"]) == 2
    assert h.report["problems"][0] == (
        "organisation o: column 'x' has non-numeric value 'x' (1 rows); map it under values: or mark it missing"
    )
    assert h.report["problems"][1].startswith("organisation o: column 'x' is declared int but has value")
    h = harmonise_x(["yes", "maybe", None, "no"], one_feature_cfg({"type": "bool"}), collect=True)
    np.testing.assert_array_equal(h.X[:, 0], [1, np.nan, np.nan, 0])
    assert h.report["problems"] == [
        "organisation o: column 'x' has value 'maybe' that is not a bool; allowed: 1/0, true/false, yes/no"
    ]
