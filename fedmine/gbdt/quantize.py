"""Fixed-point gradients and exact sums: why federated equals pooled.

This module owns every number that is summed across parties.

Gradients and hessians
----------------------
Each row's gradient ``g`` and hessian ``h`` are encoded *before* any summing as::

    q_g = round(g * s_g)      q_h = round(h * s_h)        (int64, half to even)

with ``s = 2**k`` the largest power of two such that::

    n_total * bound * s < 2**62

where ``n_total`` is the global row count and ``bound`` a global bound on
``|g|`` (or ``h``): known for binary (|g| <= 1, h <= 1/4) and multiclass
(|g| <= 1, h <= K / (4 (K - 1)) with LightGBM's factor K / (K - 1)), and for
the other objectives the max over parties of their local max, a mergeable
aggregate exchanged each round. Any
histogram entry is a sum of at most ``n_total`` rows of magnitude at most
``bound * s + 1/2``, so it stays below ``2**62``: no overflow, even after adding
a sibling's and subtracting from a parent's. Multiplying by a power of two is
exact in binary floating point, so the only rounding is the one per row, and
it depends on the row alone.

Packed accumulators: when ``count_bits = bit_length(n_total)`` more bits fit,
the hessian scale is chosen with ``n_total * bound * s * 2**count_bits < 2**62``
and each row carries ``q_h << count_bits | 1``; one int64 add then sums the
hessian and the count without carries between them (the count stays below
``2**count_bits``). The booster uses it when the resulting hessian scale is at
least 2**16; the histograms on the wire are unpacked, so nothing else changes.

Integer addition is associative and commutative: any partition of the rows over
parties, and any order of summation, gives the same integer histogram bits. The
coordinator converts a sum back to float once (``q / s``), so identical sums
give identical gains and leaf values, hence identical trees.

Exact float sums
----------------
Label sums (for the initial score) and validation losses are float sums that
must not depend on the partition either. :func:`exact_sum_parts` turns a vector
of float64 into integer partial sums per binary exponent (a superaccumulator);
parties' parts add elementwise, and :func:`exact_total` returns the correctly
rounded float of the exact sum, whatever the partition.
"""

from __future__ import annotations

from fractions import Fraction

import numba
import numpy as np

from fedmine.gbdt.dtypes import G_INT_DTYPE

#: Headroom: histogram entries stay below 2**SUM_BITS in magnitude.
SUM_BITS = 62


def choose_scale(bound: float, n_total: int) -> float:
    """Largest power of two ``s`` with ``n_total * bound * s < 2**62``.

    Parameters
    ----------
    bound : float
        Global bound on ``|value|`` of one row (> 0; 0 is treated as 1).
    n_total : int
        Global number of rows that may be summed together.

    Returns
    -------
    scale : float
        A power of two, the same for every party given the same global inputs.
    """
    bound = float(bound)
    if not np.isfinite(bound):
        raise ValueError(f"gradient bound must be finite, got {bound!r}")
    if bound <= 0.0:
        bound = 1.0
    n_total = max(int(n_total), 1)
    # n * bound * 2**k < 2**62  <=>  k < 62 - log2(n * bound); frexp gives an exact exponent.
    _, exp = np.frexp(n_total * bound)
    k = SUM_BITS - int(exp)  # n*bound < 2**exp, so n*bound*2**k < 2**62
    return float(np.ldexp(1.0, k))


def max_abs_quantized(bound: float, scale: float) -> int:
    """Largest ``|round(v * scale)|`` for ``|v| <= bound``: count its bits for packing."""
    return int(np.rint(bound * scale))


@numba.njit(cache=True, nogil=True)
def _quantize_kernel(values, scale, out):  # pragma: no cover - numba
    # serial: memory bound; a parallel region costs more than it saves
    for i in range(values.shape[0]):
        out[i] = np.int64(np.rint(values[i] * scale))


def quantize(values, scale: float) -> np.ndarray:
    """Fixed-point encode one value per row.

    Parameters
    ----------
    values : ndarray of shape (n_rows,), float64
    scale : float
        From :func:`choose_scale`.

    Returns
    -------
    q : ndarray of shape (n_rows,), int64
        ``round(values * scale)``, half to even.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    out = np.empty(values.shape[0], dtype=G_INT_DTYPE)
    _quantize_kernel(values, float(scale), out)
    return out


def quantize_numpy(values, scale: float) -> np.ndarray:
    """Plain numpy twin of :func:`quantize`."""
    return np.rint(np.asarray(values, dtype=np.float64) * float(scale)).astype(G_INT_DTYPE)


def dequantize(q, scale: float):
    """Float value of a fixed-point sum (scalar or array)."""
    return np.asarray(q, dtype=np.float64) / float(scale) if np.ndim(q) else float(q) / float(scale)


# ---------------------------------------------------------------------------
# exact float sums
# ---------------------------------------------------------------------------

_LO_BITS = 26
#: Binary exponents of frexp over finite nonzero float64: -1073 (5e-324) .. 1024.
EXP_MIN, EXP_MAX = -1073, 1024
N_EXP = EXP_MAX - EXP_MIN + 1


def exact_sum_parts(values) -> np.ndarray:
    """Exact sum of float64 values as summable integers (a superaccumulator).

    Each finite value is ``m * 2**(e - 53)`` with an integer ``|m| < 2**53``;
    ``m`` is split into ``hi * 2**26 + lo`` with ``0 <= lo < 2**26``, and
    ``hi`` and ``lo`` are summed per exponent ``e``, so sums of up to 2**36
    rows fit int64. Parties' parts add elementwise, like histograms.

    Parameters
    ----------
    values : array-like of shape (n,), float64, finite

    Returns
    -------
    parts : ndarray of shape (N_EXP, 2), int64
        Row ``e - EXP_MIN`` holds ``(sum_hi, sum_lo)``. Add parties' parts and
        call :func:`exact_total`.
    """
    out = np.zeros((N_EXP, 2), dtype=np.int64)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[v != 0.0]
    if v.size == 0:
        return out
    if not np.all(np.isfinite(v)):
        raise ValueError("exact_sum_parts needs finite values")
    mant, exp = np.frexp(v)
    m = (mant * 2.0**53).astype(np.int64)  # exact: |mant| < 1
    hi = m >> _LO_BITS
    lo = m - (hi << _LO_BITS)
    order = np.argsort(exp, kind="stable")
    exp, hi, lo = exp[order], hi[order], lo[order]
    starts = np.flatnonzero(np.r_[True, exp[1:] != exp[:-1]])
    slot = exp[starts].astype(np.int64) - EXP_MIN
    out[slot, 0] = np.add.reduceat(hi, starts)
    out[slot, 1] = np.add.reduceat(lo, starts)
    return out


def exact_total(parts) -> float:
    """Correctly rounded float of the exact sum held in (summed) :func:`exact_sum_parts`."""
    parts = np.asarray(parts, dtype=np.int64).reshape(N_EXP, 2)
    used = np.flatnonzero(parts.any(axis=1))
    if used.size == 0:
        return 0.0
    base = int(used[0])
    total = 0
    for slot in used.tolist():
        hi, lo = int(parts[slot, 0]), int(parts[slot, 1])
        total += ((hi << _LO_BITS) + lo) << (slot - base)
    return float(Fraction(total) * Fraction(2) ** (base + EXP_MIN - 53))


def exact_sum(values) -> float:
    """Correctly rounded sum of float64 values (a single party's view)."""
    return exact_total(exact_sum_parts(values))
