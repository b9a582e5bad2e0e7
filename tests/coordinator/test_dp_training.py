"""Differential privacy in the histogram strategy: calibrated, accounted every round, budget enforced."""

from __future__ import annotations

import itertools

import lightgbm as lgb
import numpy as np
import pytest
from dp_accounting import rdp

from fedmine.coordinator.training import Coordinator
from fedmine.privacy.accountant import skellam_rdp
from tests.coordinator.test_histogram_strategy import ORGS, cfg_for, make_rows, partition
from tests.coordinator.test_secure_training import parties_for


def train(epsilon, rounds=6, **privacy):
    X, y = make_rows("binary", n=3000, seed=4)
    parts = partition(y, 3, "iid")
    cfg = cfg_for("binary", ORGS[:3], rounds=rounds, num_leaves=7)
    cfg.privacy.epsilon = epsilon
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
    # a direct dp_accounting computation for the same mechanism and number of releases
    strategy = coord.strategy
    sens = strategy.trainer.sensitivity
    releases = strategy.trainer.releases_
    orders = np.arange(2, 257)
    curve = skellam_rdp(strategy.noise_multiplier, sens, orders) * releases
    direct, _ = rdp.rdp_privacy_accountant.compute_epsilon(orders, curve, coord.cfg.privacy.delta)
    assert receipt["epsilon_total"] == pytest.approx(direct, rel=1e-9)
    assert receipt["releases"] == releases


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
    import fedmine.privacy.dp as dp

    calibrate = dp.calibrate
    monkeypatch.setattr(dp, "calibrate", lambda eps, delta, releases, sens: calibrate(eps, delta, releases // 4, sens))
    coord, results, _, _ = train(1.0, rounds=12)
    assert results[-1].stopped and len(results) < 12
    assert any("privacy budget: stopped before round" in n for n in coord.notices)
    assert coord.receipt().epsilon_total <= 1.0
    assert lgb.Booster(model_str=coord.model_text()).num_trees() == len(results) - 1
