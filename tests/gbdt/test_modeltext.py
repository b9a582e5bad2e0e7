"""LightGBM's trees read into engine records predict exactly what LightGBM predicts, and export back."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from fedmine.errors import DataError
from fedmine.gbdt.dtypes import MISSING_NAN, MISSING_NONE, MISSING_ZERO
from fedmine.gbdt.export import to_lightgbm_text
from fedmine.gbdt.model import Model
from fedmine.gbdt.modeltext import read_tree, read_trees, tree_blocks
from fedmine.gbdt.predictor import predict_raw, predict_raw_numpy


def rows(n: int, seed: int, *, nan_in_train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    X[:, 2] = rng.integers(0, 5, n)  # categorical codes
    X[rng.random(n) < 0.3, 3] = 0.0  # many exact zeros
    if nan_in_train:
        X[rng.random(n) < 0.15, 0] = np.nan
        X[rng.random(n) < 0.1, 2] = np.nan
    y = ((X[:, 1] + (X[:, 2] == 1) - (X[:, 3] == 0) + np.nan_to_num(X[:, 0])) > 0.2).astype(float)
    return X, y


def scoring_rows(n: int = 2000) -> np.ndarray:
    """Rows with every kind of value a split can meet: NaN, zeros, tiny values, negative and unseen codes."""
    X, _ = rows(n, 99)
    rng = np.random.default_rng(7)
    for j in range(4):
        X[rng.random(n) < 0.1, j] = np.nan
    X[rng.random(n) < 0.05, 3] = 1e-40
    X[rng.random(n) < 0.05, 2] = rng.choice([-1.0, 7.0, 300.0, 2.5])
    return X


def booster(X, y, **params) -> lgb.Booster:
    p = {
        "objective": "binary",
        "num_leaves": 7,
        "min_data_in_leaf": 5,
        "verbosity": -1,
        "deterministic": True,
        "num_threads": 1,
        **params,
    }
    return lgb.train(p, lgb.Dataset(X, y, categorical_feature=[2], free_raw_data=False), num_boost_round=8)


def assert_predicts_as_lightgbm(b: lgb.Booster, n_class: int = 1) -> None:
    trees = read_trees(b.model_to_string())
    X = scoring_rows()
    expected = b.predict(X, raw_score=True)
    expected = expected.reshape(len(X), n_class).T
    np.testing.assert_array_equal(predict_raw(trees, X, n_trees_per_round=n_class), expected)
    np.testing.assert_array_equal(predict_raw_numpy(trees, X, n_trees_per_round=n_class), expected)


@pytest.mark.parametrize(
    "params",
    [{}, {"zero_as_missing": True}, {"use_missing": False}],
    ids=["nan-missing", "zero-as-missing", "no-missing"],
)
def test_trees_read_from_lightgbm_predict_bit_for_bit(params):
    X, y = rows(1500, 0)
    assert_predicts_as_lightgbm(booster(X, y, **params))


def test_trees_without_nan_in_training_treat_nan_as_zero():
    X, y = rows(1500, 1, nan_in_train=False)
    b = booster(X, y)
    rules = {int(r) for t in read_trees(b.model_to_string()) for r in t.nodes["missing"][t.nodes["is_leaf"] == 0]}
    assert MISSING_NONE in rules
    assert_predicts_as_lightgbm(b)


def test_zero_as_missing_is_read_as_the_zero_rule():
    X, y = rows(1500, 2)
    trees = read_trees(booster(X, y, zero_as_missing=True).model_to_string())
    numeric = [t.nodes[(t.nodes["is_leaf"] == 0) & (t.nodes["is_categorical"] == 0)] for t in trees]
    assert {int(r) for nd in numeric for r in nd["missing"]} <= {MISSING_ZERO, MISSING_NONE}
    assert any(int(r) == MISSING_ZERO for nd in numeric for r in nd["missing"])


def test_multiclass_and_regression_trees_predict_bit_for_bit():
    X, _ = rows(1500, 3)
    y3 = (np.nan_to_num(X[:, 1]) > 0.5).astype(float) + (X[:, 2] == 1)
    assert_predicts_as_lightgbm(booster(X, y3, objective="multiclass", num_class=3), n_class=3)
    assert_predicts_as_lightgbm(booster(X, X[:, 1] * 2 + np.nan_to_num(X[:, 0]), objective="regression"))


def test_records_keep_the_tree_shape_children_after_parents():
    X, y = rows(1500, 4)
    for tree in read_trees(booster(X, y).model_to_string()):
        nd = tree.nodes
        inner = np.flatnonzero(nd["is_leaf"] == 0)
        assert np.all(nd["left"][inner] > inner) and np.all(nd["right"][inner] > inner)
        assert tree.n_leaves == inner.size + 1
        for i in inner:  # counts add up, as LightGBM wrote them
            assert nd["count"][i] == nd["count"][nd["left"][i]] + nd["count"][nd["right"][i]]
        assert set(nd["missing"][inner]) <= {MISSING_NAN, MISSING_NONE, MISSING_ZERO}


def test_export_writes_back_what_lightgbm_predicts_and_explains():
    X, y = rows(1500, 5)
    b = booster(X, y)
    trees = read_trees(b.model_to_string())
    model = Model(
        trees=trees,
        init_scores=np.zeros(1),
        objective="binary",
        objective_line="binary sigmoid:1",
        n_trees_per_round=1,
        n_features=4,
        feature_names=["a", "b", "c", "d"],
        categorical=np.array([False, False, True, False]),
        feature_infos=["none"] * 4,
        params={"learning_rate": 0.1},
        best_iteration=8,
        history=[],
    )
    again = lgb.Booster(model_str=to_lightgbm_text(model))
    Xs = scoring_rows()
    np.testing.assert_array_equal(again.predict(Xs, raw_score=True), b.predict(Xs, raw_score=True))
    contrib = again.predict(Xs, pred_contrib=True)
    np.testing.assert_allclose(contrib.sum(axis=1), again.predict(Xs, raw_score=True), atol=1e-9)
    assert [read_tree(blk).equal(t) for blk, t in zip(tree_blocks(to_lightgbm_text(model)), trees)] == [True] * 8


def test_a_single_leaf_tree_and_bad_blocks():
    t = read_tree("num_leaves=1\nnum_cat=0\nleaf_value=0.25\nleaf_count=10\nis_linear=0\nshrinkage=1")
    assert t.n_leaves == 1 and t.nodes[0]["value"] == 0.25 and t.nodes[0]["count"] == 10
    with pytest.raises(DataError, match="LightGBM tree: linear trees are not supported"):
        read_tree("num_leaves=1\nleaf_value=0\nis_linear=1")
    with pytest.raises(DataError, match="LightGBM tree: leaf_value has 1 values, expected 2"):
        read_tree(
            "num_leaves=2\nsplit_feature=0\nsplit_gain=1\nthreshold=0.5\ndecision_type=2\nleft_child=-1\n"
            "right_child=-2\nleaf_value=0\ninternal_value=0"
        )
