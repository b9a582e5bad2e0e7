"""An organisation's SHAP values: LightGBM's pred_contrib, fixed-point sums, the model it accepts, its plots."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from fedmine.errors import PartyError
from fedmine.party import shap_values
from fedmine.party.organisation import Party
from tests.coordinator.test_strategies import make_data

FEATURES = ["a", "b", "c"]
SPECS = [
    {"name": "a", "type": "float", "categories": None},
    {"name": "b", "type": "float", "categories": None},
    {"name": "c", "type": "category", "categories": ["x", "y", "z"]},
]


def lightgbm_model(num_class: int = 1) -> str:
    d = make_data(400, 5)
    y = d.y_train if num_class == 1 else (d.X_train[:, 2]).astype(int)
    params = {"objective": "binary" if num_class == 1 else "multiclass", "num_leaves": 7, "verbosity": -1}
    if num_class > 1:
        params["num_class"] = num_class
    ds = lgb.Dataset(d.X_train, y, feature_name=FEATURES, categorical_feature=[2])
    return lgb.train(params, ds, num_boost_round=8).model_to_string()


def test_contributions_sum_to_the_raw_score_and_keep_each_output():
    text = lightgbm_model(num_class=3)
    booster = lgb.Booster(model_str=text)
    d = make_data(100, 9)
    contrib = shap_values.contributions(booster, [d.X_train, d.X_valid])
    assert contrib.shape == (100, 3, 4)
    raw = booster.predict(np.vstack([d.X_train, d.X_valid]), raw_score=True)
    np.testing.assert_allclose(contrib.sum(axis=2), raw, atol=1e-9)


def test_abs_sums_are_rounded_per_row_then_summed_with_the_count_last():
    contrib = np.array([[[0.5, -0.25, 9.0]], [[-0.126, 0.374, -9.0]]])  # 2 rows, 1 output, 2 features + bias
    sums = shap_values.abs_sums(contrib, 4.0)
    # |0.5|*4 = 2, |-0.126|*4 = 0.504 -> 1; |-0.25|*4 = 1, |0.374|*4 = 1.496 -> 1; the bias is left out
    assert sums.dtype == np.int64 and sums.tolist() == [[3, 2, 2]]


def test_a_model_of_other_features_or_no_model_is_refused():
    text = lightgbm_model()
    with pytest.raises(PartyError, match=r"party bank: explain refused: the model's features \['a', 'b', 'c'\]"):
        shap_values.load_model(text, org="bank", feature_names=["a", "b", "d"])
    with pytest.raises(PartyError, match="party bank: explain refused: the model is not LightGBM model text"):
        shap_values.load_model("rm -rf /", org="bank", feature_names=FEATURES)


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), 2.0**53, "x"])
def test_a_scale_out_of_range_is_refused(scale):
    with pytest.raises(PartyError, match=r"party bank: shap_sums refused: scale must be in \(0, 2\*\*52\]"):
        shap_values.check_scale(scale, org="bank")


def party(tmp_path=None) -> Party:
    p = Party("bank", make_data(200, 3), objective="binary", num_class=1, feature_names=FEATURES, categorical=[2])
    p.output_dir = tmp_path
    return p


def test_the_party_writes_its_plots_into_its_own_folder_and_answers_nothing(tmp_path):
    p = party(tmp_path)
    text = lightgbm_model()
    assert p.call("shap_plots", text, np.array([2, 0, 1]), SPECS, ["raw score"]) is None
    written = sorted(f.name for f in (tmp_path / "explain").iterdir())
    assert written == [
        "dependence_a.png",
        "dependence_b.png",
        "dependence_c.png",
        "mean_abs_shap.csv",
        "summary.png",
    ]
    csv = (tmp_path / "explain" / "mean_abs_shap.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in csv[1:]] == ["c", "a", "b"]  # the federation's order
    booster = lgb.Booster(model_str=text)
    X = np.vstack([p._data.X_train, p._data.X_valid])
    own = np.abs(booster.predict(X, pred_contrib=True)[:, :3]).mean(axis=0)
    assert float(csv[2].split(",")[2]) == pytest.approx(own[0], rel=1e-9)


def test_plots_are_refused_without_a_folder_or_with_a_bad_order(tmp_path):
    text = lightgbm_model()
    with pytest.raises(PartyError, match=r"party bank: shap_plots refused: this party has no output folder"):
        party().call("shap_plots", text, [0, 1, 2], SPECS, ["raw score"])
    with pytest.raises(PartyError, match=r"shap_plots refused: order \[0, 0, 1\] is not a permutation"):
        party(tmp_path).call("shap_plots", text, [0, 0, 1], SPECS, ["raw score"])
    with pytest.raises(PartyError, match=r"shap_plots refused: features \['a', 'b'\] are not this party's"):
        party(tmp_path).call("shap_plots", text, [0, 1, 2], SPECS[:2], ["raw score"])
