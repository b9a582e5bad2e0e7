"""LightGBM model text: tree blocks scale, shift and merge into a loadable model."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from fedmine.config import config_from_dict
from fedmine.coordinator.ensemble import Ensemble, add_bias, header_for, scale_tree, tree_blocks


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    X[:, 2] = rng.integers(0, 3, 400)
    X[rng.random(400) < 0.1, 0] = np.nan
    y = ((X[:, 1] + (X[:, 2] == 1)) > 0.3).astype(float)
    return X, y


@pytest.fixture(scope="module")
def cfg():
    return config_from_dict({
        "name": "t", "label": "y",
        "features": {"a": {}, "b": {}, "c": {"type": "category", "categories": ["x", "y", "z"]}},
        "organisations": {"o": {"source": "o.csv"}},
    })


def train(X, y, rounds=3, init=None):
    ds = lgb.Dataset(X, y, init_score=init, categorical_feature=[2], feature_name=["a", "b", "c"])
    return lgb.train({"objective": "binary", "num_leaves": 5, "verbosity": -1, "min_data_in_leaf": 5}, ds, rounds)


def test_header_carries_schema_not_data(cfg):
    header = header_for(cfg)
    assert "feature_names=a b c" in header
    assert "feature_infos=none none 0:1:2" in header
    assert "objective=binary sigmoid:1" in header
    assert "tree_sizes" not in header


def test_scaled_and_biased_trees_predict_as_expected(data, cfg):
    X, y = data
    booster = train(X, y, init=np.zeros(len(y)))
    blocks = tree_blocks(booster.model_to_string())
    assert len(blocks) == 3
    raw = booster.predict(X, raw_score=True)
    ens = Ensemble.for_config(cfg, np.array([0.25]))
    ens.append([scale_tree(b, 0.5) for b in blocks])
    merged = lgb.Booster(model_str=ens.to_text())
    np.testing.assert_allclose(merged.predict(X, raw_score=True), 0.5 * raw + 0.25, atol=1e-12)
    # a delta (explicit trees) carries no base score
    delta = lgb.Booster(model_str=ens.to_text(ens.trees[:1]))
    first = lgb.Booster(model_str=booster.model_to_string()).predict(X, raw_score=True, num_iteration=1)
    np.testing.assert_allclose(delta.predict(X, raw_score=True), 0.5 * first, atol=1e-12)
    # SHAP works on the merged model
    contrib = merged.predict(X, pred_contrib=True)
    np.testing.assert_allclose(contrib.sum(axis=1), merged.predict(X, raw_score=True), atol=1e-9)


def test_add_bias_and_scale_compose(data):
    X, y = data
    block = tree_blocks(train(X, y, rounds=1).model_to_string())[0]
    assert add_bias(block, 0.0) == block and scale_tree(block, 1.0) == block
    shifted = add_bias(scale_tree(block, 2.0), 1.0)
    assert "shrinkage=" in shifted


def test_append_rejects_partial_iterations(cfg):
    ens = Ensemble(header=header_for(cfg), num_class=3, base_score=np.zeros(3))
    with pytest.raises(ValueError, match="multiple of 3 trees"):
        ens.append(["a", "b"])
