"""The tree strategies' global model: LightGBM's trees as engine records that scale, merge and export."""

from __future__ import annotations

from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
import pytest

from fedmine.config import config_from_dict
from fedmine.coordinator.ensemble import Ensemble, scale_tree, schema_model
from fedmine.gbdt.modeltext import read_trees
from fedmine.gbdt.predictor import predict_raw


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
    return config_from_dict(
        {
            "name": "t",
            "label": "y",
            "features": {"a": {}, "b": {}, "c": {"type": "category", "categories": ["x", "y", "z"]}},
            "organisations": {"o": {"source": "o.csv"}},
        }
    )


def train(X, y, rounds=3, init=None):
    ds = lgb.Dataset(X, y, init_score=init, categorical_feature=[2], feature_name=["a", "b", "c"])
    return lgb.train({"objective": "binary", "num_leaves": 5, "verbosity": -1, "min_data_in_leaf": 5}, ds, rounds)


def test_header_carries_schema_not_data(cfg):
    text = Ensemble.for_config(cfg, np.zeros(1)).to_text()
    assert "feature_names=a b c" in text
    assert "feature_infos=none none 0:1:2" in text
    assert "objective=binary sigmoid:1" in text
    assert "tree_sizes" not in text
    assert schema_model(cfg, [], np.zeros(1)).feature_infos == ["none", "none", "0:1:2"]


def test_scaled_trees_with_the_base_score_predict_as_expected(data, cfg):
    X, y = data
    booster = train(X, y, init=np.zeros(len(y)))
    trees = read_trees(booster.model_to_string())
    assert len(trees) == 3
    raw = booster.predict(X, raw_score=True)
    ens = Ensemble.for_config(cfg, np.array([0.25]))
    ens.append([scale_tree(t, 0.5) for t in trees])
    merged = lgb.Booster(model_str=ens.to_text())
    np.testing.assert_allclose(merged.predict(X, raw_score=True), 0.5 * raw + 0.25, atol=1e-12)
    # what a party adds for those trees: the same bits as LightGBM's prediction of them
    delta = Ensemble(cfg=cfg, base_score=np.zeros(1), trees=list(ens.trees))
    np.testing.assert_array_equal(
        predict_raw(ens.trees, X)[0], lgb.Booster(model_str=delta.to_text()).predict(X, raw_score=True)
    )
    # SHAP works on the merged model
    contrib = merged.predict(X, pred_contrib=True)
    np.testing.assert_allclose(contrib.sum(axis=1), merged.predict(X, raw_score=True), atol=1e-9)


def test_scaling_is_a_copy_and_one_is_the_same_tree(data):
    X, y = data
    (tree,) = read_trees(train(X, y, rounds=1).model_to_string())
    assert scale_tree(tree, 1.0) is tree
    doubled = scale_tree(tree, 2.0)
    np.testing.assert_array_equal(doubled.nodes["value"], 2.0 * tree.nodes["value"])
    assert not doubled.equal(tree) and doubled.nodes["count"].tolist() == tree.nodes["count"].tolist()


def test_append_rejects_partial_iterations(data):
    X, y = data
    ens = Ensemble(cfg=SimpleNamespace(num_class=3), base_score=np.zeros(3))  # only num_class is read
    with pytest.raises(ValueError, match="multiple of 3 trees"):
        ens.append(read_trees(train(X, y, rounds=2).model_to_string()))
