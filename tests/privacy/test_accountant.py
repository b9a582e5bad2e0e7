"""Accountant: the epsilon it reports is dp_accounting's, and the budget check is exact at its edge."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from fedmine.errors import ConfigError
from fedmine.privacy.accountant import SKELLAM_ORDERS, PrivacyAccountant, Sensitivity, skellam_rdp

DELTA = 1e-6
HIST = Sensitivity(fields=("grad", "hess", "count"), coords=(28, 28, 28), bounds=(4096, 1024, 1))


def rdp_gaussian_epsilon(spends, delta=DELTA):
    acc = dp_accounting.rdp.RdpAccountant()
    for z, count in spends:
        acc.compose(dp_accounting.GaussianDpEvent(z), count)
    return acc.get_epsilon(delta)


def skellam_rdp_twin(z, sens, alpha):
    """Agarwal, Kairouz, Liu 2021, Corollary 3.6, one order, written out per field."""
    m = sum(sens.coords)
    gauss = s1 = s2 = 0.0
    for c, b in zip(sens.coords, sens.bounds):
        mu = z * z * b * b * m
        gauss += c * alpha * b * b / (2 * mu)
        s1 += c * ((2 * alpha - 1) * b * b + 6 * b) / (4 * mu * mu)
        s2 += c * 3 * b / (2 * mu)
    return gauss + min(s1, s2)


# ---------------------------------------------------------------------------
# equal to a direct dp_accounting computation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("z,count", [(0.8, 1), (1.3, 40), (5.0, 1000)])
def test_gaussian_rdp_epsilon_is_dp_accountings(z, count):
    acc = PrivacyAccountant(DELTA, mechanism="gaussian")
    acc.spend(z, count)
    assert acc.epsilon() == pytest.approx(rdp_gaussian_epsilon([(z, count)]), rel=1e-12)
    assert acc.releases_ == count


def test_gaussian_rdp_composes_different_noise():
    acc = PrivacyAccountant(DELTA, mechanism="gaussian")
    spends = [(1.0, 3), (2.0, 5), (2.0, 2), (0.7, 1)]
    for z, c in spends:
        acc.spend(z, c)
    assert acc.ledger_ == [(1.0, 3, None), (2.0, 7, None), (0.7, 1, None)]
    assert acc.epsilon() == pytest.approx(rdp_gaussian_epsilon(spends), rel=1e-12)


def test_gaussian_pld_epsilon_is_dp_accountings():
    acc = PrivacyAccountant(DELTA, mechanism="gaussian", accounting="pld")
    acc.spend(2.0, 10)
    direct = dp_accounting.pld.PLDAccountant()
    direct.compose(dp_accounting.GaussianDpEvent(2.0), 10)
    assert acc.epsilon() == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    assert acc.epsilon() < rdp_gaussian_epsilon([(2.0, 10)])  # PLD is the tighter of the two


def test_skellam_epsilon_is_dp_accountings_zcdp_when_the_small_variance_branch_holds():
    # variance mu = z**2 < 1: the bound is alpha / (2 z**2) + 3 / (2 mu) at every order, i.e. (xi, rho)-zCDP
    sens, z, count = Sensitivity(("count",), (1,), (1,)), 0.5, 7
    acc = PrivacyAccountant(DELTA, sensitivity=sens)
    acc.spend(z, count)
    direct = dp_accounting.rdp.RdpAccountant(orders=SKELLAM_ORDERS)
    direct.compose(dp_accounting.ZCDpEvent(rho=1 / (2 * z * z), xi=3 / (2 * z * z)), count)
    assert acc.epsilon() == pytest.approx(direct.get_epsilon(DELTA), rel=1e-12)


@pytest.mark.parametrize("z,count", [(0.9, 1), (3.0, 200), (40.0, 5000)])
def test_skellam_epsilon_is_the_paper_curve_through_dp_accounting(z, count):
    acc = PrivacyAccountant(DELTA, sensitivity=HIST)
    acc.spend(z, count)
    rdp = [count * skellam_rdp_twin(z, HIST, a) for a in SKELLAM_ORDERS]
    assert acc.epsilon() == pytest.approx(
        rdp_privacy_accountant.compute_epsilon(SKELLAM_ORDERS, rdp, DELTA)[0], rel=1e-12
    )
    np.testing.assert_allclose(skellam_rdp(z, HIST), [skellam_rdp_twin(z, HIST, a) for a in SKELLAM_ORDERS], rtol=1e-12)


def test_skellam_tends_to_gaussian_with_fine_units_and_is_never_below_it():
    fine = Sensitivity(("grad", "hess", "count"), (28, 28, 28), (2**20, 2**20, 2**20))
    for z, count in [(1.0, 10), (8.0, 1000)]:
        sk = PrivacyAccountant(DELTA, sensitivity=fine)
        sk.spend(z, count)
        gauss = dp_accounting.rdp.RdpAccountant(orders=SKELLAM_ORDERS)
        gauss.compose(dp_accounting.GaussianDpEvent(z), count)
        assert sk.epsilon() == pytest.approx(gauss.get_epsilon(DELTA), rel=1e-6)
        coarse = PrivacyAccountant(DELTA, sensitivity=HIST)
        coarse.spend(z, count)
        assert coarse.epsilon() >= gauss.get_epsilon(DELTA)


# ---------------------------------------------------------------------------
# the budget
# ---------------------------------------------------------------------------


def test_would_exceed_at_the_boundary():
    acc = PrivacyAccountant(DELTA, sensitivity=HIST)
    acc.spend(4.0, 30)
    after = PrivacyAccountant(DELTA, sensitivity=HIST)
    after.spend(4.0, 40)
    budget = after.epsilon()  # exactly what 10 more releases would reach
    assert not acc.would_exceed(budget, 4.0, 10)
    assert acc.would_exceed(math.nextafter(budget, 0.0), 4.0, 10)
    assert acc.releases_ == 30  # asking does not spend
    acc.spend(4.0, 10)
    assert acc.epsilon() == budget


def test_training_stops_before_the_budget():
    budget, z, per_round = 3.0, 6.0, 12
    acc = PrivacyAccountant(DELTA, sensitivity=HIST)
    rounds = 0
    while not acc.would_exceed(budget, z, per_round):
        acc.spend(z, per_round)
        rounds += 1
    assert 0 < rounds < 1000
    assert acc.epsilon() <= budget
    acc.spend(z, per_round)
    assert acc.epsilon() > budget


def test_no_release_costs_nothing_and_epsilon_of_does_not_spend():
    acc = PrivacyAccountant(DELTA, sensitivity=HIST)
    assert acc.epsilon() == 0.0
    acc.spend(2.0, 0)
    assert acc.epsilon() == 0.0 and acc.ledger_ == []
    one = acc.epsilon_of(2.0, 5)
    assert one > 0 and acc.releases_ == 0
    acc.spend(2.0, 5)
    assert acc.epsilon() == one


def test_sensitivity_norms_and_variances():
    assert HIST.n_coords == 84
    assert HIST.l1 == 28 * (4096 + 1024 + 1)
    assert HIST.l2 == pytest.approx(math.sqrt(28 * (4096**2 + 1024**2 + 1)))
    var = HIST.variances(2.0)
    np.testing.assert_allclose(var, [4 * 4096**2 * 84, 4 * 1024**2 * 84, 4 * 84])
    # every field's share of one row's change, in noise units, adds up to 1 / z**2
    assert np.sum(np.array(HIST.coords) * np.array(HIST.bounds, float) ** 2 / var) == pytest.approx(1 / 4.0)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_accountant_errors():
    with pytest.raises(ConfigError, match=r"privacy.delta must be a number in \(0, 1\), got 0"):
        PrivacyAccountant(0, sensitivity=HIST)
    with pytest.raises(ConfigError, match=r"privacy.delta must be a number in \(0, 1\), got '1e-5'"):
        PrivacyAccountant("1e-5", sensitivity=HIST)
    with pytest.raises(ConfigError, match=r"privacy.mechanism must be one of \['skellam', 'gaussian'\], got 'laplace'"):
        PrivacyAccountant(DELTA, mechanism="laplace")
    with pytest.raises(ConfigError, match=r"privacy.accounting must be one of \['rdp', 'pld'\], got 'zcdp'"):
        PrivacyAccountant(DELTA, mechanism="gaussian", accounting="zcdp")
    with pytest.raises(ConfigError, match=r"privacy.accounting 'pld' is not available for the skellam mechanism"):
        PrivacyAccountant(DELTA, sensitivity=HIST, accounting="pld")
    with pytest.raises(ValueError, match=r"the skellam mechanism needs a Sensitivity, got None"):
        PrivacyAccountant(DELTA)
    acc = PrivacyAccountant(DELTA, sensitivity=HIST)
    with pytest.raises(ValueError, match=r"noise multiplier must be a positive finite number, got 0"):
        acc.spend(0)
    with pytest.raises(ValueError, match=r"noise multiplier must be a positive finite number, got inf"):
        acc.spend(math.inf)
    with pytest.raises(ValueError, match=r"release count must be an integer >= 0, got -1"):
        acc.spend(1.0, -1)
    with pytest.raises(ValueError, match=r"release count must be an integer >= 0, got 2.5"):
        acc.epsilon_of(1.0, 2.5)
    with pytest.raises(ConfigError, match=r"privacy.epsilon must be a positive finite number, got -1"):
        acc.would_exceed(-1, 1.0)


def test_sensitivity_errors():
    with pytest.raises(ValueError, match=r"one coords and one bound per field, got fields=\('a', 'b'\)"):
        Sensitivity(("a", "b"), (1,), (1, 1))
    with pytest.raises(ValueError, match=r"sensitivity bounds must be integers >= 1, got \(0,\)"):
        Sensitivity(("a",), (1,), (0,))
    with pytest.raises(ValueError, match=r"sensitivity coords must be integers >= 1, got \(1.5,\)"):
        Sensitivity(("a",), (1.5,), (1,))
    with pytest.raises(ValueError, match=r"Skellam RDP orders must be integers > 1, got \[1.5, 2\]"):
        skellam_rdp(1.0, HIST, [1.5, 2])
