"""Column names: words, declared units, similarity."""

from __future__ import annotations

import pytest

from fedmine.schema.names import declared_unit, name_similarity, read_name, same_name


@pytest.mark.parametrize(
    ("name", "words", "annotation"),
    [
        ("Age (years)", ("age",), ("years",)),
        ("AGE_YRS", ("age",), ("yrs",)),
        ("customerAge", ("customer", "age"), ()),
        ("Call Duration (min)", ("call", "duration"), ("min",)),
        ("BALANCE_EUR", ("balance",), ("eur",)),
        ("Credit Limit (NT$ thousands)", ("credit", "limit"), ("nt", "thousands")),
        ("EURIBOR_3M", ("euribor", "3m"), ()),
        ("Last Contact Month", ("previous", "contact", "month"), ()),  # a singular calendar word stays a word
        ("Housing Loan?", ("housing", "loan"), ()),
        ("Qtr", ("quarter",), ()),
        ("Has Credit in Default", ("credit", "default"), ()),
    ],
)
def test_read_name(name, words, annotation):
    read = read_name(name)
    assert read.words == words and read.annotation == annotation


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("Call Duration (min)", "minutes"),
        ("DURATION_SEC", "seconds"),
        ("Duration (s)", "seconds"),
        ("Fresh (k m.u.)", "thousands"),
        ("Credit Limit (NT$ thousands)", "thousands"),
        ("Euribor 3M (%)", "%"),
        ("Age (years)", "years"),
        ("BALANCE_EUR", None),  # a currency: no conversion in the unit table
        ("Late Payments (count)", None),
        ("Last Contact Month", None),
    ],
)
def test_declared_unit(name, unit):
    assert declared_unit(name) == unit


def test_same_name_ignores_case_punctuation_units_and_synonyms():
    assert same_name("Marital Status", "marital_status")
    assert same_name("Age (years)", "age")
    assert same_name("GENDER", "sex")
    assert same_name("Previous Result", "previous_outcome")
    assert not same_name("Any Loan", "personal_loan")
    assert not same_name("Month", "contact_month")


@pytest.mark.parametrize(
    ("a", "b", "low"),
    [
        ("pdays", "days_since_previous", 0.8),
        ("poutcome", "previous_outcome", 0.8),
        ("housing", "housing_loan", 0.8),
        ("customerAge", "customer_age", 1.0),
        ("CPI", "consumer_price_index", 0.8),
        ("Days Since Last Contact", "days_since_previous", 0.9),
        ("emp.var.rate", "employment_variation_rate", 0.8),
        ("euribor3m", "euribor_3m", 1.0),
    ],
)
def test_alike_names(a, b, low):
    assert name_similarity(a, b) >= low


@pytest.mark.parametrize(
    ("a", "b", "high"),
    [
        ("day_of_week", "balance", 0.1),
        ("Contacted Before", "credit_default", 0.1),
        ("CCI", "consumer_price_index", 0.1),  # initials must fit every word
        ("Day", "days_since_previous", 0.7),  # one word of three: never alike enough alone
        ("Term Deposit", "subscribed", 0.1),
        ("nr.employed", "balance", 0.1),
    ],
)
def test_unlike_names(a, b, high):
    assert name_similarity(a, b) < high
