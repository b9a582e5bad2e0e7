"""Validation metrics: the one table of names, the definitions, the mergeable sums.

This module owns every validation metric of fedmine: which metrics each
objective reports (:data:`TABLE`), how each is computed, and the sums from
which the federation-wide value follows. The engine's early stopping
(:mod:`fedmine.gbdt.objectives`), the coordinator's logged ``eval/<metric>``,
each organisation's own metrics and the local-only LightGBM baseline all take
their names and definitions from here. It is a leaf module: it imports numpy
and the standard library, nothing of fedmine, so the engine may import it.

Table
-----
=========== ========================================= ==========================
objective   reported, the primary first               engine (``params.metric``)
=========== ========================================= ==========================
binary      auc (higher is better), binary_logloss,   binary_logloss, auc
            binary_error
multiclass  multi_logloss, multi_error                multi_logloss
regression  rmse, l1                                  l2, rmse
poisson     rmse, l1                                  poisson, l2, rmse
tweedie     rmse, l1                                  tweedie, l2, rmse
=========== ========================================= ==========================

*Reported* metrics are what each organisation computes of the model it
follows, what the coordinator logs for the federation and what LightGBM
records for the local-only baseline; the first is the primary metric: the one
the report compares, the coordinator early-stops on, and the ``histogram``
strategy passes to the engine. *Engine* metrics are what the engine accepts
as ``metric``, LightGBM's default for the objective first (the engine's
default, so the engine early-stops as LightGBM does). Only ``auc`` is higher
is better.

Definitions
-----------
``p`` is the prediction: ``sigmoid(raw)`` (binary), ``softmax(raw)`` over the
classes (multiclass), ``raw`` (regression), ``exp(raw)`` (poisson, tweedie).

* ``auc``: the probability that a positive row scores above a negative one,
  ties counting half. Exact from ranks (:func:`auc`, as scikit-learn's
  ``roc_auc_score``); mergeable from two histograms of ``p`` over
  :data:`AUC_CELLS` equal cells of [0, 1] (negatives, positives): the same
  definition on the cell index instead of ``p``, so rows in one cell count
  as tied. Labels above 0.5 are positive.
* ``binary_logloss``: mean of ``-log(p)`` (positive) or ``-log(1 - p)``,
  ``p`` clipped to ``[1e-15, 1 - 1e-15]``; ``binary_error``: the fraction of
  rows with ``(p > 0.5) != label``.
* ``multi_logloss``: mean of ``-log(max(p_label, 1e-15))``;
  ``multi_error``: the fraction of rows whose largest ``p`` (the first class on
  ties) is not the label.
* ``l2``: mean of ``(p - y)**2``; ``rmse``: its square root; ``l1``: mean of
  ``|p - y|``.
* ``poisson``: mean of ``exp(raw) - y * raw``; ``tweedie``: mean of
  ``-y * exp((1 - rho) * raw) / (1 - rho) + exp((2 - rho) * raw) / (2 - rho)``
  with ``rho = tweedie_variance_power`` (engine only: they are the LightGBM
  defaults of their objectives).

Every metric but ``auc`` is the mean of per-row values (:func:`row_values`),
and the mean is exact: the correctly rounded sum of the values divided by the
row count. The sum travels as integer limbs of the exact sum
(:func:`exact_sum_parts`), which add across organisations without rounding,
so the merged sums give the pooled value to the last bit, for any partition
of the rows; the engine sums the same values with its own exact
superaccumulator (:mod:`fedmine.gbdt.quantize`) and rounds once, so its value
is the same float. The mergeable AUC uses the engine's cells and formula
(:func:`auc_histograms`, :func:`auc_from_histograms`): under the
``histogram`` strategy, the value the engine early-stops on is the logged
``eval/auc``.

A class absent
--------------
When the rows hold no positive or no negative label, AUC is NaN
(:data:`AUC_UNDEFINED`), exact and mergeable alike, in the engine too: with
no (positive, negative) pair the defining ratio is 0/0, and neither 1.0
(LightGBM's convention, a perfect score for any model) nor 0.5 (a chance
score) would be true. scikit-learn's ``roc_auc_score`` answers NaN as well.
NaN compares false, so no later round can beat it: early stopping keeps the
first round of such a validation set, as it would with any constant value,
and the tracking layer leaves NaN out of the final metrics. The federation's
AUC is defined as soon as the organisations together hold both classes.
"""

from __future__ import annotations

import numpy as np

#: objective -> (reported metrics, the primary first; engine metrics, LightGBM's default first).
TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "binary": (("auc", "binary_logloss", "binary_error"), ("binary_logloss", "auc")),
    "multiclass": (("multi_logloss", "multi_error"), ("multi_logloss",)),
    "regression": (("rmse", "l1"), ("l2", "rmse")),
    "poisson": (("rmse", "l1"), ("poisson", "l2", "rmse")),
    "tweedie": (("rmse", "l1"), ("tweedie", "l2", "rmse")),
}
#: Metrics for which higher is better; every other is lower is better.
HIGHER_IS_BETTER = frozenset({"auc"})

#: objective -> the metrics it reports (each organisation, the federation, LightGBM's baseline).
METRICS: dict[str, tuple[str, ...]] = {objective: row[0] for objective, row in TABLE.items()}
#: objective -> the metrics the engine accepts as ``metric``; the first is its default.
ENGINE_METRICS: dict[str, tuple[str, ...]] = {objective: row[1] for objective, row in TABLE.items()}
#: objective -> (primary metric, higher is better).
PRIMARY: dict[str, tuple[str, bool]] = {o: (m[0], m[0] in HIGHER_IS_BETTER) for o, m in METRICS.items()}

#: Cells of the AUC histograms over the predicted probability.
AUC_CELLS = 1 << 16
#: AUC when the rows hold one class only (see the module docstring).
AUC_UNDEFINED = float("nan")
#: Clip of probabilities in the log losses.
EPSILON = 1e-15

# Exact sums: every finite float64 is an integer multiple of 2**-_UNIT_EXP
# (its 53-bit mantissa as an integer times a power of two >= that unit). The
# sum in those units, split into signed 32-bit limbs, adds elementwise across
# parties. |sum| < 2**53 * 2**2097 * 2**36 for up to 2**36 rows.
_UNIT_EXP = 1126
_LIMB_BITS = 32
N_LIMBS = 69
_LO_BITS = 26


def primary(objective: str) -> str:
    """The objective's primary metric."""
    return METRICS[objective][0]


def higher_is_better(metric: str) -> bool:
    return metric in HIGHER_IS_BETTER


def better(objective: str, a: float, b: float) -> bool:
    """True when metric value ``a`` is better than ``b`` for the objective's primary metric."""
    return a > b if higher_is_better(primary(objective)) else a < b


# -- predictions -------------------------------------------------------------


def _sigmoid(raw: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-raw))


def _softmax_by_class(s: np.ndarray) -> np.ndarray:
    """Softmax of C-contiguous scores of shape (K, n) over the classes (axis 0), as the engine lays them out."""
    m = s.max(axis=0, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(axis=0, keepdims=True)


def _by_class(raw) -> np.ndarray:
    """Multiclass raw scores (n, K) -> C-contiguous (K, n)."""
    return np.ascontiguousarray(np.asarray(raw, dtype=np.float64).T)


def transform(raw: np.ndarray, objective: str) -> np.ndarray:
    """Raw scores to predictions: probability (binary), class probabilities (multiclass), value."""
    if objective == "binary":
        return _sigmoid(raw)
    if objective == "multiclass":
        return _softmax_by_class(_by_class(raw)).T
    if objective in ("poisson", "tweedie"):
        return np.exp(raw)
    return raw


# -- definitions ---------------------------------------------------------------


def row_values(
    metric: str, y: np.ndarray, raw: np.ndarray, objective: str, *, tweedie_variance_power: float = 1.5
) -> np.ndarray:
    """Per-row values of a mean metric (every metric but ``auc``): the metric is their mean (``rmse``: its root).

    ``raw`` holds raw scores of shape (n,), or (n, K) for multiclass.
    """
    y = np.asarray(y, dtype=np.float64)
    if objective == "multiclass":
        if metric not in ("multi_logloss", "multi_error"):
            raise ValueError(f"metric {metric!r} is not defined for objective 'multiclass'")
        p = _softmax_by_class(_by_class(raw))
        k = y.astype(np.int64)
        if metric == "multi_error":
            return (p.argmax(axis=0) != k).astype(np.float64)
        return -np.log(np.maximum(p[k, np.arange(k.shape[0])], EPSILON))
    raw = np.asarray(raw, dtype=np.float64)
    if objective == "binary":
        p = np.clip(_sigmoid(raw), EPSILON, 1.0 - EPSILON)
        if metric == "binary_logloss":
            return -np.where(y > 0.5, np.log(p), np.log(1.0 - p))
        if metric == "binary_error":
            return ((p > 0.5) != (y > 0.5)).astype(np.float64)
        raise ValueError(f"metric {metric!r} is not a mean metric of objective 'binary'")
    if objective not in ("regression", "poisson", "tweedie"):
        raise ValueError(f"unknown objective {objective!r}")
    if metric == "poisson" and objective == "poisson":
        return np.exp(raw) - y * raw
    if metric == "tweedie" and objective == "tweedie":
        rho = float(tweedie_variance_power)
        a = y * np.exp((1.0 - rho) * raw) / (1.0 - rho)
        b = np.exp((2.0 - rho) * raw) / (2.0 - rho)
        return -a + b
    pred = raw if objective == "regression" else np.exp(raw)
    if metric in ("l2", "rmse"):
        return (pred - y) ** 2
    if metric == "l1":
        return np.abs(pred - y)
    raise ValueError(f"metric {metric!r} is not defined for objective {objective!r}")


def value_from_mean(metric: str, mean: float) -> float:
    """A mean metric's value from the mean of its :func:`row_values`."""
    return float(np.sqrt(mean)) if metric == "rmse" else float(mean)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Exact ROC AUC with ties counted as half (:data:`AUC_UNDEFINED` when one class is absent)."""
    y = np.asarray(y) > 0.5
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return AUC_UNDEFINED
    order = np.argsort(p, kind="mergesort")
    ps = np.asarray(p)[order]
    ys = y[order]
    # average ranks over ties
    _, first, counts = np.unique(ps, return_index=True, return_counts=True)
    ranks = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[ys].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_histograms(y: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Counts of the rows per cell of ``sigmoid(raw)``: int64 (2, AUC_CELLS), negatives then positives.

    Summable across parties; :func:`auc_from_histograms` gives the AUC.
    """
    cell = np.minimum((_sigmoid(np.asarray(raw, dtype=np.float64)) * AUC_CELLS).astype(np.int64), AUC_CELLS - 1)
    pos = np.asarray(y) > 0.5
    out = np.zeros((2, AUC_CELLS), dtype=np.int64)
    out[0] = np.bincount(cell[~pos], minlength=AUC_CELLS)
    out[1] = np.bincount(cell[pos], minlength=AUC_CELLS)
    return out


def auc_from_histograms(hist: np.ndarray) -> float:
    """AUC from (summed) :func:`auc_histograms`, rows in one cell counting as tied."""
    neg, pos = hist[0].astype(np.float64), hist[1].astype(np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return AUC_UNDEFINED
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


# -- exact sums ------------------------------------------------------------------


def exact_sum_parts(values) -> np.ndarray:
    """The exact sum of float64 values as int64 limbs (N_LIMBS,) that add across parties.

    Values that are not finite make the sum not finite: the answer is then a
    float64 array filled with their sum (inf, -inf or NaN), which stays so
    when added to limbs. :func:`exact_total` rounds the (added) parts.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    if not finite.all():
        with np.errstate(invalid="ignore"):
            return np.full(N_LIMBS, v[~finite].sum())
    v = v[v != 0.0]
    total = 0
    if v.size:
        mant, exp = np.frexp(v)
        m = (mant * 2.0**53).astype(np.int64)  # exact: |mant| < 1
        shift = exp.astype(np.int64) + (_UNIT_EXP - 53)  # v = m * 2**shift units, shift >= 0
        order = np.argsort(shift, kind="stable")
        m, shift = m[order], shift[order]
        starts = np.flatnonzero(np.r_[True, shift[1:] != shift[:-1]])
        hi = np.add.reduceat(m >> _LO_BITS, starts).tolist()  # |m >> 26| < 2**27: no overflow below 2**36 rows
        lo = np.add.reduceat(m & ((1 << _LO_BITS) - 1), starts).tolist()
        for h, low, k in zip(hi, lo, shift[starts].tolist()):
            total += ((h << _LO_BITS) + low) << k
    limbs = np.frombuffer(abs(total).to_bytes(N_LIMBS * _LIMB_BITS // 8, "little"), dtype="<u4").astype(np.int64)
    return -limbs if total < 0 else limbs


def exact_total(parts) -> float:
    """Correctly rounded float of the exact sum held in (added) :func:`exact_sum_parts`."""
    parts = np.asarray(parts)
    if parts.dtype.kind == "f":
        return float(parts[0])
    total = 0
    for i, limb in enumerate(parts.tolist()):
        total += limb << (_LIMB_BITS * i)
    try:
        return total / (1 << _UNIT_EXP)  # int / int is correctly rounded
    except OverflowError:
        return float("inf") if total > 0 else float("-inf")


# -- per party and merged ---------------------------------------------------------


def _sparse(hist: np.ndarray) -> np.ndarray:
    """Dense AUC histograms -> int32 (2, m): flat cell index (label * AUC_CELLS + cell) and count of nonzero cells."""
    flat = hist.ravel()
    idx = np.flatnonzero(flat)
    return np.stack([idx, flat[idx]]).astype(np.int32)  # indices < 2**17; a party's count per cell < 2**31


def _dense(sparse: np.ndarray) -> np.ndarray:
    idx, counts = np.asarray(sparse, dtype=np.int64)
    return np.bincount(idx, weights=counts, minlength=2 * AUC_CELLS).astype(np.int64).reshape(2, AUC_CELLS)


def sums(y: np.ndarray, raw: np.ndarray, objective: str) -> dict[str, int | np.ndarray]:
    """Mergeable sums of one party's validation rows (what it may send).

    ``n``: the row count; per mean metric, :func:`exact_sum_parts` of its row
    values; ``auc``: the nonzero cells of :func:`auc_histograms` (int32 (2, m):
    flat cell index, count; at most 8 bytes a validation row, at most 1 MiB).
    """
    y = np.asarray(y, dtype=np.float64)
    out: dict[str, int | np.ndarray] = {"n": len(y)}
    for name in METRICS[objective]:
        if name == "auc":
            out[name] = _sparse(auc_histograms(y, raw))
        else:
            out[name] = exact_sum_parts(row_values(name, y, raw, objective))
    return out


def merge(parts: list[dict]) -> dict:
    """Add the sums of several parties (``auc`` cells are concatenated)."""
    total: dict = {}
    for part in parts:
        for key, value in part.items():
            if key not in total:
                total[key] = value.copy() if isinstance(value, np.ndarray) else value
            elif key == "auc":
                total[key] = np.concatenate([total[key], value], axis=1)
            else:
                total[key] = total[key] + value
    return total


def from_sums(s: dict, objective: str) -> dict[str, float]:
    """Reported metrics from (merged) :func:`sums`; equal to the pooled rows' for any partition."""
    n = s.get("n", 0)
    if not n:
        return {}
    out = {}
    for name in METRICS[objective]:
        if name == "auc":
            out[name] = auc_from_histograms(_dense(s[name]))
        else:
            out[name] = value_from_mean(name, exact_total(s[name]) / n)
    return out


# -- summed vectors: what travels masked under secure aggregation ------------------

#: Entries of :func:`exact_sum_vector`: counts of NaN, +inf and -inf values, then the limbs of the finite sum.
EXACT_SUM_SIZE = 3 + N_LIMBS


def exact_sum_vector(values) -> np.ndarray:
    """The exact sum of float64 values as one int64 vector (EXACT_SUM_SIZE,) that adds elementwise across parties.

    ``[n_nan, n_posinf, n_neginf, limbs...]``: unlike :func:`exact_sum_parts`
    it is always int64, so it can be masked mod 2**64 and summed under masks.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    out = np.zeros(EXACT_SUM_SIZE, dtype=np.int64)
    out[0] = int(np.isnan(v).sum())
    out[1] = int(np.isposinf(v).sum())
    out[2] = int(np.isneginf(v).sum())
    out[3:] = exact_sum_parts(v[np.isfinite(v)])
    return out


def exact_total_vector(vector) -> float:
    """Correctly rounded float of the (summed) :func:`exact_sum_vector`, with numpy's rules for NaN and inf."""
    vector = np.asarray(vector, dtype=np.int64)
    n_nan, n_pos, n_neg = (int(x) for x in vector[:3])
    if n_nan or (n_pos and n_neg):
        return float("nan")
    if n_pos or n_neg:
        return float("inf") if n_pos else float("-inf")
    return exact_total(vector[3:])


def sum_vector_size(objective: str) -> int:
    """Length of :func:`sum_vector` for ``objective``."""
    return 1 + sum(2 * AUC_CELLS if m == "auc" else EXACT_SUM_SIZE for m in METRICS[objective])


def sum_vector(y: np.ndarray, raw: np.ndarray, objective: str) -> np.ndarray:
    """A party's validation sums as one int64 vector of fixed layout: the summed (masked) ``evaluate`` answer.

    ``[n, then per reported metric: its exact_sum_vector, or for auc the dense
    auc_histograms (2 * AUC_CELLS)]``, shape ``(sum_vector_size(objective),)``.
    Added elementwise over organisations (mod 2**64 under masks), it gives
    :func:`from_sum_vector` the pooled rows' metrics, the same floats as
    :func:`from_sums` of the merged :func:`sums`.
    """
    y = np.asarray(y, dtype=np.float64)
    parts = [np.array([len(y)], dtype=np.int64)]
    for name in METRICS[objective]:
        if name == "auc":
            parts.append(auc_histograms(y, raw).ravel() if len(y) else np.zeros(2 * AUC_CELLS, dtype=np.int64))
        else:
            parts.append(exact_sum_vector(row_values(name, y, raw, objective) if len(y) else np.zeros(0)))
    return np.concatenate(parts)


def from_sum_vector(vector, objective: str) -> dict[str, float]:
    """Reported metrics from a (summed) :func:`sum_vector`; ``{}`` without rows."""
    vector = np.asarray(vector, dtype=np.int64)
    if vector.shape != (sum_vector_size(objective),):
        raise ValueError(f"a {objective} sum vector has {sum_vector_size(objective)} entries, got {vector.shape}")
    n = int(vector[0])
    if n <= 0:
        return {}
    out, at = {}, 1
    for name in METRICS[objective]:
        if name == "auc":
            out[name] = auc_from_histograms(vector[at : at + 2 * AUC_CELLS].reshape(2, AUC_CELLS))
            at += 2 * AUC_CELLS
        else:
            out[name] = value_from_mean(name, exact_total_vector(vector[at : at + EXACT_SUM_SIZE]) / n)
            at += EXACT_SUM_SIZE
    return out


def exact(y: np.ndarray, raw: np.ndarray, objective: str) -> dict[str, float]:
    """A party's own reported metrics, exact (AUC from ranks, not cells)."""
    if len(y) == 0:
        return {}
    out = from_sums(sums(y, raw, objective), objective)
    if "auc" in out:
        out["auc"] = auc(y, transform(raw, objective))
    return out
