"""The leaf method: budget-free random trees, noisy leaf sums, Newton leaves, every release accounted."""

from __future__ import annotations

import itertools

import lightgbm as lgb
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from fedmine.coordinator.training import Coordinator
from fedmine.errors import ConfigError
from fedmine.gbdt.binning import bin_columns, edges_from_grid_counts, grid_counts
from fedmine.gbdt.predictor import predict_raw, tree_values_binned, tree_values_binned_numpy
from fedmine.metrics import auc
from fedmine.party.organisation import Party, TrainValidRows
from fedmine.party.policy import PartyPolicy
from fedmine.privacy import leaf
from fedmine.privacy.accountant import SKELLAM_ORDERS, Sensitivity, skellam_rdp
from fedmine.privacy.dp import LABEL_TOTALS_SHARE, label_totals_sensitivity
from tests.coordinator.test_histogram_strategy import ORGS, cfg_for, make_rows, partition


def mapper_for(X, categorical):
    ranges = np.stack([np.nanmin(X, axis=0), np.nanmax(X, axis=0)], axis=1)
    grids = leaf.dp_grids(ranges, n_grid=64)
    mask = np.zeros(X.shape[1], dtype=bool)
    mask[categorical] = True
    return edges_from_grid_counts(grid_counts(X, grids, categorical=mask), grids, max_bin=16, categorical=mask)


def test_a_random_tree_sends_every_row_to_one_leaf_and_its_leaves_are_numbered_left_to_right():
    X, _ = make_rows("binary", n=500, seed=1)
    mapper = mapper_for(X, [3])
    rng = np.random.default_rng(5)
    bins = bin_columns(X, mapper)
    rows = np.arange(X.shape[0], dtype=np.int64)
    seen_categorical = False
    for _ in range(20):
        tree = leaf.random_tree(rng, mapper, depth=3, features=np.flatnonzero(mapper.n_bins >= 2))
        nd = tree.nodes
        assert len(nd) == 15 and tree.n_leaves == 8
        assert sorted(nd["value"][tree.leaf_ids()].tolist()) == list(range(8))
        inner = nd[nd["is_leaf"] == 0]
        numeric = inner[inner["is_categorical"] == 0]
        assert np.all(numeric["bin_threshold"] < mapper.n_bins[numeric["feature"]] - 1)
        seen_categorical |= bool(inner["is_categorical"].any())
        fast = tree_values_binned(tree, bins, rows, mapper.max_bin)
        assert np.array_equal(fast, tree_values_binned_numpy(tree, bins, rows, mapper.max_bin))
        assert set(np.unique(fast)) <= set(range(8))
    assert seen_categorical


def test_a_one_feature_tree_puts_each_row_in_the_leaf_of_its_run_of_bins():
    X, _ = make_rows("binary", n=500, seed=1)
    X[::17, 0] = np.nan
    mapper = mapper_for(X, [3])
    bins = bin_columns(X, mapper)
    rows = np.arange(X.shape[0], dtype=np.int64)
    k = int(mapper.n_bins[0])
    cuts = leaf.mass_thresholds(np.ones(k), 4)
    assert cuts is not None and cuts.size == 3 and leaf.mass_thresholds(np.ones(k), k) is None
    tree = leaf.feature_tree(mapper, 0, thresholds=cuts)
    assert tree.n_leaves == 4 and set(tree.nodes["feature"][tree.nodes["is_leaf"] == 0]) == {0}
    got = tree_values_binned(tree, bins, rows, mapper.max_bin)
    b = bins[0].astype(np.int64)
    want = np.where(b == mapper.max_bin, 3, np.searchsorted(cuts, b, side="left"))  # bin <= t goes left
    assert np.array_equal(got, want) and np.array_equal(got, tree_values_binned_numpy(tree, bins, rows, mapper.max_bin))
    every = leaf.feature_tree(mapper, 0)  # no thresholds: one leaf per bin
    assert np.array_equal(tree_values_binned(every, bins, rows, mapper.max_bin), np.minimum(b, k - 1))
    cat = leaf.feature_tree(mapper, 3)
    kc = int(mapper.n_bins[3])
    assert cat.n_leaves == kc and cat.cat_bitsets.shape[0] == kc - 1
    codes = bins[3].astype(np.int64)
    assert np.array_equal(tree_values_binned(cat, bins, rows, mapper.max_bin), np.minimum(codes, kc - 1))


def test_runs_of_bins_have_about_equal_mass_and_bins_of_noise_alone_join_a_neighbour():
    assert leaf.mass_thresholds(np.ones(16), 4).tolist() == [3, 7, 11]
    assert leaf.mass_thresholds(np.array([1.0, 1, 1, 1, 4, 4, 4, 4]), 4).tolist() == [
        3,
        4,
        6,
    ]  # cumulative 4, 8, 16 nearest 5, 10, 15
    coded = np.array([9.0, 0, 0, 19, 0, 49, 0, 0, 12, 0, 9, 2])  # a coded feature: cells between values are empty
    assert leaf.mass_thresholds(coded, 8).tolist() == [0, 3, 5, 8, 10]  # one leaf per value, every value kept apart
    assert leaf.mass_thresholds(np.zeros(5), 3) is None


def test_one_feature_trees_export_as_lightgbm_trees_that_predict_what_the_engine_predicts():
    coord, *_ = leaf_training(1.0, rounds=6)
    model = coord.strategy.trainer.finish()
    X, _ = make_rows("binary", n=800, seed=9)
    X[::13, 1] = np.nan
    used = [int(np.unique(t.nodes["feature"][t.nodes["is_leaf"] == 0])[0]) for t in model.trees]
    assert used == [0, 1, 2, 3, 4, 0]  # one feature per round, in turn
    booster = lgb.Booster(model_str=coord.model_text())
    assert booster.num_trees() == 6
    ours = predict_raw(model.trees, X, init_scores=model.init_scores)
    assert np.allclose(booster.predict(X, raw_score=True), np.ravel(ours), atol=1e-9)


def test_newton_values_are_shrunk_clipped_and_finite_without_hessian():
    g = np.array([-10.0, 10.0, 1e9, 5.0])
    h = np.array([10.0, -3.0, 0.0, 40.0])
    v = leaf.newton_values(g, h, lambda_l2=10.0, learning_rate=0.5)
    assert v[0] == pytest.approx(0.5 * 10 / 20) and v[1] == pytest.approx(-0.5 * 10 / 10)
    assert v[2] == -0.5 * leaf.MAX_LEAF_VALUE and v[3] == pytest.approx(-0.5 * 5 / 50)


def test_field_shares_keep_the_release_at_noise_multiplier_z():
    sens = leaf.leaf_sensitivity(3, grad_bound=1.0, hess_bound=0.25, grad_scale=4096.0, hess_scale=16384.0)
    var = sens.variances(7.0)
    c, b = np.array(sens.coords, float), np.array(sens.bounds, float)
    assert np.sum(c * b * b / var) == pytest.approx(1 / 49.0)
    assert var[1] / (b[1] ** 2) > var[0] / (b[0] ** 2)  # the hessian, with its smaller share, gets more noise
    plain = Sensitivity(("grad", "hess"), (3, 3), (4096, 4096))
    assert np.allclose(plain.variances(7.0), 49.0 * 4096.0**2 * 6)
    with pytest.raises(ValueError, match="shares must be one positive number per field summing to 1"):
        Sensitivity(("a", "b"), (1, 1), (1, 1), shares=(0.5, 0.6))


def test_dp_grids_are_uniform_on_narrow_ranges_and_fine_near_zero_on_wide_ones():
    g = leaf.dp_grids(np.array([[-2.0, 8.0], [0.0, 1e6]]), n_grid=10)
    assert np.allclose(g[0], np.arange(-1.0, 9.0))
    assert np.all(np.diff(g[1]) > 0) and g[1, -1] == 1e6 and g[1, 0] < 1e6 / 20


def declared_cfg(X, rounds, epsilon, **privacy):
    cfg = cfg_for("binary", ORGS[:3], rounds=rounds)
    for i, name in enumerate(cfg.features):
        if cfg.features[name].type != "category":
            cfg.features[name].min = float(np.floor(np.nanmin(X[:, i])))
            cfg.features[name].max = float(np.ceil(np.nanmax(X[:, i])))
    cfg.privacy.epsilon = epsilon
    for k, v in privacy.items():
        setattr(cfg.privacy, k, v)
    return cfg


def leaf_training(epsilon, rounds=8, **privacy):
    X, y = make_rows("binary", n=4000, seed=4)
    parts = partition(y, 3, "iid")
    cfg = declared_cfg(X, rounds, epsilon, **privacy)
    parties = [
        Party(
            o,
            TrainValidRows(X[i], y[i], X[i][:50], y[i][:50]),
            objective="binary",
            num_class=1,
            feature_names=list(cfg.features),
            categorical=[3],
            policy=PartyPolicy.from_config(cfg, o),
        )
        for o, i in zip(cfg.organisations, parts)
    ]
    coord = Coordinator(cfg, parties)
    coord.start()
    results = [coord.run_round(r) for r in range(1, rounds + 1)]
    return coord, results, X, y


def test_leaf_training_spends_exactly_its_budget_on_bins_and_leaves_and_says_so():
    coord, results, X, _ = leaf_training(1.0)
    strategy = coord.strategy
    assert strategy.dp_method == "leaf"
    eps = [r.stats["privacy/epsilon"] for r in results]
    assert all(b > a for a, b in itertools.pairwise(eps)) and eps[-1] <= 1.0
    receipt = coord.receipt().as_dict()
    assert receipt["param.dp_method"] == "leaf" and receipt["param.release.leaf_sums.count"] == 8
    assert receipt["param.release.bins.count"] == 1
    assert receipt["param.release.bins.budget_share"] == pytest.approx(leaf.BIN_SHARE, rel=1e-6)
    assert receipt["param.leaf_trees"] == "cyclic"
    assert receipt["param.default.lambda_l2"] == leaf.DEFAULTS["cyclic"]["lambda_l2"]
    assert "param.default.num_leaves" not in receipt  # the config's own num_leaves (7) is kept
    assert receipt["param.release.label_totals.budget_share"] == pytest.approx(LABEL_TOTALS_SHARE, rel=1e-6)
    assert receipt["covers"].startswith(
        "every release of the rows to the coordinator, noised: label_totals (1, 2.0%), bins (1, 10.0%), "
        "leaf_sums (8, 88.0%); validation sums: not released"
    )
    # a direct computation: the label totals', the bins' and 8 leaf releases, composed by dp_accounting
    bins_z = receipt["param.release.bins.noise_multiplier"]
    label_z = receipt["param.release.label_totals.noise_multiplier"]
    curve = 8 * skellam_rdp(strategy.noise_multiplier, strategy.trainer.sensitivity, SKELLAM_ORDERS)
    curve = curve + skellam_rdp(bins_z, leaf.bin_sensitivity(X.shape[1]), SKELLAM_ORDERS)
    curve = curve + skellam_rdp(label_z, label_totals_sensitivity("binary"), SKELLAM_ORDERS)
    direct, _ = rdp_privacy_accountant.compute_epsilon(SKELLAM_ORDERS, curve, 1e-6)
    assert receipt["epsilon_total"] == pytest.approx(direct, rel=1e-9) and direct <= 1.0
    assert receipt["epsilon_total"] > 0.99  # calibrated to the budget, not below it
    booster = lgb.Booster(model_str=coord.model_text())
    assert booster.num_trees() == 8 and np.isfinite(booster.predict(X)).all()


@pytest.mark.parametrize("trees", leaf.TREES)
def test_leaf_training_learns_and_more_budget_learns_more(trees):
    """Every party draws fresh noise, so the tight run's AUC varies: at epsilon 0.05 it reached 0.72 once
    (12 runs of each kind: 0.43-0.68); at 0.01, 0.42-0.62, well below the loose run's 0.77 less 0.05."""
    loose, _, X, y = leaf_training(1e5, rounds=12, leaf_trees=trees)
    tight, *_ = leaf_training(0.01, rounds=12, leaf_trees=trees)
    assert loose.receipt().as_dict()["param.leaf_trees"] == trees
    a_loose = auc(y, lgb.Booster(model_str=loose.model_text()).predict(X))
    a_tight = auc(y, lgb.Booster(model_str=tight.model_text()).predict(X))
    assert a_loose > 0.72 and a_loose > a_tight + 0.05


def test_a_party_sends_no_leaf_sum_without_its_noise_share():
    coord, *_ = leaf_training(1.0, rounds=1)
    party = coord.parties[0]
    party.engine_state()._noise = None
    with pytest.raises(Exception, match=r"party bank: leaf_sums refused: .*privacy.epsilon=1; no leaf sum leaves"):
        party.call("leaf_sums", [], np.ones(1), np.ones(1))


def test_the_leaf_method_needs_declared_ranges():
    X, y = make_rows("binary", n=600, seed=4)
    cfg = cfg_for("binary", ORGS[:3], rounds=2)
    cfg.privacy.epsilon = 1.0
    cfg.privacy.dp_method = "leaf"
    parts = partition(y, 3, "iid")
    parties = [
        Party(
            o,
            TrainValidRows(X[i], y[i], X[i][:0], y[i][:0]),
            objective="binary",
            num_class=1,
            feature_names=list(cfg.features),
            categorical=[3],
        )
        for o, i in zip(cfg.organisations, parts)
    ]
    with pytest.raises(ConfigError, match=r"features.f0.min and .max: required with privacy.epsilon .*f0, f1, f2, f4"):
        Coordinator(cfg, parties).start()
