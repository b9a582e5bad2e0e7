"""Training over K parties gives the pooled model bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from fedmine.gbdt import to_lightgbm_text, train_partitioned, train_pooled
from fedmine.gbdt.state import EngineGroup, EngineState

N = 1500


def _data(objective: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 5))
    X[rng.random(N) < 0.1, 0] = np.nan
    X[:, 3] = rng.integers(0, 10, N).astype(float)
    X[rng.random(N) < 0.05, 3] = np.nan
    lin = X[:, 1] + np.nan_to_num(X[:, 0], nan=1.0) + np.isin(X[:, 3], [1, 4, 7]) * 1.5
    if objective == "binary":
        y = (lin + rng.normal(size=N) > 0.5).astype(float)
    elif objective == "multiclass":
        y = np.digitize(lin + rng.normal(size=N) * 0.3, [-0.5, 0.5, 1.5]).astype(float)
    elif objective == "regression":
        y = 3.0 * lin + rng.normal(size=N) * 0.1
    elif objective == "poisson":
        y = rng.poisson(np.exp(0.4 * lin)).astype(float)
    else:  # tweedie: zero-inflated positive
        y = rng.poisson(np.exp(0.3 * lin)) * rng.gamma(2.0, 1.0, N)
    return X, y


PARAMS = dict(
    num_boost_round=6,
    num_leaves=12,
    learning_rate=0.2,
    min_data_in_leaf=10,
    min_data_per_group=20,
    cat_smooth=5.0,
    max_cat_to_onehot=4,
    feature_fraction=0.8,
    bagging_fraction=0.7,
    bagging_freq=2,
    seed=3,
    lambda_l2=0.5,
    max_bin=63,
)


def _partition(y, k, kind, seed=0):
    rng = np.random.default_rng(seed + k)
    if kind == "iid":
        order = rng.permutation(y.size)
    else:  # label-skewed: sort by label (ties at random), parties get contiguous label ranges
        order = np.lexsort((rng.random(y.size), y))
    return [np.sort(p) if kind == "iid" else p for p in np.array_split(order, k)]


def _federated(X, y, params, idx):
    return train_partitioned(
        [(X[i], y[i]) for i in idx], params, categorical=[3], row_ids=[i.astype(np.uint64) for i in idx]
    )


def _assert_same(a, b):
    assert len(a.trees) == len(b.trees)
    for ta, tb in zip(a.trees, b.trees):
        assert np.array_equal(ta.nodes, tb.nodes)
        assert np.array_equal(ta.cat_bitsets, tb.cat_bitsets)
    assert np.array_equal(a.init_scores, b.init_scores)
    assert to_lightgbm_text(a) == to_lightgbm_text(b)


@pytest.fixture(scope="module")
def pooled():
    cache = {}

    def get(objective):
        if objective not in cache:
            X, y = _data(objective)
            extra = {"num_class": 4} if objective == "multiclass" else {}
            params = dict(PARAMS, objective=objective, **extra)
            cache[objective] = (X, y, params, train_pooled(X, y, params, categorical=[3]))
        return cache[objective]

    return get


@pytest.mark.parametrize("objective", ["binary", "multiclass", "regression", "poisson", "tweedie"])
@pytest.mark.parametrize("k", [1, 2, 4, 7])
@pytest.mark.parametrize("kind", ["iid", "label_skewed"])
def test_federated_equals_pooled(pooled, objective, k, kind):
    X, y, params, want = pooled(objective)
    got = _federated(X, y, params, _partition(y, k, kind))
    _assert_same(got, want)
    assert sum(t.n_leaves for t in want.trees) > 2 * len(want.trees)  # the trees did split
    assert any(t.cat_bitsets.shape[0] for t in want.trees)  # and used the categorical column


def test_party_order_does_not_matter(pooled):
    X, y, params, want = pooled("binary")
    idx = _partition(y, 4, "iid")
    _assert_same(_federated(X, y, params, idx[::-1]), want)


def test_sequential_and_concurrent_parties_agree(pooled):
    X, y, params, want = pooled("regression")
    idx = _partition(y, 3, "iid")
    from fedmine.gbdt.booster import train

    for n_threads in (1, 2):
        group = EngineGroup([EngineState(X[i], y[i], row_ids=i.astype(np.uint64)) for i in idx], n_threads=n_threads)
        _assert_same(train(group, params, categorical=[3]), want)


def test_unpacked_accumulators_agree_with_each_other():
    X, y = _data("binary")
    params = dict(PARAMS, objective="binary", packed="off")
    idx = _partition(y, 3, "iid")
    _assert_same(_federated(X, y, params, idx), train_pooled(X, y, params, categorical=[3]))


def test_group_counts_exchanges_and_bytes(pooled):
    X, y, params, _ = pooled("binary")
    idx = _partition(y, 2, "iid")
    model, group = train_partitioned(
        [(X[i], y[i]) for i in idx],
        params,
        categorical=[3],
        row_ids=[i.astype(np.uint64) for i in idx],
        return_group=True,
    )
    src = group.source
    leaves = sum(t.n_leaves for t in model.trees)
    # one exchange per tree for the root plus at most one per further split
    assert len(model.trees) <= src.exchanges_ <= leaves
    per_hist = X.shape[1] * (params["max_bin"] + 1) * 3 * 8
    assert src.bytes_to_coordinator_ % per_hist == 0 and src.bytes_to_coordinator_ >= 2 * per_hist * len(model.trees)


def test_early_stopping_same_pooled_and_federated():
    X, y = _data("binary")
    Xv, yv = _data("binary", seed=9)
    params = dict(PARAMS, objective="binary", num_boost_round=60, early_stopping_rounds=3, learning_rate=0.5)
    want = train_pooled(X, y, params, categorical=[3], X_valid=Xv, y_valid=yv)
    idx = _partition(y, 3, "iid")
    vidx = np.array_split(np.arange(yv.size), 3)
    got = train_partitioned(
        [(X[i], y[i]) for i in idx],
        params,
        categorical=[3],
        row_ids=[i.astype(np.uint64) for i in idx],
        valid_parts=[(Xv[i], yv[i]) for i in vidx],
    )
    _assert_same(got, want)
    assert got.history == want.history
    assert want.best_iteration < 60
    assert want.best_iteration == int(np.argmin(want.history)) + 1


@pytest.mark.parametrize("metric", ["auc", "binary_logloss"])
def test_validation_metric_is_partition_free(metric):
    X, y = _data("binary")
    Xv, yv = _data("binary", seed=9)
    params = dict(PARAMS, objective="binary", metric=metric)
    want = train_pooled(X, y, params, categorical=[3], X_valid=Xv, y_valid=yv)
    vidx = np.array_split(np.random.default_rng(0).permutation(yv.size), 4)
    got = train_partitioned([(X, y)], params, categorical=[3], valid_parts=[(Xv, yv)])
    assert got.history == want.history
    got4 = train_partitioned(
        [(X[i], y[i]) for i in np.array_split(np.arange(N), 4)],
        params,
        categorical=[3],
        valid_parts=[(Xv[i], yv[i]) for i in vidx],
    )
    assert got4.history == want.history


def test_a_party_without_rows_changes_nothing(pooled):
    X, y, params, want = pooled("multiclass")
    idx = _partition(y, 3, "iid")
    idx.insert(1, np.zeros(0, dtype=np.int64))
    _assert_same(_federated(X, y, params, idx), want)


@pytest.mark.parametrize("objective", ["binary", "multiclass"])
def test_lookahead_changes_exchanges_not_trees(objective):
    X, y = _data(objective)
    extra = {"num_class": 4} if objective == "multiclass" else {}
    base = dict(PARAMS, objective=objective, num_leaves=20, **extra)
    idx = _partition(y, 3, "iid")
    results = {}
    for lookahead in (0, 1, 3):
        params = dict(base, lookahead=lookahead)
        model, group = train_partitioned(
            [(X[i], y[i]) for i in idx],
            params,
            categorical=[3],
            row_ids=[i.astype(np.uint64) for i in idx],
            return_group=True,
        )
        _assert_same(model, train_pooled(X, y, params, categorical=[3]))  # federated == pooled, any lookahead
        results[lookahead] = (model, group.source.exchanges_)
    ref = results[0][0]
    fields = [f for f in ref.trees[0].nodes.dtype.names if f != "slot"]
    for lookahead, (model, _) in results.items():
        assert len(model.trees) == len(ref.trees)
        for a, b in zip(model.trees, ref.trees):
            for f in fields:
                assert np.array_equal(a.nodes[f], b.nodes[f]), (lookahead, f)
        assert to_lightgbm_text(model) == to_lightgbm_text(ref)
    assert results[3][1] < results[1][1] < results[0][1]


def test_trainer_round_by_round_equals_train():
    """The step-wise Trainer (what the federation drives, one MLflow step a round) is train()."""
    from fedmine.gbdt.booster import Trainer
    from fedmine.gbdt.state import EngineGroup, EngineState

    X, y = _data("binary")
    params = dict(PARAMS, objective="binary", num_boost_round=6, early_stopping_rounds=0)
    idx = _partition(y, 3, "iid")
    parties = [EngineState(X[i], y[i], row_ids=i.astype(np.uint64), X_valid=X[i][:50], y_valid=y[i][:50]) for i in idx]
    trainer = Trainer(EngineGroup(parties), params, categorical=[3])
    trainer.start()
    values = []
    while not trainer.done:
        values.append(trainer.step())
    model = trainer.finish()
    assert len(values) == 6 and all(v is not None for v in values)
    assert values == model.history
    _assert_same(
        model,
        train_partitioned(
            [(X[i], y[i]) for i in idx],
            params,
            categorical=[3],
            row_ids=[i.astype(np.uint64) for i in idx],
            valid_parts=[(X[i][:50], y[i][:50]) for i in idx],
        ),
    )
