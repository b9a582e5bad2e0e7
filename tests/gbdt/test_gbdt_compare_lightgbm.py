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


def test_binary_auc_matches_lightgbm(binary):
    (X, y), (Xt, yt) = binary
    rounds = 100
    ours = train_pooled(X, y, dict(PARAMS, objective="binary", num_boost_round=rounds))
    theirs = lgb.train(dict(PARAMS, objective="binary", verbose=-1, num_threads=2), lgb.Dataset(X, y), rounds)
    auc_ours = _auc(yt, predict_raw(ours.trees, Xt, init_scores=ours.init_scores)[0])
    auc_theirs = _auc(yt, theirs.predict(Xt, raw_score=True))
    assert abs(auc_ours - auc_theirs) < 0.002, (auc_ours, auc_theirs)
    # same first split as LightGBM
    first = theirs.dump_model()["tree_info"][0]["tree_structure"]
    assert ours.trees[0].nodes[0]["feature"] == first["split_feature"]


def test_binary_federated_auc_matches_lightgbm(binary):
    (X, y), (Xt, yt) = binary
    idx = np.array_split(np.random.default_rng(0).permutation(y.size), 4)
    params = dict(PARAMS, objective="binary", num_boost_round=60)
    ours = train_partitioned([(X[i], y[i]) for i in idx], params, row_ids=[i.astype(np.uint64) for i in idx])
    theirs = lgb.train(dict(PARAMS, objective="binary", verbose=-1, num_threads=2), lgb.Dataset(X, y), 60)
    auc_ours = _auc(yt, predict_raw(ours.trees, Xt, init_scores=ours.init_scores)[0])
    auc_theirs = _auc(yt, theirs.predict(Xt, raw_score=True))
    assert abs(auc_ours - auc_theirs) < 0.002, (auc_ours, auc_theirs)


def test_regression_rmse_matches_lightgbm():
    (X, y), (Xt, yt) = _load("regression.train"), _load("regression.test")
    rounds = 100
    ours = train_pooled(X, y, dict(PARAMS, objective="regression", num_boost_round=rounds))
    theirs = lgb.train(dict(PARAMS, objective="regression", verbose=-1, num_threads=2), lgb.Dataset(X, y), rounds)
    rmse_ours = np.sqrt(np.mean((predict_raw(ours.trees, Xt, init_scores=ours.init_scores)[0] - yt) ** 2))
    rmse_theirs = np.sqrt(np.mean((theirs.predict(Xt) - yt) ** 2))
    assert abs(rmse_ours - rmse_theirs) / rmse_theirs < 0.01, (rmse_ours, rmse_theirs)
    assert ours.init_scores[0] == pytest.approx(y.mean(), abs=1e-15)
