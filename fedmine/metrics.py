"""Validation metrics, exact per organisation and mergeable across them.

A party computes its own metrics exactly, and sends the coordinator only sums
from which the federation-wide metric follows: loss sums and counts (exact),
and for AUC two score histograms on a fixed grid (positives, negatives), which
give the pooled AUC to within the grid's resolution without any score or
label leaving the party.
"""

from __future__ import annotations

import numpy as np

# The primary metric of each objective and whether higher is better.
PRIMARY = {
    "binary": ("auc", True),
    "multiclass": ("multi_logloss", False),
    "regression": ("rmse", False),
    "poisson": ("rmse", False),
    "tweedie": ("rmse", False),
}
AUC_BINS = 1024
_EPS = 1e-15


def transform(raw: np.ndarray, objective: str) -> np.ndarray:
    """Raw scores to predictions: probability (binary), class probabilities (multiclass), value."""
    if objective == "binary":
        return 1.0 / (1.0 + np.exp(-raw))
    if objective == "multiclass":
        z = raw - raw.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    if objective in ("poisson", "tweedie"):
        return np.exp(raw)
    return raw


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Exact ROC AUC with ties counted as half (NaN when one class is absent)."""
    y = np.asarray(y) > 0.5
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ps = np.asarray(p)[order]
    ys = y[order]
    # average ranks over ties
    _, first, counts = np.unique(ps, return_index=True, return_counts=True)
    ranks = np.empty(len(ps))
    avg = first + (counts + 1) / 2.0
    ranks[:] = np.repeat(avg, counts)
    return float((ranks[ys].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def sums(y: np.ndarray, raw: np.ndarray, objective: str) -> dict[str, np.ndarray | float]:
    """Mergeable sums of one party's validation rows (what it may send)."""
    n = float(len(y))
    pred = transform(raw, objective)
    out: dict[str, np.ndarray | float] = {"n": n}
    if objective == "binary":
        p = np.clip(pred, _EPS, 1 - _EPS)
        out["logloss"] = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())
        out["errors"] = float(((p > 0.5) != (y > 0.5)).sum())
        idx = np.minimum((pred * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        out["pos_hist"] = np.bincount(idx[y > 0.5], minlength=AUC_BINS).astype(np.int32)
        out["neg_hist"] = np.bincount(idx[y <= 0.5], minlength=AUC_BINS).astype(np.int32)
    elif objective == "multiclass":
        k = y.astype(np.int64)
        p = np.clip(pred[np.arange(len(k)), k], _EPS, 1.0)
        out["logloss"] = float(-np.log(p).sum())
        out["errors"] = float((pred.argmax(axis=1) != k).sum())
    else:
        out["sq_err"] = float(((pred - y) ** 2).sum())
        out["abs_err"] = float(np.abs(pred - y).sum())
    return out


def merge(parts: list[dict]) -> dict:
    """Add the sums of several parties."""
    if not parts:
        return {}
    total: dict = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total[key] + value if key in total else (value.copy() if isinstance(value, np.ndarray) else value)
    return total


def _auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def from_sums(s: dict, objective: str) -> dict[str, float]:
    """Metrics from (merged) sums. AUC is approximate to the score grid."""
    n = s.get("n", 0.0)
    if not n:
        return {}
    if objective == "binary":
        return {
            "auc": _auc_from_histograms(s["pos_hist"], s["neg_hist"]),
            "binary_logloss": s["logloss"] / n,
            "binary_error": s["errors"] / n,
        }
    if objective == "multiclass":
        return {"multi_logloss": s["logloss"] / n, "multi_error": s["errors"] / n}
    return {"rmse": float(np.sqrt(s["sq_err"] / n)), "l1": s["abs_err"] / n}


def exact(y: np.ndarray, raw: np.ndarray, objective: str) -> dict[str, float]:
    """A party's own metrics, exact (AUC by ranks)."""
    if len(y) == 0:
        return {}
    out = from_sums(sums(y, raw, objective), objective)
    if objective == "binary":
        out["auc"] = auc(y, transform(raw, objective))
    return out


def primary(objective: str) -> str:
    return PRIMARY[objective][0]


def better(objective: str, a: float, b: float) -> bool:
    """True when metric value ``a`` is better than ``b`` for the objective's primary metric."""
    higher = PRIMARY[objective][1]
    return a > b if higher else a < b
