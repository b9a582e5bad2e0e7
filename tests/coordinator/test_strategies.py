"""Strategies over in-process parties: what the coordinator builds is what LightGBM means."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from fedmine.config import config_from_dict
from fedmine.coordinator.strategies import bagging_weights
from fedmine.coordinator.training import Coordinator, base_score
from fedmine.errors import PartyError
from fedmine.party.organisation import Party, TrainValidRows
from fedmine.protocol import ProtocolError

FEATURES = {"a": {}, "b": {}, "c": {"type": "category", "categories": ["x", "y", "z"]}}


def make_data(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) + [shift, 0, 0]
    X[:, 2] = rng.integers(0, 3, n)
    X[rng.random(n) < 0.05, 1] = np.nan
    logit = X[:, 0] - np.nan_to_num(X[:, 1]) + (X[:, 2] == 2)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    cut = int(n * 0.75)
    return TrainValidRows(X[:cut], y[:cut], X[cut:], y[cut:])


def make(strategy, rounds=3, **training):
    cfg = config_from_dict(
        {
            "name": "t",
            "label": "y",
            "features": FEATURES,
            "organisations": {o: {"source": f"{o}.csv"} for o in ("a", "b", "c")},
            "training": {
                "strategy": strategy,
                "rounds": rounds,
                "num_leaves": 4,
                "min_data_in_leaf": 5,
                "num_threads": 1,
                **training,
            },
        }
    )
    splits = [make_data(300, 1), make_data(200, 2, 0.5), make_data(120, 3, -0.5)]
    parties = [
        Party(o, s, objective="binary", num_class=1, feature_names=["a", "b", "c"], categorical=[2])
        for o, s in zip(cfg.organisations, splits)
    ]
    coord = Coordinator(cfg, parties)
    coord.start()
    return cfg, coord, splits


def lgb_params(cfg):
    return cfg.training.lightgbm_params("binary", None)


def test_bagging_round_is_row_weighted_average_of_party_trees():
    cfg, coord, splits = make("bagging", server_learning_rate=0.8)
    coord.run_round(1)
    rows = {o: len(s.y_train) for o, s in zip(cfg.organisations, splits)}
    weights = bagging_weights(rows, 0.8)
    base = base_score("binary", np.array([sum(s.y_train.sum() for s in splits)]), sum(rows.values()))
    X = np.vstack([s.X_valid for s in splits])
    expected = np.full(len(X), base[0])
    for org, s in zip(cfg.organisations, splits):
        ds = lgb.Dataset(s.X_train, s.y_train, init_score=np.full(len(s.y_train), base[0]), categorical_feature=[2])
        tree = lgb.train(lgb_params(cfg), ds, 1)
        expected += weights[org] * tree.predict(X, raw_score=True)
    model = lgb.Booster(model_str=coord.model_text())
    np.testing.assert_allclose(model.predict(X, raw_score=True), expected, atol=1e-9)
    assert model.num_trees() == 3


def test_parties_follow_the_global_model():
    cfg, coord, splits = make("bagging", rounds=4)
    for r in range(1, 5):
        result = coord.run_round(r)
    model = lgb.Booster(model_str=coord.model_text())
    for org, s in zip(cfg.organisations, splits):
        raw = model.predict(s.X_valid, raw_score=True)
        p = 1 / (1 + np.exp(-raw))
        eps = 1e-15
        logloss = -np.mean(s.y_valid * np.log(np.clip(p, eps, 1)) + (1 - s.y_valid) * np.log(np.clip(1 - p, eps, 1)))
        assert abs(result.org_metrics[org]["binary_logloss"] - logloss) < 1e-9
    assert result.bytes_sent > 0 and result.bytes_received > 0


def test_cyclic_visits_organisations_in_turn():
    _cfg, coord, _ = make("cyclic", local_rounds=2)
    calls = []
    for link in coord.links:
        original = link.call

        def spy(method, *a, _name=link.name, _orig=original, **k):
            if method == "train_local":
                calls.append(_name)
            return _orig(method, *a, **k)

        link.call = spy
    for r in range(1, 5):
        coord.run_round(r)
    assert calls == ["a", "b", "c", "a"]
    assert coord.ensemble.num_trees == 8


def test_local_strategy_equals_lightgbm_alone():
    cfg, coord, _splits = make("local", rounds=5)
    for r in range(1, 6):
        result = coord.run_round(r)
    assert coord.model_text() is None
    baselines = coord.local_baselines()
    for org in cfg.organisations:
        assert abs(result.org_metrics[org]["binary_logloss"] - baselines[org]["metrics"]["binary_logloss"]) < 1e-9
        assert len(baselines[org]["curve"]["auc"]) == 5


def test_party_rejects_calls_out_of_order():
    s = make_data(50, 0)
    party = Party("p", s, objective="binary", num_class=1, feature_names=["a", "b", "c"], categorical=[2])
    with pytest.raises(
        ProtocolError, match=r"^add_trees is not accepted in stage 'new'; it needs one of \['following'\]$"
    ):
        party.call("add_trees", 1, None)
    party.call("start", np.zeros(1))
    party.call("add_trees", 1, None)
    party.call("add_trees", 1, None)  # a retry of the same step is skipped
    with pytest.raises(PartyError, match=r"party p: step 3 out of order \(last applied 1\)"):
        party.call("add_trees", 3, None)


def test_multiclass_bagging_exports_lightgbm_multiclass():
    rng = np.random.default_rng(5)
    cfg = config_from_dict(
        {
            "name": "m",
            "label": "y",
            "objective": "multiclass",
            "classes": ["p", "q", "r"],
            "features": {"a": {}, "b": {}},
            "organisations": {"a": {"source": "a.csv"}, "b": {"source": "b.csv"}},
            "training": {"strategy": "bagging", "rounds": 3, "num_leaves": 4, "min_data_in_leaf": 5},
        }
    )
    parties = []
    for name in ("a", "b"):
        X = rng.normal(size=(200, 2))
        y = (np.digitize(X[:, 0] + 0.3 * rng.normal(size=200), [-0.5, 0.5])).astype(float)
        parties.append(
            Party(
                name,
                TrainValidRows(X[:150], y[:150], X[150:], y[150:]),
                objective="multiclass",
                num_class=3,
                feature_names=["a", "b"],
                categorical=[],
            )
        )
    coord = Coordinator(cfg, parties)
    coord.start()
    for r in range(1, 4):
        result = coord.run_round(r)
    model = lgb.Booster(model_str=coord.model_text())
    assert model.num_trees() == 3 * 2 * 3
    assert result.global_metrics["multi_error"] < 0.4
