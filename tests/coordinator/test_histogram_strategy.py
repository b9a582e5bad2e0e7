"""The histogram strategy through the federation layer equals the engine on the pooled rows, bit for bit."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from fedmine import gbdt, metrics
from fedmine.config import config_from_dict
from fedmine.coordinator.training import Coordinator
from fedmine.gbdt.booster import train
from fedmine.gbdt.state import EngineState
from fedmine.party.organisation import Party, TrainValidRows, global_row_ids

ORGS = ["bank", "clinic", "shop", "telco", "utility", "insurer", "pharmacy"]


def make_rows(objective, n=1400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    X[:, 3] = rng.integers(0, 4, n)  # categorical codes
    X[rng.random(n) < 0.08, 0] = np.nan
    X[rng.random(n) < 0.05, 3] = np.nan
    f = np.nan_to_num(X[:, 0]) - X[:, 1] + 0.8 * (X[:, 3] == 2) + 0.3 * X[:, 2] * X[:, 4]
    if objective == "binary":
        y = (rng.random(n) < 1 / (1 + np.exp(-f))).astype(float)
    elif objective == "multiclass":
        y = np.digitize(f + 0.5 * rng.normal(size=n), [-1.0, 0.0, 1.0]).astype(float)
    elif objective == "regression":
        y = f + 0.3 * rng.normal(size=n)
    else:  # poisson, tweedie: counts / non-negative amounts
        y = rng.poisson(np.exp(0.4 * f)).astype(float)
    return X, y


def partition(y, k, kind, seed=1):
    rng = np.random.default_rng(seed)
    order = np.argsort(y + 1e-3 * rng.random(len(y)), kind="stable") if kind == "skewed" else rng.permutation(len(y))
    return np.array_split(order, k)


def cfg_for(objective, orgs, **training):
    extra = {"classes": ["a", "b", "c", "d"]} if objective == "multiclass" else {}
    return config_from_dict(
        {
            "name": "t",
            "label": "y",
            "objective": objective,
            **extra,
            "features": {
                "f0": {},
                "f1": {},
                "f2": {},
                "f3": {"type": "category", "categories": ["p", "q", "r", "s"]},
                "f4": {},
            },
            "organisations": {o: {"source": f"{o}.csv"} for o in orgs},
            "training": {
                "strategy": "histogram",
                "rounds": 6,
                "num_leaves": 7,
                "min_data_in_leaf": 10,
                "validation_fraction": 0.0,
                **training,
            },
        }
    )


def federated_text(cfg, X, y, parts):
    parties = [
        Party(
            o,
            TrainValidRows(X[i], y[i], X[:0], y[:0]),
            objective=cfg.objective,
            num_class=cfg.num_class,
            feature_names=list(cfg.features),
            categorical=[3],
        )
        for o, i in zip(cfg.organisations, parts)
    ]
    coord = Coordinator(cfg, parties)
    coord.start()
    for r in range(1, cfg.training.rounds + 1):
        if coord.run_round(r).stopped:
            break
    return coord, coord.model_text()


def pooled_text(cfg, X, y, parts):
    ids = np.concatenate([global_row_ids(o, len(i)) for o, i in zip(cfg.organisations, parts)])
    rows = np.concatenate(parts)
    params = cfg.training.engine_params(
        cfg.objective,
        cfg.num_class,
        "auc" if cfg.objective == "binary" else "rmse" if cfg.objective != "multiclass" else "multi_logloss",
    )
    model = train(EngineState(X[rows], y[rows], row_ids=ids), params, categorical=[3], feature_names=list(cfg.features))
    return gbdt.to_lightgbm_text(model, list(cfg.features))


CASES = [("binary", k, kind) for k in (1, 2, 4, 7) for kind in ("iid", "skewed")] + [
    (obj, k, kind)
    for obj in ("multiclass", "regression", "poisson", "tweedie")
    for k in (2, 7)
    for kind in ("iid", "skewed")
]


@pytest.mark.parametrize(("objective", "k", "kind"), CASES)
def test_federated_equals_pooled_bit_for_bit(objective, k, kind):
    X, y = make_rows(objective)
    parts = partition(y, k, kind)
    cfg = cfg_for(objective, ORGS[:k], bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.8)
    _, fed = federated_text(cfg, X, y, parts)
    assert fed == pooled_text(cfg, X, y, parts)
    booster = lgb.Booster(model_str=fed)
    assert booster.num_trees() == 6 * cfg.num_class
    contrib = booster.predict(X[:50], pred_contrib=True)
    raw = booster.predict(X[:50], raw_score=True)
    np.testing.assert_allclose(contrib.reshape(50, cfg.num_class, -1).sum(-1).reshape(raw.shape), raw, atol=1e-9)


def test_round_figures_and_early_stopping():
    X, y = make_rows("binary", n=2000, seed=3)
    parts = partition(y, 3, "iid")
    cfg = cfg_for("binary", ORGS[:3], rounds=200, learning_rate=0.3, early_stopping_rounds=3, validation_fraction=0.0)
    parties = []
    for o, i in zip(cfg.organisations, parts):
        cut = int(len(i) * 0.7)
        parties.append(
            Party(
                o,
                TrainValidRows(X[i[:cut]], y[i[:cut]], X[i[cut:]], y[i[cut:]]),
                objective="binary",
                num_class=1,
                feature_names=list(cfg.features),
                categorical=[3],
            )
        )
    coord = Coordinator(cfg, parties)
    coord.start()
    rounds = 0
    for r in range(1, 201):
        result = coord.run_round(r)
        rounds = r
        assert result.stats["train/histogram_exchanges"] >= 1
        # every party answers every node; each node's answer is smaller than its full layout
        assert result.stats["train/histogram_nodes"] >= len(cfg.organisations)
        full = result.stats["train/histogram_nodes"] * len(cfg.features) * (cfg.training.max_bin + 1) * 3 * 8
        assert 0 < result.stats["train/histogram_bytes"] < full
        assert set(result.org_bytes_sent) == set(cfg.organisations) and min(result.org_bytes_sent.values()) > 0
        assert {"seconds/party", "seconds/aggregation", "seconds/split_finding"} <= set(result.stats)
        if result.stopped:
            break
    assert rounds < 200  # stopped early
    best = lgb.Booster(model_str=coord.model_text()).num_trees()
    assert best == rounds - 3


def test_declared_ranges_keep_party_ranges_private():
    """With min/max declared in the schema, no party reports its own ranges; the model still equals pooled."""
    X, y = make_rows("binary")
    parts = partition(y, 3, "iid")
    cfg = cfg_for("binary", ORGS[:3])
    raw = cfg.model_dump()
    for name in ("f0", "f1", "f2", "f4"):
        raw["features"][name].update(min=-6.0, max=6.0)
    cfg = config_from_dict(raw)
    parties = [
        Party(
            o,
            TrainValidRows(X[i], y[i], X[:0], y[:0]),
            objective="binary",
            num_class=1,
            feature_names=list(cfg.features),
            categorical=[3],
        )
        for o, i in zip(cfg.organisations, parts)
    ]
    asked = []
    for p in parties:
        original = p.call

        def spy(call, *a, _orig=original, **k):
            asked.append(call)
            return _orig(call, *a, **k)

        p.call = spy
    coord = Coordinator(cfg, parties)
    coord.start()
    for r in range(1, 7):
        coord.run_round(r)
    assert "feature_ranges" not in asked and "grid_counts" in asked
    ids = np.concatenate([global_row_ids(o, len(i)) for o, i in zip(cfg.organisations, parts)])
    rows = np.concatenate(parts)
    from fedmine.coordinator.training import declared_ranges

    model = train(
        EngineState(X[rows], y[rows], row_ids=ids),
        cfg.training.engine_params("binary", 1, "auc"),
        categorical=[3],
        feature_names=list(cfg.features),
        ranges=declared_ranges(cfg),
    )
    assert coord.model_text() == gbdt.to_lightgbm_text(model, list(cfg.features))


@pytest.mark.parametrize("objective", ["binary", "regression"])
def test_the_coordinators_early_stopping_equals_the_engines_on_pooled_rows(objective):
    """The coordinator owns the round loop: its early stopping keeps the round the engine alone would keep."""
    from fedmine import metrics

    X, y = make_rows(objective, n=2400, seed=5)
    parts = partition(y, 3, "skewed")
    cfg = cfg_for(objective, ORGS[:3], rounds=300, learning_rate=0.5, early_stopping_rounds=4)
    cuts = [int(len(i) * 0.7) for i in parts]
    train_parts = [i[:c] for i, c in zip(parts, cuts)]
    valid_parts = [i[c:] for i, c in zip(parts, cuts)]
    parties = [
        Party(
            o,
            TrainValidRows(X[t], y[t], X[v], y[v]),
            objective=objective,
            num_class=1,
            feature_names=list(cfg.features),
            categorical=[3],
        )
        for o, t, v in zip(cfg.organisations, train_parts, valid_parts)
    ]
    coord = Coordinator(cfg, parties)
    coord.start()
    for r in range(1, 301):
        if coord.run_round(r).stopped:
            break
    assert r < 300  # stopped early
    ids = np.concatenate([global_row_ids(o, len(t)) for o, t in zip(cfg.organisations, train_parts)])
    tr, va = np.concatenate(train_parts), np.concatenate(valid_parts)
    params = cfg.training.engine_params(objective, 1, metrics.primary(objective))
    pooled = train(
        EngineState(X[tr], y[tr], row_ids=ids, X_valid=X[va], y_valid=y[va]),
        params,
        categorical=[3],
        feature_names=list(cfg.features),
    )
    assert pooled.best_iteration == len(lgb.Booster(model_str=coord.model_text()).dump_model()["tree_info"])
    assert coord.model_text() == gbdt.to_lightgbm_text(pooled, list(cfg.features))


def test_without_validation_rows_no_validation_sums_travel():
    """No organisation holds validation rows: the coordinator asks for no (all-zero, 1 MB) validation sums."""
    X, y = make_rows("binary", n=1200, seed=5)
    parts = partition(y, 3, "iid")
    cfg = cfg_for("binary", ORGS[:3], rounds=2)
    coord, text = federated_text(cfg, X, y, parts)
    assert text and coord.n_valid == 0
    for link in coord.links:
        assert "evaluate" not in link.answered and link.answered & {"histograms", "split_histograms"}
        assert link.bytes_sent < 2 * metrics.sum_vector_size("binary") * 8  # two rounds of histograms, no sums
