"""Differential privacy: Skellam shares sum to the calibrated noise; bounds and scales are what they say."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedmine.errors import ConfigError
from fedmine.privacy.accountant import PrivacyAccountant, Sensitivity
from fedmine.privacy.dp import (
    DEFAULT_ROW_BITS,
    MAX_SKELLAM_VARIANCE,
    add_noise_share,
    calibrate,
    clip_gradients,
    clip_hessians,
    dp_scale,
    histogram_sensitivity,
    skellam_noise,
)

DELTA = 1e-6


def assert_moments(sample, variance, z=5.0):
    """Mean 0 and the given variance, within ``z`` standard errors (Skellam: 4th cumulant = variance)."""
    n = sample.size
    assert abs(sample.mean()) < z * math.sqrt(variance / n)
    assert abs(sample.var(ddof=1) - variance) < z * math.sqrt((variance + 2 * variance**2) / n)


def assert_skellam(sample, variance):
    """Chi-square goodness of fit against Skellam(v/2, v/2), tails pooled so every cell expects >= 20."""
    dist = stats.skellam(variance / 2, variance / 2)
    lo, hi = int(dist.ppf(1e-3)), int(dist.isf(1e-3))
    edges = np.arange(lo, hi + 1)
    observed = np.array([np.sum(sample < lo)] + [np.sum(sample == k) for k in edges] + [np.sum(sample > hi)])
    expected = sample.size * np.concatenate([[dist.cdf(lo - 1)], dist.pmf(edges), [dist.sf(hi)]])
    expected *= observed.sum() / expected.sum()
    assert expected.min() >= 20
    assert stats.chisquare(observed, expected).pvalue > 1e-3


# ---------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------


def test_one_party_noise_has_the_asked_variance():
    rng = np.random.default_rng(10)
    for v in (0.5, 3.0, 1e4):
        noise = skellam_noise((200_000,), v, rng=rng)
        assert noise.dtype == np.int64
        assert_moments(noise, v)
    assert_skellam(skellam_noise((100_000,), 3.0, rng=rng), 3.0)


def test_party_shares_sum_to_the_target_distribution():
    rng = np.random.default_rng(11)
    k, v = 5, 12.0
    total = sum(skellam_noise((100_000,), v, n_parties=k, rng=rng) for _ in range(k))
    assert_moments(total, v)
    assert_skellam(total, v)
    one_share = skellam_noise((100_000,), v, n_parties=k, rng=rng)
    assert_moments(one_share, v / k)


def test_calibrated_noise_on_a_histogram_has_the_calibrated_variance():
    rng = np.random.default_rng(12)
    scale_g, scale_h = dp_scale(1.0, n_total=10**5), dp_scale(0.25, n_total=10**5)
    sens = histogram_sensitivity(4, grad_bound=1.0, hess_bound=0.25, grad_scale=scale_g, hess_scale=scale_h)
    z = calibrate(8.0, DELTA, 50, sens)
    var = sens.variances(z)
    hist = rng.integers(-1000, 1000, size=(2, 4, 8_000, 3), dtype=np.int64)
    k = 3
    noisy = [add_noise_share(hist, var, n_parties=k, rng=rng) for _ in range(k)]
    noise = sum(noisy) - k * hist
    for f in range(3):
        assert_moments(noise[..., f].ravel(), var[f])
    # the accountant, fed the calibrated multiplier, confirms the budget
    acc = PrivacyAccountant(DELTA, sensitivity=sens)
    acc.spend(z, 50)
    assert acc.epsilon() <= 8.0


def test_with_a_huge_epsilon_the_noise_is_about_zero():
    rng = np.random.default_rng(13)
    sens = histogram_sensitivity(28, grad_bound=1.0, hess_bound=0.25, grad_scale=4096.0, hess_scale=16384.0)
    z = calibrate(1e6, DELTA, 1, sens)
    var = sens.variances(z)
    noise = add_noise_share(np.zeros((10_000, 3), np.int64), var, n_parties=1, rng=rng)
    assert np.mean(noise[:, 2] != 0) < 0.01  # counts: almost never moved
    assert noise[:, :2].std() < 0.02 * 4096  # grad, hess: a tiny fraction of one row's 4096 units
    assert np.abs(noise[:, :2]).max() < 0.1 * 4096


def test_add_noise_share_leaves_the_histogram_alone():
    hist = np.arange(12, dtype=np.int64).reshape(2, 2, 3)
    before = hist.copy()
    out = add_noise_share(hist, [1.0, 1.0, 0.0], n_parties=2, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(hist, before)
    assert out.shape == hist.shape and out.dtype == np.int64
    np.testing.assert_array_equal(out[..., 2], hist[..., 2])  # zero variance: no noise


def test_noise_errors():
    with pytest.raises(ValueError, match=r"Skellam variance .* exceeds .*: use a coarser fixed-point scale"):
        skellam_noise((2,), 2 * MAX_SKELLAM_VARIANCE)
    with pytest.raises(ValueError, match=r"Skellam variance must be finite and >= 0, got -1"):
        skellam_noise((2,), -1)
    with pytest.raises(ValueError, match=r"n_parties must be an integer >= 1, got 0"):
        skellam_noise((2,), 1.0, n_parties=0)
    with pytest.raises(ValueError, match=r"n_parties must be an integer >= 1, got 2.0"):
        skellam_noise((2,), 1.0, n_parties=2.0)
    with pytest.raises(ValueError, match=r"noise is added to int64 histograms, got float64"):
        add_noise_share(np.zeros((2, 3)), [1, 1, 1], n_parties=1)
    with pytest.raises(
        ValueError,
        match=r"variances of shape \(2,\) do not match the last axis of a histogram "
        r"of shape \(4, 3\)",
    ):
        add_noise_share(np.zeros((4, 3), np.int64), [1, 1], n_parties=1)


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon,releases", [(0.5, 1), (2.0, 100), (8.0, 2000)])
def test_calibrate_is_the_smallest_noise_within_budget(epsilon, releases):
    sens = histogram_sensitivity(28, grad_bound=1.0, hess_bound=1.0, grad_scale=4096.0, hess_scale=4096.0)
    z = calibrate(epsilon, DELTA, releases, sens, rtol=1e-4)
    acc = PrivacyAccountant(DELTA, sensitivity=sens)
    assert acc.epsilon_of(z, releases) <= epsilon
    assert acc.epsilon_of(z * (1 - 2e-4), releases) > epsilon


def test_calibrate_gaussian_needs_no_sensitivity_and_less_noise_than_skellam_on_coarse_units():
    coarse = Sensitivity(("count",), (28,), (1,))
    z_gauss = calibrate(1.0, DELTA, 10, None, mechanism="gaussian")
    z_skellam = calibrate(1.0, DELTA, 10, coarse)
    acc = PrivacyAccountant(DELTA, mechanism="gaussian")
    assert acc.epsilon_of(z_gauss, 10) <= 1.0
    assert z_skellam > z_gauss


def test_calibrate_errors():
    sens = Sensitivity(("count",), (1,), (1,))
    with pytest.raises(ConfigError, match=r"privacy.epsilon must be a positive finite number, got 0"):
        calibrate(0, DELTA, 1, sens)
    with pytest.raises(ConfigError, match=r"privacy.delta must be a number in \(0, 1\), got 1.5"):
        calibrate(1.0, 1.5, 1, sens)
    with pytest.raises(ValueError, match=r"releases must be >= 1, got 0"):
        calibrate(1.0, DELTA, 0, sens)


# ---------------------------------------------------------------------------
# bounds and scales
# ---------------------------------------------------------------------------


def test_clipping():
    np.testing.assert_array_equal(clip_gradients([-5.0, -0.5, 0.0, 2.0], 1.5), [-1.5, -0.5, 0.0, 1.5])
    np.testing.assert_array_equal(clip_hessians([-1.0, 0.3, 9.0], 2.0), [0.0, 0.3, 2.0])
    with pytest.raises(ConfigError, match=r"privacy.gradient_bound must be a positive finite number, got 0"):
        clip_gradients([1.0], 0)
    with pytest.raises(ConfigError, match=r"privacy.gradient_bound must be a positive finite number, got nan"):
        clip_gradients([1.0], float("nan"))
    with pytest.raises(ConfigError, match=r"privacy.hessian_bound must be a positive finite number, got -1"):
        clip_hessians([1.0], -1)


def test_dp_scale_is_the_largest_power_of_two_within_the_row_bits():
    for bound in (1.0, 0.25, 0.3, 3.0, 1e-3, 7.5):
        s = dp_scale(bound, n_total=10**6)
        assert math.frexp(s)[0] == 0.5  # a power of two
        assert bound * s <= 2**DEFAULT_ROW_BITS < bound * s * 2
    assert dp_scale(1.0, n_total=10**6, row_bits=4) == 16.0
    big = dp_scale(1.0, n_total=2**55)  # the overflow rule wins
    assert 2**55 * big < 2**62 <= 2**55 * big * 2
    with pytest.raises(ValueError, match=r"row_bits must be an integer in \[1, 40\], got 0"):
        dp_scale(1.0, n_total=10, row_bits=0)
    with pytest.raises(ConfigError, match=r"gradient bound must be a positive finite number, got inf"):
        dp_scale(math.inf, n_total=10)


def test_histogram_sensitivity_in_fixed_point_units():
    sens = histogram_sensitivity(28, grad_bound=1.0, hess_bound=0.25, grad_scale=4096.0, hess_scale=16384.0)
    assert sens.fields == ("grad", "hess", "count")
    assert sens.coords == (28, 28, 28) and sens.bounds == (4096, 4096, 1)
    multi = histogram_sensitivity(10, grad_bound=2.5, hess_bound=1.0, grad_scale=3.0, hess_scale=1.0, nodes_per_row=3)
    assert multi.coords == (30, 30, 30) and multi.bounds == (8, 1, 1)  # ceil(7.5) = 8
    # the bound holds for every quantised row: |rint(g * s)| <= bound
    g = np.linspace(-2.5, 2.5, 10_001)
    assert np.abs(np.rint(g * 3.0)).max() <= multi.bounds[0]
    with pytest.raises(ValueError, match=r"n_features must be an integer >= 1, got 0"):
        histogram_sensitivity(0, grad_bound=1, hess_bound=1, grad_scale=1, hess_scale=1)
    with pytest.raises(ValueError, match=r"nodes_per_row must be an integer >= 1, got 0"):
        histogram_sensitivity(1, grad_bound=1, hess_bound=1, grad_scale=1, hess_scale=1, nodes_per_row=0)
    with pytest.raises(ConfigError, match=r"hessian bound must be a positive finite number, got 0"):
        histogram_sensitivity(1, grad_bound=1, hess_bound=0, grad_scale=1, hess_scale=1)


def test_noisy_shares_through_secure_aggregation_sum_exactly():
    import warnings

    from fedmine.privacy.secure_agg import Masker, generate_keypair, unmask_sum

    rng = np.random.default_rng(14)
    names = ("north", "south", "east")
    keys = {n: generate_keypair() for n in names}
    public = {n: k.public_bytes for n, k in keys.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # three parties: no warning
        maskers = {n: Masker(n, keys[n], public, "dp+sa") for n in names}
    hists = [rng.integers(-(2**20), 2**20, size=(2, 5, 16, 3), dtype=np.int64) for _ in names]
    noisy = [add_noise_share(h, [1e6, 1e6, 50.0], n_parties=3, rng=rng) for h in hists]
    total = unmask_sum([maskers[n].mask(x, "round-3/level-2") for n, x in zip(names, noisy)])
    np.testing.assert_array_equal(total, np.sum(noisy, axis=0))  # the coordinator gets the noisy sum exactly
    assert not np.array_equal(total, np.sum(hists, axis=0))
