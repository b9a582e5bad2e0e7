"""Mapping suggestions: the 2014 release joins a federation that knows the 2012 release."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pandas as pd
import pytest
import yaml

from fedmine.config import FeatureSpec, config_from_dict
from fedmine.errors import ConfigError
from fedmine.schema.names import name_similarity
from fedmine.schema.suggest import Candidate, assign, choose, score_pair, suggest_mapping, summarise_column
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


def _member(tmp_path, frame: pd.DataFrame, name: str = "newcomer"):
    raw = bank_raw()
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    raw["organisations"][name] = {"source": str(path)}
    return config_from_dict(raw)


def _bank_2012() -> pd.DataFrame:
    return pd.read_csv(BANK["organisations"]["bank"]["source"], sep=";")


def test_an_exact_name_outranks_any_other_column(tmp_path):
    frame = _bank_2012()
    # campaign_contacts is named as the feature but spread less like the federation's than campaign itself
    frame["campaign_contacts"] = frame["previous"] + 1
    s = suggest_mapping(_member(tmp_path, frame), "newcomer")
    chosen = {c.feature: c.column for c in s.matches}
    assert chosen["campaign_contacts"] == "campaign_contacts"
    assert "campaign" not in s.rename
    better = next(c for c in s.runners_up if c.column == "campaign")
    assert better.feature == "campaign_contacts"


def test_a_yes_no_feature_at_the_end_is_not_taken_for_a_missing_label(tmp_path):
    frame = _bank_2012().drop(columns=["y"])
    frame["housing"] = frame.pop("housing")  # the last column, where labels usually are
    s = suggest_mapping(_member(tmp_path, frame), "newcomer")
    assert s.rename["housing"] == "housing_loan"
    assert "subscribed" in s.unmatched_features
    assert "subscribed" not in s.rename.values()


def test_a_flag_named_like_another_flag_is_left_out(tmp_path):
    frame = _bank_2012()
    frame["any_loan"] = np.where((frame["housing"] == "yes") | (frame["loan"] == "yes"), "yes", "no")
    frame = frame.rename(columns={"housing": "housing_loan", "loan": "personal_loan"})
    s = suggest_mapping(_member(tmp_path, frame), "newcomer")
    assert "any_loan" not in s.rename and "any_loan" in s.unmatched_columns
    assert {c.column for c in s.matches} >= {"housing_loan", "personal_loan"}


def test_a_count_column_fits_a_coded_category_badly():
    spec = FeatureSpec(type="category", categories=["1", "2", "3", "4"])
    fed = {"categories": {"1": 10, "2": 60, "3": 20, "4": 10}}
    quarters = summarise_column("Qtr", pd.Series([2] * 60 + [1] * 10 + [3] * 20 + [4] * 10))
    counts = summarise_column("Contacts", pd.Series([1] * 40 + [2] * 28 + [3] * 12 + [4] * 8 + list(range(5, 17))))
    q = score_pair(quarters, feature="contact_quarter", spec=spec, fed=fed)
    c = score_pair(counts, feature="contact_quarter", spec=spec, fed=fed)
    assert q is not None and c is not None
    assert q.fit == 1.0 and q.dist == pytest.approx(1.0)
    assert c.fit < 0.5 and c.score < q.score


def test_values_are_proposed_for_months_as_numbers_and_flags_as_words(tmp_path):
    frame = _bank_2012()
    months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    frame["month"] = frame["month"].map({m: i + 1 for i, m in enumerate(months)})
    frame["loan"] = frame["loan"].map({"yes": "Personal loan", "no": "No personal loan"})
    frame["job"] = frame["job"].str.upper()
    s = suggest_mapping(_member(tmp_path, frame), "newcomer")
    assert s.values["contact_month"][5] == "may" and len(s.values["contact_month"]) == 12
    assert s.values["personal_loan"] == {"Personal loan": True, "No personal loan": False}
    assert s.values["job"]["BLUE-COLLAR"] == "blue-collar"
    assert "job" not in s.rename  # upper-case values, but the column is named as the feature


def test_assign_finds_the_largest_total():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(3)
    for shape in [(1, 1), (3, 3), (4, 7), (7, 4), (12, 15), (20, 9)]:
        score = rng.random(shape)
        score[rng.random(shape) < 0.3] = 0.0
        pairs = assign(score)
        rows, cols = linear_sum_assignment(score, maximize=True)
        assert len(pairs) == min(shape)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        assert sum(score[i, j] for i, j in pairs) == pytest.approx(score[rows, cols].sum())


def test_assign_against_every_permutation():
    rng = np.random.default_rng(4)
    for _ in range(20):
        score = rng.integers(0, 4, size=(4, 4)).astype(float)
        best = max(sum(score[i, p[i]] for i in range(4)) for p in permutations(range(4)))
        assert sum(score[i, j] for i, j in assign(score)) == best


def test_assignment_beats_taking_the_best_pair_first():
    def cand(column, feature, name):
        return Candidate(column, feature, name=name, fit=1.0, dist=1.0)

    # greedy takes a -> x (0.96) and leaves b -> y below the threshold; the assignment takes a -> y and b -> x
    candidates = [cand("a", "x", 0.95), cand("a", "y", 0.9), cand("b", "x", 0.85), cand("b", "y", 0.3)]
    chosen = {(c.column, c.feature) for c in choose(candidates, ["a", "b"], ["x", "y"])}
    assert chosen == {("a", "y"), ("b", "x")}


def test_an_organisation_without_a_source_is_an_input_error():
    raw = bank_raw()
    raw["organisations"]["remote"] = {"endpoint": "grpc+tls://localhost:50999"}
    with pytest.raises(
        ConfigError,
        match=r"^organisations\.remote\.source: not set; suggest reads the new organisation's source \(run it where the rows are\)$",
    ):
        suggest_mapping(config_from_dict(raw), "remote")


def test_columns_that_are_no_feature_get_no_proposal():
    from tests.schema.suggest_pairs import unrelated_table

    specs, frame = unrelated_table(seed=1, text_columns=12, numeric_columns=12, features=16, rows=300)
    summaries = [summarise_column(str(c), frame[c]) for c in frame.columns]
    candidates = [
        c
        for s in summaries
        for f, spec in specs.items()
        if (c := score_pair(s, feature=f, spec=spec, fed={})) is not None
    ]
    assert len(candidates) > 100
    assert choose(candidates, list(frame.columns), list(specs)) == []
