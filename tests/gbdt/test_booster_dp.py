"""Differential privacy in the engine: scales, clipping, noise shares, clamping, releases."""

from __future__ import annotations

import numpy as np
import pytest

from fedmine.errors import ConfigError
from fedmine.gbdt import EngineGroup, EngineState, binning, make_params, predict, to_lightgbm_text
from fedmine.gbdt.booster import Trainer, train_partitioned, train_pooled
from fedmine.gbdt.objectives import make_objective
from fedmine.gbdt.rows import split_node_id
from fedmine.gbdt.state import ProtocolError
from fedmine.privacy import dp
from fedmine.privacy.noise import DEFAULT_ROW_BITS, DPConfig, dp_bounds, max_exchanges_per_round
from fedmine.protocol import CALLS

N = 1200
PARAMS = dict(num_boost_round=5, num_leaves=8, learning_rate=0.3, min_data_in_leaf=10, max_bin=31, seed=1)


def _data(objective="binary", n=N, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    X[rng.random(n) < 0.1, 0] = np.nan
    X[:, 3] = rng.integers(0, 6, n).astype(float)
    lin = X[:, 1] + np.nan_to_num(X[:, 0], nan=1.0) + np.isin(X[:, 3], [1, 4]) * 1.5
    if objective == "binary":
        y = (lin + rng.normal(size=n) > 0.5).astype(float)
    elif objective == "multiclass":
        y = np.digitize(lin + rng.normal(size=n) * 0.3, [-0.5, 0.5, 1.5]).astype(float)
    elif objective == "regression":
        y = 3.0 * lin + rng.normal(size=n)
    else:  # poisson
        y = rng.poisson(np.exp(0.4 * lin)).astype(float)
    return X, y


DP = {
    "binary": DPConfig(),
    "multiclass": DPConfig(),
    "regression": DPConfig(grad_bound=2.0),
    "poisson": DPConfig(grad_bound=3.0, hess_bound=4.0),
}


def _params(objective):
    return {**PARAMS, "objective": objective, **({"num_class": 4} if objective == "multiclass" else {})}


def _parts(X, y, k):
    idx = np.array_split(np.random.default_rng(k).permutation(y.size), k)
    return [(X[i], y[i]) for i in idx], [i.astype(np.uint64) for i in idx]


def _same(a, b):
    return (
        len(a.trees) == len(b.trees)
        and all(np.array_equal(ta.nodes, tb.nodes) for ta, tb in zip(a.trees, b.trees))
        and to_lightgbm_text(a) == to_lightgbm_text(b)
    )


def _auc(y, p):
    order = np.argsort(p, kind="stable")
    ranks = np.empty(y.size)
    ranks[order] = np.arange(1, y.size + 1)
    pos = y > 0.5
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


@pytest.mark.parametrize("objective", ["binary", "multiclass", "regression", "poisson"])
def test_dp_without_noise_federated_equals_pooled(objective):
    X, y = _data(objective)
    params = _params(objective)
    pooled = train_pooled(X, y, params, categorical=[3], dp=DP[objective])
    parts, ids = _parts(X, y, 3)
    fed = train_partitioned(parts, params, categorical=[3], row_ids=ids, dp=DP[objective])
    assert _same(pooled, fed)
    assert all(np.isfinite(t.nodes["value"]).all() for t in fed.trees)


def test_dp_scales_clipping_and_unpacked_accumulators():
    X, y = _data("regression")
    party = EngineState(X, y)
    trainer = Trainer(party, _params("regression"), categorical=[3], dp=DPConfig(grad_bound=0.5, row_bits=10))
    trainer.start()
    assert np.array_equal(trainer._bounds, [[0.5, 1.0]])  # the clips, not the rows' maxima
    assert np.abs(party._g_float).max() <= 0.5
    s_g, s_h = dp.dp_scale(0.5, n_total=N, row_bits=10), dp.dp_scale(1.0, n_total=N, row_bits=10)
    assert trainer._dp_scales == (s_g, s_h) == (2.0**11, 2.0**10)
    trainer.step()
    assert party._count_bits == 0
    g, h = party._g, party._h
    assert np.abs(g).max() == 2**10 and h.min() >= 0 and h.max() == 2**10  # clipped rows hit the bound
    trainer.finish()


def test_poisson_hessians_clipped_and_bounds_required():
    X, y = _data("poisson")
    party = EngineState(X, y)
    trainer = Trainer(party, _params("poisson"), dp=DPConfig(grad_bound=1.0, hess_bound=0.5))
    trainer.start()
    assert party._h_float.max() <= 0.5 and party._h_float.min() >= 0.0
    assert np.abs(party._g_float).max() <= 1.0
    with pytest.raises(ConfigError, match=r"objective 'regression' under differential privacy needs a gradient bound"):
        Trainer(EngineState(X, y), _params("regression"), dp=DPConfig()).start()
    with pytest.raises(ConfigError, match=r"objective 'poisson' .* needs a hessian bound \(privacy.hessian_bound\)"):
        Trainer(EngineState(X, y), _params("poisson"), dp={"grad_bound": 1.0}).start()
    with pytest.raises(ConfigError, match=r"privacy.gradient_bound must be a positive finite number or None, got -1"):
        DPConfig(grad_bound=-1)
    with pytest.raises(ConfigError, match=r"unknown DP setting\(s\) \['epsilon'\]"):
        DPConfig.make({"epsilon": 1.0})


def test_natural_bounds_win_when_tighter():
    binary, multi = make_objective("binary"), make_objective("multiclass", num_class=3)
    assert dp_bounds(DPConfig(), binary) == (1.0, 0.25)
    assert dp_bounds(DPConfig(grad_bound=5.0, hess_bound=0.1), binary) == (1.0, 0.1)
    assert dp_bounds(DPConfig(), multi) == (1.0, 0.375)
    assert dp_bounds(DPConfig(grad_bound=2.0), make_objective("regression")) == (2.0, 1.0)
    assert DEFAULT_ROW_BITS == dp.DEFAULT_ROW_BITS


@pytest.mark.parametrize("objective,nodes_per_row", [("binary", 1), ("multiclass", 4)])
def test_sensitivity_is_one_release(objective, nodes_per_row):
    X, y = _data(objective)
    trainer = Trainer(EngineState(X, y), _params(objective), dp=DP[objective])
    trainer.start()
    g, h = dp_bounds(DP[objective], trainer._obj)
    expected = dp.histogram_sensitivity(
        5,
        grad_bound=g,
        hess_bound=h,
        grad_scale=dp.dp_scale(g, n_total=N),
        hess_scale=dp.dp_scale(h, n_total=N),
        nodes_per_row=nodes_per_row,
    )
    assert trainer.sensitivity == expected
    assert trainer.sensitivity.bounds[0] == 2**12 and 2**11 < trainer.sensitivity.bounds[1] <= 2**12
    assert trainer.sensitivity.coords == (5 * nodes_per_row,) * 3
    assert Trainer(EngineState(X, y), _params(objective)).sensitivity is None


class _DisjointChecker(EngineState):
    """A party that checks every release: per tree, the requested nodes share no row."""

    def histograms(self, node_ids):
        seen = {}
        for nid in np.asarray(node_ids).ravel():
            tree, _ = split_node_id(nid)
            rows = set(self.leaf_rows(nid).tolist())
            assert not (seen.setdefault(tree, set()) & rows), "a row is in two nodes of one tree in one release"
            seen[tree] |= rows
        self.requests_.append(len(node_ids))
        return super().histograms(node_ids)


@pytest.mark.parametrize("lookahead", [0, 2, 7])
def test_release_nodes_are_disjoint_per_tree_and_releases_are_counted(lookahead):
    X, y = _data("multiclass")
    party = _DisjointChecker(X, y)
    party.requests_ = []
    params = {
        **_params("multiclass"),
        "lookahead": lookahead,
        "num_leaves": 12,
        "min_data_in_leaf": 5,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
    }
    trainer = Trainer(EngineGroup([party]), params, dp=DPConfig())
    trainer.start()
    before = 0
    while not trainer.done:
        trainer.step()
        assert 1 <= trainer.releases_ - before <= trainer.max_releases_per_round == 11
        before = trainer.releases_
    assert trainer.releases_ == len(party.requests_) == trainer.party.source.exchanges_
    assert max(party.requests_) > 4 if lookahead else max(party.requests_) == 4
    trainer.finish()


def test_max_releases_per_round_is_reached_without_lookahead():
    X, y = _data("binary", n=3000)
    params = {**_params("binary"), "lookahead": 0, "num_leaves": 6, "min_data_in_leaf": 1, "num_boost_round": 1}
    trainer = Trainer(EngineState(X, y), params, dp=DPConfig())
    trainer.start()
    trainer.step()
    assert trainer.releases_ == trainer.max_releases_per_round == max_exchanges_per_round(6) == 5


def test_tiny_noise_gives_the_noise_free_model():
    X, y = _data("binary")
    parts, ids = _parts(X, y, 2)
    params = _params("binary")
    exact = train_partitioned(parts, params, categorical=[3], row_ids=ids, dp=DPConfig())
    # a huge epsilon: calibrate's multiplier for epsilon 1e9 over 100 releases (Skellam's integer surcharge
    # keeps it from vanishing), then a smaller one whose variance is far below one unit
    trainer = Trainer(EngineState(X, y), params, dp=DPConfig())
    trainer.start()
    z = dp.calibrate(1e9, 1e-5, 100, trainer.sensitivity)
    assert trainer.sensitivity.variances(z)[2] < 1e-4 < trainer.sensitivity.variances(z)[0] < 100
    huge_eps = train_partitioned(
        parts, params, categorical=[3], row_ids=ids, dp=DPConfig(), noise_multiplier=z, noise_seed=7
    )
    for ta, tb in zip(exact.trees, huge_eps.trees):  # same trees; sums off by a few units
        for key in ("feature", "bin_threshold", "default_left", "count", "left", "right"):
            assert np.array_equal(ta.nodes[key], tb.nodes[key])
        assert np.allclose(ta.nodes["value"], tb.nodes["value"], rtol=0, atol=1e-2)
    assert len(exact.trees) == len(huge_eps.trees)
    tiny = train_partitioned(
        parts, params, categorical=[3], row_ids=ids, dp=DPConfig(), noise_multiplier=1e-9, noise_seed=7
    )
    assert _same(exact, tiny)  # a variance far below one unit: no draw is ever nonzero


def test_noise_changes_the_model_lowers_auc_and_stays_finite():
    X, y = _data("binary", n=4000)
    Xv, yv = _data("binary", n=3000, seed=1)
    parts, ids = _parts(X, y, 3)
    params = {**_params("binary"), "num_boost_round": 10}
    exact = train_partitioned(parts, params, categorical=[3], row_ids=ids, dp=DPConfig())
    noisy = train_partitioned(
        parts, params, categorical=[3], row_ids=ids, dp=DPConfig(), noise_multiplier=2.0, noise_seed=3
    )
    again = train_partitioned(
        parts, params, categorical=[3], row_ids=ids, dp=DPConfig(), noise_multiplier=2.0, noise_seed=3
    )
    assert not _same(exact, noisy)
    assert _same(noisy, again)  # same seed, same noise
    auc_exact, auc_noisy = _auc(yv, predict(exact, Xv)), _auc(yv, predict(noisy, Xv))
    assert np.isfinite(auc_noisy) and 0.5 < auc_noisy < auc_exact
    assert all(np.isfinite(t.nodes["value"]).all() for t in noisy.trees)


@pytest.mark.parametrize("objective", ["multiclass", "regression"])
def test_heavy_noise_never_makes_nan_or_negative_sums(objective):
    X, y = _data(objective, n=600)
    params = {
        **_params(objective),
        "min_data_in_leaf": 0,
        "min_sum_hessian_in_leaf": 0.0,
        "lambda_l2": 0.0,
        "num_leaves": 16,
    }
    model = train_pooled(X, y, params, categorical=[3], dp=DP[objective], noise_multiplier=30.0, noise_seed=0)
    for t in model.trees:
        nd = t.nodes
        assert np.isfinite(nd["value"]).all() and np.isfinite(nd["hess"]).all() and np.isfinite(nd["gain"]).all()
        assert (nd["count"] >= 0).all() and (nd["sum_hess"] >= 0).all()
    assert np.isfinite(predict(model, X)).all()


def _binned_party(seed=0, row_ids=None):
    X, y = _data("binary", n=500, seed=seed)
    party = EngineState(X, y, row_ids=row_ids)
    ranges = party.feature_ranges()
    grids = binning.make_grids(ranges, n_grid=256)
    counts = party.grid_counts(grids, np.zeros(5, bool))
    mapper = binning.edges_from_grid_counts(counts, grids, max_bin=15, ranges=ranges)
    party.set_bins(mapper)
    party.configure(make_params({"objective": "binary"}), np.zeros(1), grad_clip=1.0, hess_clip=0.25)
    party.begin_round(0, None)
    party.start_trees(0, [2.0**12], [2.0**14], count_bits=0, max_nodes=8)
    return party, mapper


def test_noise_shares_are_reproducible_per_party_and_seed():
    v = np.array([1e4, 1e4, 50.0])
    party, mapper = _binned_party()
    exact = party.histograms([0])

    def noisy(seed, index=0, row_ids=None):
        p, _ = _binned_party(row_ids=row_ids)
        p.set_noise(v, n_parties=3, seed=seed, party_index=index)
        return p.histograms([0]) - exact, p.histograms([0]) - exact

    a1, a2 = noisy(5)
    b1, b2 = noisy(5)
    assert np.array_equal(a1, b1) and np.array_equal(a2, b2)  # same seed, same stream
    assert not np.array_equal(a1, a2)  # every answer gets fresh noise
    assert not np.array_equal(a1, noisy(6)[0])
    assert not np.array_equal(a1, noisy(5, index=1)[0])
    assert not np.array_equal(a1, noisy(5, row_ids=np.arange(500, 1000, dtype=np.uint64))[0])
    assert not np.array_equal(noisy(None)[0], noisy(None)[0])
    # noise only where a row can land: bins below n_bins and the NaN bin
    cells = np.arange(16)[None, :] < mapper.n_bins[:, None]
    cells[:, 15] = True
    assert a1[0][cells].any() and not a1[0][~cells].any()
    # three parties' shares sum to the full variance
    shares = []
    for i in range(3):
        p, _ = _binned_party()
        p.set_noise(v, n_parties=3, seed=11, party_index=i)
        shares.append(np.concatenate([(p.histograms([0]) - exact)[0][cells] for _ in range(20)]))
    total = np.sum(shares, axis=0)
    assert np.allclose(total.var(axis=0), v, rtol=0.15)
    p.set_noise(None, n_parties=3)
    assert np.array_equal(p.histograms([0]), exact)


def test_set_noise_protocol():
    assert "set_noise" in CALLS
    X, y = _data("binary", n=300)
    with pytest.raises(ProtocolError, match="set_noise is not accepted in stage 'created'"):
        EngineState(X, y).set_noise([1.0, 1.0, 1.0], n_parties=1)
    party, _ = _binned_party()
    with pytest.raises(ValueError, match="noise variances must be 3 finite numbers"):
        party.set_noise([1.0, np.nan, 1.0], n_parties=1)
    with pytest.raises(ValueError, match="exceeds"):
        party.set_noise([1.0, 2.0**60, 1.0], n_parties=1)
    with pytest.raises(RuntimeError, match="set_noise needs a differentially private training"):
        Trainer(EngineState(X, y), _params("binary")).set_noise(1.0)
    # before start: kept and sent once the sensitivity is known; inf is no noise
    trainer = Trainer(EngineState(X, y), _params("binary"), dp=DPConfig())
    trainer.set_noise(1.5, 4)
    trainer.start()
    assert trainer.noise_multiplier_ == 1.5 and trainer.party._noise[1] == 1
    assert np.allclose(trainer.party._noise[0], trainer.sensitivity.variances(1.5))
    with pytest.raises(ValueError, match="exceeds"):
        trainer.set_noise(1e6)
    with pytest.raises(ValueError, match="noise seed must be an integer >= 0 or None, got -1"):
        trainer.set_noise(1.0, -1)
    trainer.set_noise(np.inf)
    assert trainer.noise_multiplier_ is None and trainer.party._noise is None


def test_noisy_nan_bin_of_a_full_feature_splits_at_inf_and_exports():
    """Noise reaches the NaN bin of a feature with max_bin bins and no NaN: the split is 'non-NaN left'."""
    lightgbm = pytest.importorskip("lightgbm")
    from fedmine.gbdt.predictor import predict_raw

    X, y = _data("binary", n=600)
    params = {
        **_params("binary"),
        "min_data_in_leaf": 0,
        "min_sum_hessian_in_leaf": 0.0,
        "num_leaves": 16,
        "max_bin": 255,
    }
    model = train_pooled(X, y, params, categorical=[3], dp=DPConfig(), noise_multiplier=30.0, noise_seed=0)
    assert any(np.isinf(t.nodes["threshold"][t.nodes["is_leaf"] == 0]).any() for t in model.trees)
    raw = predict_raw(model.trees, X, n_trees_per_round=1, init_scores=model.init_scores)
    booster = lightgbm.Booster(model_str=to_lightgbm_text(model))
    assert np.allclose(booster.predict(X, raw_score=True), raw.ravel(), rtol=0, atol=1e-9)
