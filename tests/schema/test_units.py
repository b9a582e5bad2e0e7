"""The unit table: conversions within a dimension, substance factors, one-line errors."""

from __future__ import annotations

import pytest

from fedmine.schema.units import UnitError, conversion, lookup


@pytest.mark.parametrize(
    ("source", "target", "quantity", "value", "expected"),
    [
        ("mmol/L", "mg/dL", "glucose", 5.0, 90.08),
        ("mg/dL", "mmol/L", "glucose", 90.08, 5.0),
        ("mmol/L", "mg/dL", "cholesterol", 5.0, 193.35),
        ("C", "F", None, 100.0, 212.0),
        ("°F", "celsius", None, 32.0, 0.0),
        ("K", "C", None, 273.15, 0.0),
        ("thousands", "units", None, 41.5, 41500.0),
        ("months", "years", None, 30.0, 2.5),
        ("monthly", "yearly", None, 2500.0, 30000.0),
        ("%", "fraction", None, 12.5, 0.125),
        ("lb", "kg", None, 100.0, 45.359237),
    ],
)
def test_conversions(source, target, quantity, value, expected):
    scale, offset = conversion(source, target, quantity=quantity)
    assert value * scale + offset == pytest.approx(expected)


def test_same_unit_is_identity():
    assert conversion("years", "yr") == (1.0, 0.0)


@pytest.mark.parametrize(
    ("source", "target", "quantity", "message"),
    [
        ("furlongs", "m", None, r"unknown unit 'furlongs'; known: C, F, K, units, "),
        ("kg", "m", None, r"cannot convert kg \(mass\) to m \(length\); units of length: m, cm, mm, km, in, ft"),
        (
            "mmol/L",
            "mg/dL",
            "sodium",
            r"mmol/L -> mg/dL depends on the substance; set the feature's quantity to one of: cholesterol, glucose, triglycerides \(got 'sodium'\)",
        ),
    ],
)
def test_errors(source, target, quantity, message):
    with pytest.raises(UnitError, match=message):
        conversion(source, target, quantity=quantity)


def test_lookup_aliases():
    assert lookup(" Celsius ").name == "C"
    assert lookup("per month").name == "monthly"
