"""Metrics: one table, one definition each, exact per party and mergeable across parties.

* every metric: merged sums over random partitions give the pooled value (bit for
  bit for the means, on the cell grid for AUC), and the exact value agrees;
* a class absent: AUC is NaN everywhere;
* the engine's early-stopping value is the logged federation value;
* the definitions agree with scikit-learn (when installed) and LightGBM's own.
"""

from __future__ import annotations

import ast
import math
import warnings
from itertools import pairwise
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from fedmine import metrics
from fedmine.gbdt import train_partitioned
from fedmine.gbdt.objectives import OBJECTIVES, make_objective
from fedmine.gbdt.predictor import predict_raw

RHO = 1.3
K = 4  # classes of the multiclass cases
ALL_PAIRS = sorted({(o, m) for o in OBJECTIVES for m in metrics.METRICS[o] + metrics.ENGINE_METRICS[o]})


def labels_and_raw(objective: str, n: int, seed: int = 0):
    """Labels and raw scores (n,) or (n, K), the scores informative about the labels."""
    rng = np.random.default_rng(seed)
    if objective == "binary":
        y = (rng.random(n) < 0.35).astype(float)
        raw = np.round(1.2 * (y - 0.35) + rng.normal(size=n), 2)  # rounded: ties
    elif objective == "multiclass":
        y = rng.integers(0, K, n).astype(float)
        raw = rng.normal(size=(n, K))
        raw[np.arange(n), y.astype(int)] += 1.0
    elif objective == "regression":
        y = rng.normal(size=n) * 3
        raw = y + rng.normal(size=n)
    else:
        mu = np.exp(rng.normal(size=n) * 0.7)
        y = rng.poisson(mu).astype(float) * (rng.gamma(2.0, 1.0, n) if objective == "tweedie" else 1.0)
        raw = np.log(mu) + 0.3 * rng.normal(size=n)
    return y, raw


def mean_metric(metric, objective, parts):
    """A mean metric from per-party exact sums of its row values (what the engine does)."""
    kw = {"tweedie_variance_power": RHO} if objective == "tweedie" else {}
    total = sum(metrics.exact_sum_parts(metrics.row_values(metric, y, raw, objective, **kw)) for y, raw in parts)
    return metrics.value_from_mean(metric, metrics.exact_total(total) / sum(len(y) for y, _ in parts))


def random_parts(n, rng, k):
    cuts = np.sort(rng.integers(0, n + 1, k - 1))
    return np.split(rng.permutation(n), cuts)  # some may be empty


# -- the table -----------------------------------------------------------------


def test_one_table_feeds_the_engine_the_baseline_and_the_report():
    from fedmine.gbdt import booster, params
    from fedmine.party import organisation

    assert set(metrics.TABLE) == set(OBJECTIVES)
    assert params.METRICS is metrics.ENGINE_METRICS
    assert organisation.LGB_METRICS is metrics.METRICS
    assert booster.HIGHER_IS_BETTER == metrics.HIGHER_IS_BETTER
    for objective in OBJECTIVES:
        n_class = 3 if objective == "multiclass" else 1
        obj = make_objective(objective, num_class=n_class)
        assert obj.metrics == metrics.ENGINE_METRICS[objective]
        assert params.make_params({"objective": objective, "num_class": n_class}).metric == obj.metric == obj.metrics[0]
        # the histogram strategy hands the primary metric to the engine
        assert metrics.primary(objective) in metrics.ENGINE_METRICS[objective]
        assert metrics.PRIMARY[objective] == (
            metrics.primary(objective),
            metrics.higher_is_better(metrics.primary(objective)),
        )
    assert metrics.primary("binary") == "auc" and metrics.higher_is_better("auc")
    assert not any(metrics.higher_is_better(m) for o in OBJECTIVES for m in metrics.METRICS[o] if m != "auc")
    assert metrics.better("binary", 0.8, 0.7) and metrics.better("regression", 0.5, 0.7)
    assert not metrics.better("binary", float("nan"), 0.7)


def test_metrics_is_a_leaf_module():
    """The engine imports fedmine.metrics, so it imports nothing of fedmine but its errors."""
    tree = ast.parse(Path(metrics.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {n for n in names if n.split(".")[0] == "fedmine"} <= {"fedmine.errors"}
    assert {n.split(".")[0] for n in names} <= {"__future__", "numpy", "fedmine", "math", "fractions"}


# -- exact vs mergeable --------------------------------------------------------


@pytest.mark.parametrize(("objective", "metric"), ALL_PAIRS, ids=[f"{o}-{m}" for o, m in ALL_PAIRS])
def test_merged_sums_over_random_partitions_give_the_pooled_value(objective, metric):
    n = 3000
    y, raw = labels_and_raw(objective, n)
    rng = np.random.default_rng(7)
    for k in (1, 2, 3, 7):
        idx = random_parts(n, rng, k)
        if metric in metrics.METRICS[objective]:  # reported: through sums / merge / from_sums
            pooled = metrics.from_sums(metrics.sums(y, raw, objective), objective)[metric]
            merged = metrics.from_sums(metrics.merge([metrics.sums(y[i], raw[i], objective) for i in idx]), objective)
            assert merged[metric] == pooled
            exact = metrics.exact(y, raw, objective)[metric]
            if metric == "auc":
                assert exact == metrics.auc(y, metrics.transform(raw, objective))
                hist = metrics.auc_histograms(y, raw)
                # rows sharing a cell count as tied: that is the whole difference
                tied = float((hist[0].astype(float) * hist[1]).sum() / (hist[0].sum() * hist[1].sum()))
                assert abs(merged[metric] - exact) <= 0.5 * tied + 1e-12
                assert abs(merged[metric] - exact) < 1e-3
            else:
                assert exact == pooled
        if metric != "auc":  # the engine's path: exact sums of the row values, rounded once
            assert mean_metric(metric, objective, [(y[i], raw[i]) for i in idx]) == mean_metric(
                metric, objective, [(y, raw)]
            )


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_exact_means_are_correctly_rounded_means(objective):
    y, raw = labels_and_raw(objective, 1000, seed=3)
    got = metrics.exact(y, raw, objective)
    for name in metrics.METRICS[objective]:
        if name != "auc":
            mean = math.fsum(metrics.row_values(name, y, raw, objective)) / len(y)
            assert got[name] == metrics.value_from_mean(name, mean)


def test_the_engine_computes_the_same_values_from_its_own_stats():
    """Objective.metric_stats / metric_value (engine layout (K, n), quantize's sums) == fedmine.metrics."""
    for objective in OBJECTIVES:
        y, raw = labels_and_raw(objective, 2000, seed=5)
        obj = make_objective(objective, num_class=K, tweedie_variance_power=RHO)
        score = np.ascontiguousarray(raw.T) if objective == "multiclass" else raw[None, :]
        for metric in metrics.ENGINE_METRICS[objective]:
            value = obj.metric_value(metric, obj.metric_stats(metric, y, score), len(y))
            if metric == "auc":
                want = metrics.auc_from_histograms(metrics.auc_histograms(y, raw))
            else:
                want = mean_metric(metric, objective, [(y, raw)])
            assert value == want, (objective, metric)
            if metric in metrics.METRICS[objective]:
                assert value == metrics.from_sums(metrics.sums(y, raw, objective), objective)[metric]


def test_exact_sums_are_exact():
    rng = np.random.default_rng(0)
    v = np.concatenate(
        [
            rng.normal(size=500) * 10.0 ** rng.integers(-300, 300, 500),
            [5e-324, -5e-324, 1e308, -1e308, 1.0, -1.0 + 2**-52, 2.0**-1074 * 3],
        ]
    )
    rng.shuffle(v)
    assert metrics.exact_total(metrics.exact_sum_parts(v)) == math.fsum(v)
    parts = [metrics.exact_sum_parts(v[i]) for i in random_parts(len(v), rng, 5)]
    assert metrics.exact_total(sum(parts)) == math.fsum(v)
    assert metrics.exact_total(metrics.exact_sum_parts([0.1] * 10)) == 1.0
    assert metrics.exact_total(metrics.exact_sum_parts([])) == 0.0
    assert metrics.exact_total(metrics.exact_sum_parts([1e308] * 4)) == math.inf  # too large for a float
    assert metrics.exact_sum_parts(v).dtype == np.int64
    # values that are not finite make the sum so, and stay so when merged
    inf = metrics.exact_sum_parts([1.0, np.inf])
    assert metrics.exact_total(inf) == math.inf
    assert metrics.exact_total(inf + metrics.exact_sum_parts([2.0])) == math.inf
    with np.errstate(invalid="ignore"):
        assert math.isnan(metrics.exact_total(inf + metrics.exact_sum_parts([-np.inf])))


def test_auc_sums_are_small_for_a_small_validation_set():
    y, raw = labels_and_raw("binary", 200)
    s = metrics.sums(y, raw, "binary")
    assert s["auc"].shape[1] <= 200 and s["auc"].dtype == np.int32
    assert np.array_equal(metrics._dense(s["auc"]), metrics.auc_histograms(y, raw))


def test_empty_rows():
    assert metrics.exact(np.zeros(0), np.zeros(0), "binary") == {}
    assert metrics.from_sums(metrics.merge([]), "binary") == {}
    empty = metrics.sums(np.zeros(0), np.zeros((0, K)), "multiclass")
    y, raw = labels_and_raw("multiclass", 300)
    full = metrics.sums(y, raw, "multiclass")
    assert metrics.from_sums(metrics.merge([empty, full]), "multiclass") == metrics.from_sums(full, "multiclass")


# -- a class absent ------------------------------------------------------------


def test_auc_is_nan_when_a_class_is_absent_everywhere():
    p = np.linspace(0.1, 0.9, 20)
    for y in (np.zeros(20), np.ones(20)):
        raw = np.log(p / (1 - p))
        assert math.isnan(metrics.auc(y, p))
        assert math.isnan(metrics.exact(y, raw, "binary")["auc"])
        assert math.isnan(metrics.from_sums(metrics.sums(y, raw, "binary"), "binary")["auc"])
        obj = make_objective("binary")
        assert math.isnan(obj.metric_value("auc", obj.metric_stats("auc", y, raw[None, :]), 20))
        assert math.isnan(metrics.AUC_UNDEFINED)
    # one organisation without positives: the federation's AUC is still defined
    y = np.r_[np.zeros(20), np.ones(10), np.zeros(10)]
    raw = np.linspace(-2, 2, 40)
    merged = metrics.from_sums(
        metrics.merge([metrics.sums(y[:20], raw[:20], "binary"), metrics.sums(y[20:], raw[20:], "binary")]), "binary"
    )
    assert 0.0 <= merged["auc"] <= 1.0


def test_early_stopping_on_auc_with_one_class_keeps_the_first_round():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3))
    y = (X[:, 0] + rng.normal(size=600) > 0).astype(float)
    params = dict(
        objective="binary", metric="auc", num_boost_round=20, early_stopping_rounds=3, num_leaves=4, min_data_in_leaf=5
    )
    model = train_partitioned(
        [(X[:300], y[:300]), (X[300:], y[300:])], params, valid_parts=[(X[:50], np.zeros(50)), (X[50:80], np.zeros(30))]
    )
    assert len(model.history) == 4 and all(math.isnan(v) for v in model.history)
    assert model.best_iteration == 1


# -- early stopping == logged ----------------------------------------------------

ENGINE_CASES = [(o, m) for o in OBJECTIVES for m in metrics.ENGINE_METRICS[o]]


def engine_rows(objective, n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    f = X[:, 0] - 0.5 * X[:, 1] + 0.3 * X[:, 2] * X[:, 3]
    if objective == "binary":
        y = (rng.random(n) < 1 / (1 + np.exp(-2 * f))).astype(float)
    elif objective == "multiclass":
        y = np.digitize(f + 0.3 * rng.normal(size=n), [-0.7, 0.0, 0.7]).astype(float)
    elif objective == "regression":
        y = 2 * f + 0.3 * rng.normal(size=n)
    else:
        y = rng.poisson(np.exp(0.5 * f)).astype(float) * (rng.gamma(2.0, 1.0, n) if objective == "tweedie" else 1.0)
    return X, y


@pytest.mark.parametrize(("objective", "metric"), ENGINE_CASES, ids=[f"{o}-{m}" for o, m in ENGINE_CASES])
def test_engine_history_is_the_metric_of_its_validation_predictions(objective, metric):
    X, y = engine_rows(objective, 1200, 0)
    Xv, yv = engine_rows(objective, 700, 1)
    params = dict(
        objective=objective,
        metric=metric,
        num_boost_round=5,
        num_leaves=8,
        min_data_in_leaf=10,
        learning_rate=0.3,
        tweedie_variance_power=RHO,
        **({"num_class": K} if objective == "multiclass" else {}),
    )
    cut, vcut = [0, 500, 900, 1200], [0, 100, 450, 700]
    model = train_partitioned(
        [(X[a:b], y[a:b]) for a, b in pairwise(cut)],
        params,
        valid_parts=[(Xv[a:b], yv[a:b]) for a, b in pairwise(vcut)],
    )
    kt = model.n_trees_per_round
    assert len(model.history) == 5
    for r, value in enumerate(model.history, start=1):
        scores = predict_raw(model.trees[: r * kt], Xv, n_trees_per_round=kt, init_scores=model.init_scores)
        raw = scores[0] if kt == 1 else scores.T
        parts = [(yv[a:b], raw[a:b]) for a, b in pairwise(vcut)]
        if metric in metrics.METRICS[objective]:  # what the coordinator logs as eval/<metric>
            logged = metrics.from_sums(metrics.merge([metrics.sums(*p, objective) for p in parts]), objective)[metric]
        else:
            logged = mean_metric(metric, objective, parts)
        assert value == logged, (r, value, logged)


@pytest.mark.parametrize("objective", ["binary", "regression"])
def test_histogram_strategy_logs_the_value_the_engine_early_stops_on(objective):
    """The coordinator's logged eval/<primary> per round is the engine's own early-stopping value on the pooled rows."""
    from fedmine.config import config_from_dict
    from fedmine.coordinator.training import Coordinator
    from fedmine.gbdt.booster import train
    from fedmine.gbdt.state import EngineState
    from fedmine.party.organisation import Party, TrainValidRows, global_row_ids

    X, y = engine_rows(objective, 1500, 2)
    orgs = ["bank", "clinic", "shop"]
    cfg = config_from_dict(
        {
            "name": "t",
            "label": "y",
            "objective": objective,
            "features": {f"f{i}": {} for i in range(4)},
            "organisations": {o: {"source": f"{o}.csv"} for o in orgs},
            "training": {
                "strategy": "histogram",
                "rounds": 60,
                "num_leaves": 7,
                "min_data_in_leaf": 10,
                "learning_rate": 0.5,
                "early_stopping_rounds": 2,
                "validation_fraction": 0.0,
            },
        }
    )
    train_idx, valid_idx, parties = [], [], []
    for o, (a, b) in zip(orgs, [(0, 400), (400, 1000), (1000, 1500)]):
        cut = a + int((b - a) * 0.7)
        train_idx.append(np.arange(a, cut))
        valid_idx.append(np.arange(cut, b))
        parties.append(
            Party(
                o,
                TrainValidRows(X[a:cut], y[a:cut], X[cut:b], y[cut:b]),
                objective=objective,
                num_class=1,
                feature_names=list(cfg.features),
                categorical=[],
            )
        )
    coord = Coordinator(cfg, parties)
    coord.start()
    key = metrics.primary(objective)
    logged = []
    for r in range(1, 61):
        result = coord.run_round(r)
        logged.append(result.global_metrics[key])
        if result.stopped:
            break
    assert r < 60  # stopped early
    ids = np.concatenate([global_row_ids(o, len(i)) for o, i in zip(orgs, train_idx)])
    tr, va = np.concatenate(train_idx), np.concatenate(valid_idx)
    pooled = train(
        EngineState(X[tr], y[tr], row_ids=ids, X_valid=X[va], y_valid=y[va]),
        cfg.training.engine_params(objective, 1, key),
        feature_names=list(cfg.features),
    )
    assert logged == pooled.history


# -- the definitions against scikit-learn and LightGBM ------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_definitions_match_scikit_learn(objective):
    skm = pytest.importorskip("sklearn.metrics")
    y, raw = labels_and_raw(objective, 2000, seed=11)
    p = metrics.transform(raw, objective)
    got = metrics.exact(y, raw, objective)
    kw = {"tweedie_variance_power": RHO} if objective == "tweedie" else {}

    def mean(name):
        return float(np.mean(metrics.row_values(name, y, raw, objective, **kw)))

    if objective == "binary":
        want = {
            "auc": skm.roc_auc_score(y, p),
            "binary_logloss": skm.log_loss(y, p),
            "binary_error": 1.0 - skm.accuracy_score(y, p > 0.5),
        }
    elif objective == "multiclass":
        want = {
            "multi_logloss": skm.log_loss(y, p, labels=range(K)),
            "multi_error": 1.0 - skm.accuracy_score(y, p.argmax(axis=1)),
        }
    else:
        want = {"rmse": skm.root_mean_squared_error(y, p), "l1": skm.mean_absolute_error(y, p)}
        assert mean("l2") == pytest.approx(skm.mean_squared_error(y, p), rel=1e-12)
    if objective == "poisson":  # LightGBM's poisson metric is the deviance less terms of the labels alone
        const = np.mean(np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0) - y)
        assert 2 * (mean("poisson") + const) == pytest.approx(skm.mean_poisson_deviance(y, p), rel=1e-10)
    if objective == "tweedie":
        const = np.mean(y ** (2 - RHO) / ((1 - RHO) * (2 - RHO)))
        assert 2 * (mean("tweedie") + const) == pytest.approx(skm.mean_tweedie_deviance(y, p, power=RHO), rel=1e-10)
    assert set(got) == set(want) == set(metrics.METRICS[objective])
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_class_absent_matches_scikit_learn():
    skm = pytest.importorskip("sklearn.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(skm.roc_auc_score(np.zeros(5), np.linspace(0, 1, 5)))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_definitions_match_lightgbm_record_evaluation(objective):
    X, y = engine_rows(objective, 1500, 4)
    Xv, yv = engine_rows(objective, 600, 5)
    yv = yv.astype(np.float32).astype(np.float64)  # LightGBM holds labels as float32
    params = {
        "objective": objective,
        "num_leaves": 8,
        "learning_rate": 0.3,
        "verbosity": -1,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "tweedie_variance_power": RHO,
        "metric": list(dict.fromkeys(metrics.METRICS[objective] + metrics.ENGINE_METRICS[objective])),
    }
    if objective == "multiclass":
        params["num_class"] = K
    train_set = lgb.Dataset(X, label=y)
    curve: dict = {}
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=4,
        valid_sets=[lgb.Dataset(Xv, label=yv, reference=train_set)],
        callbacks=[lgb.record_evaluation(curve)],
    )
    kw = {"tweedie_variance_power": RHO} if objective == "tweedie" else {}
    for it in range(4):
        raw = booster.predict(Xv, raw_score=True, num_iteration=it + 1)
        ours = metrics.exact(yv, raw, objective)
        for name in params["metric"]:
            value = (
                ours[name]
                if name in ours
                else metrics.value_from_mean(name, float(np.mean(metrics.row_values(name, yv, raw, objective, **kw))))
            )
            assert value == pytest.approx(curve["valid_0"][name][it], rel=1e-9, abs=1e-12), (name, it)
