"""Source values onto a vocabulary; two-valued columns as booleans."""

from __future__ import annotations

import pytest

from fedmine.schema.vocabulary import calendar, match_value, match_vocabulary, norm_value, read_flag

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
EDUCATION = ["graduate school", "university", "high school", "others"]


@pytest.mark.parametrize(
    ("value", "vocab", "target", "how"),
    [
        ("ADMIN.", ["admin.", "blue-collar"], "admin.", "case"),
        ("Self-Employed", ["self-employed", "student"], "self-employed", "case"),
        ("March", MONTHS, "mar", "month name"),
        ("SEPT", MONTHS, "sep", "month name"),
        ("3", MONTHS, "mar", "month number"),
        ("5", ["mon", "tue", "wed", "thu", "fri"], "fri", "weekday number"),
        ("Tuesday", ["mon", "tue", "wed", "thu", "fri"], "tue", "weekday name"),
        ("PRIMARY SCHOOL", ["primary", "secondary", "tertiary"], "primary", "contains"),
        ("OTHER REGION", ["lisbon", "oporto", "other"], "other", "contains"),
        ("M", ["male", "female"], "male", "prefix"),
        ("F", ["male", "female"], "female", "prefix"),
        ("Other", ["married", "single", "others"], "others", "prefix"),
        ("univercity", EDUCATION, "university", "spelling"),
    ],
)
def test_match_value(value, vocab, target, how):
    assert match_value(value, vocab=vocab) == (target, how)


@pytest.mark.parametrize(
    ("value", "vocab", "numeric"),
    [
        ("basic.4y", ["primary", "secondary", "tertiary"], False),
        ("13", MONTHS, True),  # no thirteenth month
        ("6", ["mon", "tue", "wed", "thu", "fri"], True),  # Saturday is not in the vocabulary
        ("2", ["male", "female"], True),  # codes of named categories are a person's to map
        ("S", ["single", "secondary school"], False),  # two entries start with it
    ],
)
def test_no_match(value, vocab, numeric):
    assert match_value(value, vocab=vocab, numeric=numeric) == (None, "none")


def test_match_vocabulary_coverage_and_unresolved():
    m = match_vocabulary({"ADMIN.": 6, "admin.": 2, "basic.4y": 2}, vocab=["admin.", "student"])
    assert m.mapping == {"ADMIN.": "admin."}
    assert m.unresolved == ["basic.4y"]
    assert m.coverage == pytest.approx(0.8)


def test_calendar_and_norm_value():
    assert calendar(MONTHS) == "month"
    assert calendar(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]) == "weekday"
    assert calendar(EDUCATION) is None
    assert norm_value(1.0) == "1" and norm_value("2.0") == "2" and norm_value("Blue-Collar") == "bluecollar"


@pytest.mark.parametrize(
    ("values", "mapping", "how", "subject"),
    [
        ({"Yes": 3, "No": 5}, {"Yes": True, "No": False}, "words", ""),
        ({"0": 7, "1": 3}, {"0": False, "1": True}, "words", ""),
        ({"No": 4}, {"No": False}, "words", ""),
        (
            {"No housing loan": 4, "Housing loan": 5},
            {"Housing loan": True, "No housing loan": False},
            "negation",
            "housing loan",
        ),
        (
            {"Not subscribed": 9, "Subscribed": 1},
            {"Subscribed": True, "Not subscribed": False},
            "negation",
            "subscribed",
        ),
        ({"Non-smoker": 5, "Smoker": 3}, {"Smoker": True, "Non-smoker": False}, "negation", "smoker"),
        (
            {"Retail": 1, "Hotel/Restaurant/Cafe": 2},
            {"Retail": True, "Hotel/Restaurant/Cafe": False},
            "named",
            "retail",
        ),
        ({"North": 1, "South": 2}, {}, "unknown", ""),
    ],
)
def test_read_flag(values, mapping, how, subject):
    flag = read_flag(values, name="retail")
    assert flag is not None
    assert (flag.mapping, flag.how, flag.subject) == (mapping, how, subject)


def test_read_flag_needs_two_values():
    assert read_flag({"a": 1, "b": 1, "c": 1}) is None
    assert read_flag({"Lisbon": 3}) is None
