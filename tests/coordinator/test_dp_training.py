"""Differential privacy in the histogram strategy: calibrated, accounted every round, budget enforced."""

from __future__ import annotations

import itertools

import lightgbm as lgb
import numpy as np
import pytest
from dp_accounting import rdp

from fedmine.coordinator.training import Coordinator
from fedmine.privacy.accountant import skellam_rdp
from fedmine.privacy.dp import label_totals_sensitivity
from tests.coordinator.test_histogram_strategy import ORGS, cfg_for, make_rows, partition
from tests.coordinator.test_secure_training import parties_for


def train(epsilon, rounds=6, **privacy):
    """The histogram method (noise on every node histogram), bins from the declared ranges."""
    X, y = make_rows("binary", n=3000, seed=4)
    parts = partition(y, 3, "iid")
    cfg = cfg_for("binary", ORGS[:3], rounds=rounds, num_leaves=7)
    for i, name in enumerate(cfg.features):
        if cfg.features[name].type != "category":
            cfg.features[name].min = float(np.floor(np.nanmin(X[:, i])))
            cfg.features[name].max = float(np.ceil(np.nanmax(X[:, i])))
    cfg.privacy.epsilon = epsilon
    cfg.privacy.dp_method = "histogram"
    for k, v in privacy.items():
        setattr(cfg.privacy, k, v)
    coord = Coordinator(cfg, parties_for(cfg, X, y, parts))
    coord.start()
    results = []
    for r in range(1, rounds + 1):
        results.append(coord.run_round(r))
        if results[-1].stopped:
            break
    return coord, results, X, y


def auc(model_text, X, y):
    from fedmine.metrics import auc as exact_auc

    return exact_auc(y, lgb.Booster(model_str=model_text).predict(X))


def test_epsilon_is_reported_every_round_and_matches_dp_accounting():
    coord, results, _, _ = train(4.0)
    eps = [r.stats["privacy/epsilon"] for r in results]
    assert all(b > a for a, b in itertools.pairwise(eps))  # spent grows every round
    assert eps[-1] <= 4.0
    receipt = coord.receipt().as_dict()
    assert receipt["mechanism"] == "skellam" and receipt["secure_aggregation"] is True
    # a direct dp_accounting computation for the same mechanism and releases: the label totals and the histograms
    strategy = coord.strategy
    sens = strategy.trainer.sensitivity
    releases = strategy.trainer.releases_
    orders = np.arange(2, 257)
    curve = skellam_rdp(strategy.noise_multiplier, sens, orders) * releases
    label_z = receipt["param.release.label_totals.noise_multiplier"]
    curve = curve + skellam_rdp(label_z, label_totals_sensitivity("binary"), orders)
    direct, _ = rdp.rdp_privacy_accountant.compute_epsilon(orders, curve, coord.cfg.privacy.delta)
    assert receipt["epsilon_total"] == pytest.approx(direct, rel=1e-9)
    assert receipt["releases"] == releases + 1
    assert receipt["param.release.histograms.count"] == releases and receipt["param.release.label_totals.count"] == 1


def test_large_epsilon_close_to_no_dp_and_small_epsilon_changes_the_model():
    _, _, X, y = train(None)
    plain, _, _, _ = train(None)
    loose, _, _, _ = train(1e6)
    tight, _, _, _ = train(0.5)
    base_auc = auc(plain.model_text(), X, y)
    assert abs(auc(loose.model_text(), X, y) - base_auc) < 0.01
    assert tight.model_text() != plain.model_text()
    assert np.isfinite(auc(tight.model_text(), X, y))


def test_training_stops_before_the_budget_is_exceeded(monkeypatch):
    """Noise calibrated for a quarter of the releases: the accountant stops training before it overspends."""
    import fedmine.privacy.budget as budget

    calibrate = budget.calibrate
    monkeypatch.setattr(
        budget, "calibrate", lambda eps, delta, releases, sens, **kw: calibrate(eps, delta, releases // 4, sens, **kw)
    )
    coord, results, _, _ = train(1.0, rounds=12)
    assert results[-1].stopped and len(results) < 12
    assert any("privacy budget: stopped before round" in n for n in coord.notices)
    assert coord.receipt().epsilon_total <= 1.0
    assert lgb.Booster(model_str=coord.model_text()).num_trees() == len(results) - 1


def leaf_parties(cfg, X, y, parts):
    from fedmine.party.organisation import Party, TrainValidRows
    from fedmine.party.policy import PartyPolicy

    return [
        Party(
            o,
            TrainValidRows(X[i], y[i], X[i][:40], y[i][:40]),
            objective="binary",
            num_class=1,
            feature_names=list(cfg.features),
            categorical=[3],
            policy=PartyPolicy.from_config(cfg, o),
        )
        for o, i in zip(cfg.organisations, parts)
    ]


def test_a_resumed_dp_run_continues_its_accountant_and_bins_and_draws_fresh_noise():
    """Checkpoint after 2 of 4 rounds, resume in a new coordinator with restarted parties, beside the run going on."""
    import json

    from tests.privacy.test_leaf import declared_cfg

    X, y = make_rows("binary", n=3000, seed=4)
    parts = partition(y, 3, "iid")
    cfg = declared_cfg(X, 4, 1.0)
    first = Coordinator(cfg, leaf_parties(cfg, X, y, parts))
    first.start()
    for r in (1, 2):
        first.run_round(r)
    state, arrays = first.checkpoint()
    state = json.loads(json.dumps(state))  # what the MLflow checkpoint keeps
    resumed = Coordinator(cfg, leaf_parties(cfg, X, y, parts))
    resumed.start(resume=state)
    assert resumed.restore(state, arrays) == 3
    for r in (3, 4):
        first.run_round(r)  # the run as it would have gone on
        resumed.run_round(r)

    acc = resumed.strategy.accountant
    assert not any({"label_totals", "grid_counts"} & link.answered for link in resumed.links)  # nothing released again
    assert (
        acc.ledger_ == first.strategy.accountant.ledger_
    )  # one bin release and 4 leaf releases: no second bin release
    assert resumed.receipt().epsilon_total == pytest.approx(first.receipt().epsilon_total, rel=1e-12)
    assert resumed.receipt().epsilon_total <= 1.0
    a, b = first.strategy.trainer._mapper, resumed.strategy.trainer._mapper
    assert np.array_equal(a.edges, b.edges) and np.array_equal(a.n_bins, b.n_bins)  # the run's own bins
    t_first, t_resumed = first.strategy.trainer.trees_, resumed.strategy.trainer.trees_
    for k in (0, 1):
        assert t_first[k].equal(t_resumed[k])  # replayed as they were
    for k in (2, 3):  # the same structures (the generator continued), other noisy values (fresh noise)
        assert np.array_equal(t_first[k].nodes["feature"], t_resumed[k].nodes["feature"])
        assert np.array_equal(t_first[k].nodes["bin_threshold"], t_resumed[k].nodes["bin_threshold"])
        assert not np.array_equal(t_first[k].nodes["value"], t_resumed[k].nodes["value"])
    assert lgb.Booster(model_str=resumed.model_text()).num_trees() == 4


def test_a_resumed_histogram_dp_run_continues_the_same_ledger():
    coord, _, X, y = train(4.0, rounds=4)
    state, arrays = coord.checkpoint()
    cfg = coord.cfg
    resumed = Coordinator(cfg, parties_for(cfg, X, y, partition(y, 3, "iid")))
    resumed.start(resume=state)
    resumed.restore(state, arrays)
    assert not any("label_totals" in link.answered for link in resumed.links)  # the run's own noisy totals
    assert resumed.n_rows == coord.n_rows and resumed.ensemble.base_score.tolist() == coord.ensemble.base_score.tolist()
    assert resumed.strategy.accountant.ledger_ == coord.strategy.accountant.ledger_
    assert resumed.receipt().epsilon_total == coord.receipt().epsilon_total
