"""LightGBM model text: loads, predicts what the engine predicts, explains itself."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from fedmine.gbdt import predict, predict_raw, to_lightgbm_text, train_pooled
from fedmine.gbdt.model import Tree


def _data(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    X[rng.random(n) < 0.15, 0] = np.nan
    X[:, 2] = rng.integers(0, 12, n).astype(float)
    X[rng.random(n) < 0.05, 2] = np.nan
    lin = X[:, 1] + np.nan_to_num(X[:, 0], nan=-1.0) + np.isin(X[:, 2], [0, 3, 5, 11]) * 1.5
    return X, lin, rng


def _targets(objective, lin, rng):
    n = lin.size
    return {
        "binary": (lin + rng.normal(size=n) > 0.5).astype(float),
        "multiclass": np.digitize(lin, [-0.5, 0.5, 1.5]).astype(float),
        "regression": lin + rng.normal(size=n),
        "poisson": rng.poisson(np.exp(0.3 * lin)).astype(float),
        "tweedie": rng.poisson(np.exp(0.3 * lin)) * rng.gamma(2.0, 1.0, n),
    }[objective]


def _probe(X, rng):
    """Training rows plus values LightGBM must treat as we do."""
    extra = np.array(
        [
            [np.nan, np.nan, np.nan, np.nan],
            [1e30, -1e30, -0.5, 0.0],  # category int(-0.5) = 0
            [0.0, 0.0, -3.0, 0.0],  # negative category: right
            [0.0, 0.0, 200.0, 0.0],  # unseen category beyond the bitset: right
            [0.0, 0.0, 4.7, 0.0],  # truncation to 4
        ]
    )
    return np.vstack([X, extra])


@pytest.mark.parametrize("objective", ["binary", "multiclass", "regression", "poisson", "tweedie"])
def test_lightgbm_predicts_like_the_engine(objective):
    X, lin, rng = _data()
    y = _targets(objective, lin, rng)
    extra = {"num_class": 4} if objective == "multiclass" else {}
    params = dict(objective=objective, num_boost_round=8, num_leaves=10, min_data_per_group=20, cat_smooth=2, **extra)
    model = train_pooled(X, y, params, categorical=[2], feature_names=["a b", "c", "cat-col", "d"])
    text = to_lightgbm_text(model)
    assert f"objective={model.objective_line}" in text
    assert "feature_names=a_b c cat_col d" in text
    infos = next(line for line in text.splitlines() if line.startswith("feature_infos=")).split("=")[1].split()
    lo, hi = (float(v) for v in infos[1].strip("[]").split(":"))  # numeric: [min:max]
    assert (lo, hi) == (X[:, 1].min(), X[:, 1].max())
    assert infos[2] == ":".join(str(c) for c in range(12))  # categorical: its categories
    assert any(t.cat_bitsets.shape[0] for t in model.trees)
    booster = lgb.Booster(model_str=text)
    Xp = _probe(X, rng)
    k = model.n_trees_per_round
    ours = predict_raw(model.trees, Xp, n_trees_per_round=k, init_scores=model.init_scores)
    theirs = booster.predict(Xp, raw_score=True)
    theirs = theirs.T if theirs.ndim == 2 else theirs[None, :]
    assert np.abs(ours - theirs).max() < 1e-9
    # transformed outputs
    np.testing.assert_allclose(booster.predict(Xp), predict(model, Xp), rtol=1e-9, atol=1e-12)
    # TreeSHAP: contributions of each class sum to its raw score
    contrib = booster.predict(Xp, pred_contrib=True).reshape(Xp.shape[0], k, X.shape[1] + 1)
    assert np.abs(contrib.sum(axis=2).T - ours).max() < 1e-9


def test_decision_type_bits():
    X, lin, rng = _data()
    y = _targets("binary", lin, rng)
    model = train_pooled(
        X,
        y,
        dict(objective="binary", num_boost_round=3, num_leaves=8, min_data_per_group=20, cat_smooth=2),
        categorical=[2],
    )
    text = to_lightgbm_text(model)
    kinds = set()
    for line in text.splitlines():
        if line.startswith("decision_type="):
            kinds |= {int(v) for v in line.split("=")[1].split()}
    # 8 = NaN missing type; +2 default left; +1 categorical
    assert kinds <= {8, 10, 9} and 9 in kinds and kinds & {8, 10}


def test_single_leaf_trees_export():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 2))
    y = rng.normal(size=30)
    model = train_pooled(X, y, dict(objective="regression", num_boost_round=3, min_data_in_leaf=20))
    assert [t.n_leaves for t in model.trees] == [1]
    booster = lgb.Booster(model_str=to_lightgbm_text(model))
    np.testing.assert_allclose(booster.predict(X), np.full(30, y.mean()), rtol=0, atol=1e-12)
    tree = Tree.single_leaf(0.25, 7, 1.5)
    from fedmine.gbdt.export import tree_to_text

    assert "num_leaves=1" in tree_to_text(tree, 0) and "leaf_value=0.25" in tree_to_text(tree, 0)


def test_export_is_deterministic_text():
    X, lin, rng = _data()
    y = _targets("regression", lin, rng)
    params = dict(objective="regression", num_boost_round=4)
    a = to_lightgbm_text(train_pooled(X, y, params, categorical=[2]))
    b = to_lightgbm_text(train_pooled(X, y, params, categorical=[2]))
    assert a == b and "tree_sizes" not in a and a.rstrip().endswith("pandas_categorical:null")


def test_degenerate_inputs_train_and_export():
    rng = np.random.default_rng(2)
    n = 300
    X = rng.normal(size=(n, 4))
    X[:, 1] = np.nan  # no value at all
    X[:, 2] = 3.0  # constant
    y = (X[:, 0] > 0).astype(float)
    for labels, objective in ((y, "binary"), (np.zeros(n), "binary"), (X[:, 0] * 2, "regression")):
        model = train_pooled(X, labels, dict(objective=objective, num_boost_round=4))
        booster = lgb.Booster(model_str=to_lightgbm_text(model))
        ours = predict_raw(model.trees, X, init_scores=model.init_scores)[0]
        assert np.abs(booster.predict(X, raw_score=True) - ours).max() < 1e-9
        assert all(t.nodes["feature"][t.nodes["is_leaf"] == 0].tolist().count(1) == 0 for t in model.trees)
