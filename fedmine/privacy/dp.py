"""Differential privacy for integer histograms: bounds, Skellam noise, calibration.

This module owns what a party does to its integer histograms before they are
masked, and the choice of how much noise that takes.

Why Skellam
-----------
The released value is a *sum over parties* of int64 arrays, computed exactly
(secure aggregation works mod 2**64). The noise must therefore be integer, and
its sum over parties must have a distribution we can account for. Symmetric
Skellam noise, ``Poisson(v/2) - Poisson(v/2)`` with variance ``v``, is closed
under addition: if each of ``K`` parties adds Skellam with variance ``v/K``,
the sum carries Skellam with variance ``v`` *exactly* (Agarwal, Kairouz, Liu
2021). The discrete Gaussian (Canonne, Kamath, Steinke 2020) is not: a sum of
discrete Gaussians is only close to one, which would need an extra slack term
in the accounting. Skellam's exact RDP (:mod:`fedmine.privacy.accountant`)
approaches the Gaussian mechanism's as the variance grows.

Sampling uses numpy's Poisson generator (PTRS transformed rejection for means of
10 and more): exact up to floating-point arithmetic, which is why the variance
is capped at :data:`MAX_SKELLAM_VARIANCE`: each Poisson mean stays below
2**51, so every value the sampler handles is an exactly represented double.

What one row can change
-----------------------
With the ``histogram`` strategy a release is one message of node histograms of
shape ``(n_nodes, n_features, n_bins, 3)`` (grad, hess, count). Adding or
removing one row changes, in each node that holds it, one bin per feature:
``|grad| <= ceil(G * s_g)``, ``0 <= hess <= ceil(H * s_h)``, ``count`` by 1
(:func:`histogram_sensitivity`). The nodes of one message are disjoint within a
tree, so a row is in at most one node per tree of the message.

Fixed-point scales under DP
---------------------------
The engine's scales put ``n_total * bound * s`` just below 2**62, i.e. a
single row is worth up to ``2**62 / n_total`` units: far too fine, and a
variance of ``(z * that)**2`` cannot be sampled. Under DP the noise dwarfs any
resolution finer than a fraction of the per-row bound, so :func:`dp_scale`
picks ``s`` with ``bound * s <= 2**row_bits`` (default 2**12).
"""

from __future__ import annotations

import math

import numpy as np

from fedmine.errors import ConfigError
from fedmine.privacy.accountant import (
    GAUSSIAN,
    RDP,
    SKELLAM,
    PrivacyAccountant,
    Sensitivity,
    check_count,
    check_delta,
    check_epsilon,
)

#: Largest Skellam variance sampled: Poisson means up to 2**51 keep every value
#: inside numpy's sampler an exactly represented double.
MAX_SKELLAM_VARIANCE = 2.0**52

#: Default per-row resolution under DP: a row's largest |value| is 2**12 units.
DEFAULT_ROW_BITS = 12

#: Headroom of any fixed-point sum (the same rule as fedmine.gbdt.quantize).
_SUM_BITS = 62

HISTOGRAM_FIELDS = ("grad", "hess", "count")


# ---------------------------------------------------------------------------
# bounds
# ---------------------------------------------------------------------------


def _check_bound(bound, key: str) -> float:
    if isinstance(bound, bool) or not isinstance(bound, (int, float, np.floating)) or not 0.0 < float(bound) < math.inf:
        raise ConfigError(f"{key} must be a positive finite number, got {bound!r}")
    return float(bound)


def clip_gradients(grad, bound: float) -> np.ndarray:
    """Gradients clipped to ``[-bound, bound]`` (regression's bound comes from ``privacy.gradient_bound``).

    Parameters
    ----------
    grad : ndarray of shape (n_rows,) or (n_rows, n_trees), float64
    bound : float > 0

    Returns
    -------
    clipped : ndarray, same shape, float64 (a new array)
    """
    bound = _check_bound(bound, "privacy.gradient_bound")
    return np.clip(np.asarray(grad, dtype=np.float64), -bound, bound)


def clip_hessians(hess, bound: float) -> np.ndarray:
    """Hessians clipped to ``[0, bound]`` (for objectives whose hessian is unbounded).

    Parameters
    ----------
    hess : ndarray of shape (n_rows,) or (n_rows, n_trees), float64
    bound : float > 0

    Returns
    -------
    clipped : ndarray, same shape, float64 (a new array)
    """
    bound = _check_bound(bound, "privacy.hessian_bound")
    return np.clip(np.asarray(hess, dtype=np.float64), 0.0, bound)


def dp_scale(bound: float, *, n_total: int, row_bits: int = DEFAULT_ROW_BITS) -> float:
    """Fixed-point scale under DP: largest power of two ``s`` with ``bound * s <= 2**row_bits``.

    Also keeps ``n_total * bound * s < 2**62`` (no overflow), like the engine's
    own rule, so it is never finer than the engine's scale.

    Parameters
    ----------
    bound : float > 0
        Bound on one row's ``|g|`` (or ``h``), after clipping.
    n_total : int
        Global number of rows.
    row_bits : int
        Resolution: a row is worth at most ``2**row_bits`` units.

    Returns
    -------
    scale : float, a power of two
    """
    bound = _check_bound(bound, "gradient bound")
    if isinstance(row_bits, bool) or not isinstance(row_bits, int) or not 1 <= row_bits <= 40:
        raise ValueError(f"row_bits must be an integer in [1, 40], got {row_bits!r}")
    m, e = math.frexp(bound)  # bound = m * 2**e, 0.5 <= m < 1
    k = row_bits - e + (1 if m == 0.5 else 0)  # the largest k with bound * 2**k <= 2**row_bits
    _, e_tot = math.frexp(max(int(n_total), 1) * bound)
    k = min(k, _SUM_BITS - e_tot)
    return math.ldexp(1.0, k)


def histogram_sensitivity(
    n_features: int,
    *,
    grad_bound: float,
    hess_bound: float,
    grad_scale: float,
    hess_scale: float,
    nodes_per_row: int = 1,
) -> Sensitivity:
    """What one row can change in one histogram release, in fixed-point units.

    Parameters
    ----------
    n_features : int
        Features in each node histogram (one bin per feature holds the row).
    grad_bound, hess_bound : float
        ``|g| <= grad_bound`` and ``0 <= h <= hess_bound`` for every row
        (binary: 1 and 1/4; regression: the clip and 1).
    grad_scale, hess_scale : float
        Fixed-point scales of the round.
    nodes_per_row : int
        Node histograms of one release that can hold the same row: 1 when the
        message's nodes belong to one tree, the number of trees when it
        batches several trees' nodes (multiclass).

    Returns
    -------
    Sensitivity
        Fields ``grad, hess, count``, each with ``n_features * nodes_per_row``
        coordinates, bounds ``ceil(grad_bound * grad_scale)``,
        ``ceil(hess_bound * hess_scale)`` and 1.
    """
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1:
        raise ValueError(f"n_features must be an integer >= 1, got {n_features!r}")
    if isinstance(nodes_per_row, bool) or not isinstance(nodes_per_row, (int, np.integer)) or nodes_per_row < 1:
        raise ValueError(f"nodes_per_row must be an integer >= 1, got {nodes_per_row!r}")
    g = _check_bound(grad_bound, "gradient bound") * _check_bound(grad_scale, "gradient scale")
    h = _check_bound(hess_bound, "hessian bound") * _check_bound(hess_scale, "hessian scale")
    coords = int(n_features) * int(nodes_per_row)
    # |rint(v * s)| <= rint(bound * s) <= ceil(bound * s): rounding is monotone
    return Sensitivity(
        fields=HISTOGRAM_FIELDS, coords=(coords,) * 3, bounds=(max(math.ceil(g), 1), max(math.ceil(h), 1), 1)
    )


# ---------------------------------------------------------------------------
# label totals: the row counts and label sums of a DP training
# ---------------------------------------------------------------------------

#: Share of the budget spent on the noisy label totals (row counts and label sums: the initial score).
LABEL_TOTALS_SHARE = 0.02

#: Objectives whose label part is class counts (the others sum a real label, clipped to its declared range).
COUNTED_LABELS = ("binary", "multiclass")

LABEL_TOTALS_FIELDS = ("rows", "label")


def label_bound(label_range) -> float:
    """``max(|min|, |max|)`` of a declared label range ``(min, max)``: one row's largest |label| after clipping."""
    try:
        lo, hi = (float(v) for v in label_range)
    except (TypeError, ValueError):
        raise ConfigError(f"privacy.label_min and privacy.label_max must be two numbers, got {label_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"privacy.label_min ({lo:g}) must be below privacy.label_max ({hi:g}), both finite")
    return max(abs(lo), abs(hi), 2.0**-20)


def label_scale(label_range, *, row_bits: int = DEFAULT_ROW_BITS) -> float:
    """Fixed-point scale of a real label under DP: the largest power of two ``s`` with ``bound * s <= 2**row_bits``."""
    return dp_scale(label_bound(label_range), n_total=1, row_bits=row_bits)


def label_part(y, objective: str, *, num_class: int, label_range=None) -> np.ndarray:
    """A party's label part of its DP label totals, int64: class counts, or the fixed-point sum of clipped labels.

    Parameters
    ----------
    y : ndarray of shape (n_rows,), the training labels (class codes for binary and multiclass)
    objective : str
    num_class : int, classes of a multiclass label
    label_range : (min, max), required for real labels (``privacy.label_min``, ``privacy.label_max``)

    Returns
    -------
    part : ndarray of int64, shape (1,) (binary: positives; real labels: ``sum(rint(clip(y) * s))``) or (num_class,)
    """
    y = np.asarray(y, dtype=np.float64)
    if objective == "multiclass":
        return np.bincount(y.astype(np.int64), minlength=num_class).astype(np.int64)
    if objective == "binary":
        return np.array([np.count_nonzero(y == 1)], dtype=np.int64)
    if label_range is None:
        raise ConfigError(
            f"objective {objective!r} under privacy.epsilon needs a declared label range "
            "(privacy.label_min and privacy.label_max)"
        )
    lo, hi = (float(v) for v in label_range)
    s = label_scale((lo, hi))
    return np.array([int(np.rint(np.clip(y, lo, hi) * s).sum())], dtype=np.int64)


def label_totals_sensitivity(objective: str, *, label_range=None, row_bits: int = DEFAULT_ROW_BITS) -> Sensitivity:
    """What one row changes in the DP label totals ``[n_rows, n_valid, label part]``.

    A training row adds 1 to ``n_rows`` and at most one class count by 1 (or
    the fixed-point label sum by ``ceil(bound * s)``); a validation row adds
    1 to ``n_valid`` alone. Fields ``rows`` (one of the two counts) and
    ``label`` (one coordinate).
    """
    if objective in COUNTED_LABELS:
        label = 1
    else:
        if label_range is None:
            raise ConfigError(
                f"objective {objective!r} under privacy.epsilon needs a declared label range "
                "(privacy.label_min and privacy.label_max)"
            )
        label = max(math.ceil(label_bound(label_range) * label_scale(label_range, row_bits=row_bits)), 1)
    return Sensitivity(fields=LABEL_TOTALS_FIELDS, coords=(1, 1), bounds=(1, label))


def label_totals_variances(field_variances, n_label: int) -> np.ndarray:
    """Per-entry variances of the label totals ``[n_rows, n_valid, label part (n_label)]`` from the two fields'."""
    v = np.asarray(field_variances, dtype=np.float64)
    if v.shape != (2,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"label totals variances must be 2 positive numbers (rows, label), got {field_variances!r}")
    return np.concatenate([np.full(2, v[0]), np.full(int(n_label), v[1])])


def decode_label_totals(totals, objective: str, *, label_range=None) -> tuple[int, int, np.ndarray]:
    """``(n_rows, n_valid, label sums)`` from summed noisy label totals (post-processing: clamped to what can be).

    Counts are at least 1 (rows, class counts) and a real label's sum lies
    in ``[min * n_rows, max * n_rows]``.
    """
    t = np.asarray(totals, dtype=np.int64)
    n_rows, n_valid = max(int(t[0]), 1), max(int(t[1]), 0)
    if objective in COUNTED_LABELS:
        sums = np.clip(t[2:], 1, n_rows).astype(np.float64)
        return n_rows, n_valid, sums
    lo, hi = (float(v) for v in label_range)
    total = float(t[2]) / label_scale((lo, hi))
    return n_rows, n_valid, np.array([min(max(total, lo * n_rows), hi * n_rows)])


# ---------------------------------------------------------------------------
# the budget of a training: one calibration over every kind of release
# ---------------------------------------------------------------------------


def one_off_factor(share: float, *, repeated: int, repeated_share: float) -> float:
    """Noise multiplier of a one-off release relative to a repeated release's, for ``share`` of the budget.

    Under Gaussian RDP a release at ``c * z`` costs ``1 / c**2`` releases at
    ``z``; ``repeated`` releases take ``repeated_share`` of the budget, so a
    one-off release at ``c = sqrt(repeated_share / (share * repeated))`` takes ``share``.
    """
    if not 0.0 < share < 1.0 or not 0.0 < repeated_share <= 1.0:
        raise ValueError(f"budget shares must be in (0, 1), got {share!r} and {repeated_share!r}")
    return math.sqrt(repeated_share / (share * max(int(repeated), 1)))


# ---------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------


def skellam_noise(shape, variance, *, n_parties: int = 1, rng: np.random.Generator | None = None) -> np.ndarray:
    """One party's share of symmetric Skellam noise.

    Each of ``n_parties`` parties adds ``Poisson(v / (2 K)) - Poisson(v / (2 K))``;
    the sum of the ``K`` shares is Skellam with variance ``v`` exactly.

    Parameters
    ----------
    shape : tuple of int
    variance : float or ndarray broadcastable to ``shape``
        Variance ``v`` of the noise in the *sum*, per entry (e.g. shape (3,)
        for the grad, hess, count fields along a histogram's last axis).
    n_parties : int
        Parties that add a share. To keep the full noise when up to ``t``
        parties may collude with the coordinator, pass ``K - t``.
    rng : numpy Generator, optional
        Defaults to a fresh generator seeded from the operating system. Never
        pass a generator whose seed another organisation could know.

    Returns
    -------
    noise : ndarray of shape ``shape``, int64
    """
    if isinstance(n_parties, bool) or not isinstance(n_parties, (int, np.integer)) or n_parties < 1:
        raise ValueError(f"n_parties must be an integer >= 1, got {n_parties!r}")
    v = np.asarray(variance, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"Skellam variance must be finite and >= 0, got {variance!r}")
    if np.any(v > MAX_SKELLAM_VARIANCE):
        raise ValueError(
            f"Skellam variance {float(v.max()):.3g} exceeds {MAX_SKELLAM_VARIANCE:.3g}: use a coarser "
            f"fixed-point scale (dp_scale) or a smaller noise multiplier"
        )
    rng = np.random.default_rng() if rng is None else rng
    lam = np.broadcast_to(v / (2.0 * n_parties), shape)
    return rng.poisson(lam).astype(np.int64) - rng.poisson(lam).astype(np.int64)


def add_noise_share(hist, variances, *, n_parties: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``hist`` plus this party's Skellam share, as a new int64 array.

    Parameters
    ----------
    hist : ndarray of int64, shape ``(..., n_fields)``
        E.g. node histograms ``(n_nodes, n_features, n_bins, 3)``. Not modified.
    variances : ndarray of shape (n_fields,)
        From :meth:`Sensitivity.variances`: variance of the summed noise per field.
    n_parties : int
    rng : numpy Generator, optional

    Returns
    -------
    noisy : ndarray of int64, same shape as ``hist``
    """
    if not isinstance(hist, np.ndarray) or hist.dtype != np.int64:
        got = hist.dtype if isinstance(hist, np.ndarray) else type(hist).__name__
        raise ValueError(f"noise is added to int64 histograms, got {got}")
    variances = np.asarray(variances, dtype=np.float64)
    if hist.ndim == 0 or variances.shape != (hist.shape[-1],):
        raise ValueError(
            f"variances of shape {variances.shape} do not match the last axis of a histogram of shape {hist.shape}"
        )
    return hist + skellam_noise(hist.shape, variances, n_parties=n_parties, rng=rng)


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------


def calibrate(
    epsilon: float,
    delta: float,
    releases: int,
    sensitivity: Sensitivity | None,
    *,
    mechanism: str = SKELLAM,
    accounting: str = RDP,
    rtol: float = 1e-4,
    extra: tuple = (),
) -> float:
    """Smallest noise multiplier with which ``releases`` releases cost at most ``epsilon``.

    A bisection on ``log z`` over :class:`PrivacyAccountant`'s own epsilon, so
    the result and the accountant agree: spending ``releases`` releases at the
    returned ``z`` gives an epsilon ``<= epsilon``.

    Parameters
    ----------
    epsilon : float > 0
        ``privacy.epsilon``, the budget of the whole training.
    delta : float in (0, 1)
    releases : int >= 1
        Releases the budget must cover (e.g. rounds times messages per round).
    sensitivity : Sensitivity or None
        Of one release (None only for ``mechanism="gaussian"``).
    mechanism, accounting : str
        As for :class:`PrivacyAccountant`.
    rtol : float
        Relative width of the final bracket.
    extra : sequence of (factor, count, Sensitivity)
        Other releases of the same training, ``count`` each with noise
        multiplier ``factor * z`` and their own sensitivity (the noisy bins
        and label totals beside the leaf sums); the budget covers them all.

    Returns
    -------
    noise_multiplier : float
        ``z``; the noise variance per field is ``sensitivity.variances(z)``.
    """
    epsilon = check_epsilon(epsilon)
    check_delta(delta)
    releases = check_count(releases)
    if releases < 1:
        raise ValueError(f"releases must be >= 1, got {releases}")
    acc = PrivacyAccountant(delta, mechanism=mechanism, sensitivity=sensitivity, accounting=accounting)

    def fits(z: float) -> bool:
        ledger = [(z, releases, None)] + [(factor * z, count, sens) for factor, count, sens in extra]
        return acc.epsilon_of_ledger(ledger) <= epsilon

    hi = 1.0
    while not fits(hi):
        hi *= 2.0
        if hi > 2.0**60:  # unreachable for a positive epsilon; guards the loop
            raise ValueError(f"no noise multiplier reaches epsilon={epsilon} at delta={delta}")
    lo = hi / 2.0
    while fits(lo):
        hi, lo = lo, lo / 2.0
        if lo < 1e-12:
            return hi
    while hi / lo > 1.0 + rtol:
        mid = math.sqrt(hi * lo)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


__all__ = [
    "COUNTED_LABELS",
    "DEFAULT_ROW_BITS",
    "GAUSSIAN",
    "HISTOGRAM_FIELDS",
    "LABEL_TOTALS_SHARE",
    "MAX_SKELLAM_VARIANCE",
    "SKELLAM",
    "Sensitivity",
    "add_noise_share",
    "calibrate",
    "clip_gradients",
    "clip_hessians",
    "decode_label_totals",
    "dp_scale",
    "histogram_sensitivity",
    "label_bound",
    "label_part",
    "label_scale",
    "label_totals_sensitivity",
    "label_totals_variances",
    "one_off_factor",
    "skellam_noise",
]
