"""The engine against lightgbm.train on the same rows (HIGGS subset, tests/data/lightgbm)."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from fedmine.gbdt import predict_raw, train_partitioned, train_pooled

DATA = Path(__file__).resolve().parents[1] / "data" / "lightgbm"


def _load(name):
    d = np.loadtxt(DATA / name)
    return d[:, 1:], d[:, 0]


def _auc(y, s):
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    n_pos = y.sum()
    return (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos))


PARAMS = dict(num_leaves=31, learning_rate=0.05, min_data_in_leaf=20, max_bin=255, lambda_l2=1.0)


@pytest.fixture(scope="module")
def binary():
    return _load("binary.train"), _load("binary.test")


@pytest.mark.slow
def test_binary_auc_matches_lightgbm(binary):
    (X, y), (Xt, yt) = binary
    rounds = 100
    ours = train_pooled(X, y, dict(PARAMS, objective="binary", num_boost_round=rounds))
    theirs = lgb.train(dict(PARAMS, objective="binary", verbose=-1, num_threads=2), lgb.Dataset(X, y), rounds)
    auc_ours = _auc(yt, predict_raw(ours.trees, Xt, init_scores=ours.init_scores)[0])
    auc_theirs = _auc(yt, theirs.predict(Xt, raw_score=True))
    assert abs(auc_ours - auc_theirs) < 0.002, (auc_ours, auc_theirs)


def _splits_lightgbm(tree_info):
    out = []

    def walk(n):
        if "split_feature" in n:
            out.append((n["split_index"], n["split_feature"], n["internal_count"], n["split_gain"]))
            walk(n["left_child"])
            walk(n["right_child"])

    walk(tree_info["tree_structure"])
    return [s[1:] for s in sorted(out)]


def _splits_ours(tree):
    nd = tree.nodes
    internal = np.flatnonzero(nd["is_leaf"] == 0)
    internal = internal[np.argsort(nd["split_order"][internal])]
    return [(int(nd[i]["feature"]), int(nd[i]["count"]), float(nd[i]["gain"])) for i in internal]


def test_first_trees_are_lightgbm_trees(binary):
    """Same bins (as partitions of the values), same gains: the first trees split alike."""
    (X, y), _ = binary
    rounds = 10
    ours = train_pooled(X, y, dict(PARAMS, objective="binary", num_boost_round=rounds))
    theirs = lgb.train(dict(PARAMS, objective="binary", verbose=-1, num_threads=2), lgb.Dataset(X, y), rounds)
    info = theirs.dump_model()["tree_info"]
    for i in range(rounds):
        a, b = _splits_ours(ours.trees[i]), _splits_lightgbm(info[i])
        assert [s[:2] for s in a] == [s[:2] for s in b], f"tree {i}"
        np.testing.assert_allclose([s[2] for s in a], [s[2] for s in b], rtol=1e-5)


@pytest.mark.slow
def test_binary_federated_auc_matches_lightgbm(binary):
    (X, y), (Xt, yt) = binary
    idx = np.array_split(np.random.default_rng(0).permutation(y.size), 4)
    params = dict(PARAMS, objective="binary", num_boost_round=60)
    ours = train_partitioned([(X[i], y[i]) for i in idx], params, row_ids=[i.astype(np.uint64) for i in idx])
    theirs = lgb.train(dict(PARAMS, objective="binary", verbose=-1, num_threads=2), lgb.Dataset(X, y), 60)
    auc_ours = _auc(yt, predict_raw(ours.trees, Xt, init_scores=ours.init_scores)[0])
    auc_theirs = _auc(yt, theirs.predict(Xt, raw_score=True))
    assert abs(auc_ours - auc_theirs) < 0.002, (auc_ours, auc_theirs)


@pytest.mark.slow
def test_regression_rmse_matches_lightgbm():
    (X, y), (Xt, yt) = _load("regression.train"), _load("regression.test")
    rounds = 100
    ours = train_pooled(X, y, dict(PARAMS, objective="regression", num_boost_round=rounds))
    theirs = lgb.train(dict(PARAMS, objective="regression", verbose=-1, num_threads=2), lgb.Dataset(X, y), rounds)
    rmse_ours = np.sqrt(np.mean((predict_raw(ours.trees, Xt, init_scores=ours.init_scores)[0] - yt) ** 2))
    rmse_theirs = np.sqrt(np.mean((theirs.predict(Xt) - yt) ** 2))
    assert abs(rmse_ours - rmse_theirs) / rmse_theirs < 0.01, (rmse_ours, rmse_theirs)
    assert ours.init_scores[0] == pytest.approx(y.mean(), abs=1e-15)


@pytest.mark.parametrize("objective", ["regression", "poisson", "multiclass", "tweedie"])
def test_objectives_grow_lightgbm_trees(binary, objective):
    """Gradients, hessians and initial scores as LightGBM's: the first trees split alike.

    Tweedie only for its first tree: its hessians vary so much that LightGBM's
    count estimate (hessian x rows / total hessian) for min_data_in_leaf soon
    differs from the exact counts the engine uses.
    """
    (X, y), _ = binary
    rng = np.random.default_rng(0)
    lin = X[:, 25] - X[:, 26]
    target = {
        "regression": y + rng.normal(size=y.size) * 0.1,
        "poisson": rng.poisson(np.exp(0.5 * lin)).astype(float),
        "tweedie": rng.poisson(np.exp(0.5 * lin)) * rng.gamma(2.0, 1.0, y.size),
        "multiclass": np.digitize(lin + rng.normal(size=y.size) * 0.3, [-0.3, 0.0, 0.3]).astype(float),
    }[objective]
    extra = {"num_class": 4} if objective == "multiclass" else {}
    params = dict(objective=objective, num_leaves=15, learning_rate=0.1, **extra)
    rounds = 1 if objective == "tweedie" else 3
    ours = train_pooled(X, target, dict(params, num_boost_round=rounds))
    theirs = lgb.train(dict(params, verbose=-1, num_threads=2), lgb.Dataset(X, target), rounds)
    info = theirs.dump_model()["tree_info"]
    assert len(info) == len(ours.trees)
    for i, tree in enumerate(ours.trees):
        a, b = _splits_ours(tree), _splits_lightgbm(info[i])
        assert [s[:2] for s in a] == [s[:2] for s in b], f"tree {i}"
        np.testing.assert_allclose([s[2] for s in a], [s[2] for s in b], rtol=1e-5)
    raw = predict_raw(ours.trees, X, n_trees_per_round=ours.n_trees_per_round, init_scores=ours.init_scores)
    theirs_raw = theirs.predict(X, raw_score=True)
    theirs_raw = theirs_raw.T if theirs_raw.ndim == 2 else theirs_raw[None, :]
    assert np.abs(raw - theirs_raw).max() < 1e-6  # LightGBM's gradients are float32
