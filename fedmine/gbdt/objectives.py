"""Objectives: gradients, hessians, initial scores, transforms and metrics.

This module owns the per-row maths of each LightGBM objective the engine
supports, and the aggregate statistics from which the initial score and the
validation metrics are computed. Every aggregate is partition independent:
counts are integers and float sums are exact (:mod:`fedmine.gbdt.quantize`).
The metrics themselves (names, per-row values, AUC cells, the value when a
class is absent) are defined in :mod:`fedmine.metrics`, so the value early
stopping sees is the one the coordinator logs.

=========== ======================= ============ ================ ===============
objective   LightGBM line           trees/round  initial score    |g| / h bound
=========== ======================= ============ ================ ===============
binary      ``binary sigmoid:1``    1            log(p / (1-p))   1 / 0.25
multiclass  ``multiclass num_class:K`` K         log(n_k / n)     1 / K/(K-1)/4
regression  ``regression``          1            mean(y)          per round / 1
poisson     ``poisson``             1            log(mean(y))     per round
tweedie     ``tweedie``             1            log(mean(y))     per round
=========== ======================= ============ ================ ===============

"per round" bounds are the max over parties of each party's max, a mergeable
aggregate exchanged at the start of every round.
"""

from __future__ import annotations

import numba
import numpy as np

from fedmine import metrics as metric_defs
from fedmine.errors import DataError
from fedmine.gbdt.quantize import exact_sum_parts, exact_total

K_EPSILON = 1e-15
#: Number of score cells per label in the AUC histogram (over the sigmoid).
AUC_CELLS = metric_defs.AUC_CELLS


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class Objective:
    """Base class: one instance per training, configured from params."""

    name = ""
    #: The metrics ``params.metric`` may name (fedmine.metrics.ENGINE_METRICS); the first is the default.
    metrics: tuple = ()
    metric = ""
    n_trees = 1
    grad_bound: float | None = None  # known a priori, else exchanged per round
    hess_bound: float | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.metrics = metric_defs.ENGINE_METRICS[cls.name]
        cls.metric = cls.metrics[0]

    def lightgbm_line(self) -> str:
        return self.name

    def check_labels(self, y: np.ndarray) -> None:
        if not np.all(np.isfinite(y)):
            raise DataError(f"labels of objective {self.name!r} must be finite")

    # initial score -----------------------------------------------------
    def label_stats(self, y: np.ndarray) -> np.ndarray:
        """Party side: summable int64 statistics of the labels (here exact parts of sum(y))."""
        return exact_sum_parts(y)

    def init_scores(self, stats: np.ndarray, n_total: int) -> np.ndarray:
        raise NotImplementedError

    # gradients ---------------------------------------------------------
    def gradients(self, y: np.ndarray, score: np.ndarray):
        """Per-row gradient and hessian, each of shape (n_trees, n_rows), float64."""
        raise NotImplementedError

    def gradients_and_bounds(self, y: np.ndarray, score: np.ndarray):
        """:meth:`gradients` and, per tree, ``(max |g|, max h)`` of shape (n_trees, 2).

        Objectives with a numba kernel override this (one pass, no temporaries,
        the GIL released so parties can run concurrently).
        """
        g, h = self.gradients(y, score)
        return g, h, _bounds(g, h)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores of shape (n_trees, n_rows) -> predictions (n_rows,) or (n_rows, K)."""
        return raw[0]

    # metrics: the definitions are fedmine.metrics'; the sums are exact here too
    def metric_stats(self, metric: str, y: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Party side: summable int64 statistics of ``metric`` over its rows (add parties' arrays)."""
        if metric == "auc":
            return metric_defs.auc_histograms(y, score[0])
        return exact_sum_parts(self.loss(metric, y, score))

    def metric_value(self, metric: str, stats: np.ndarray, n_total: int) -> float:
        """The metric from summed :meth:`metric_stats`: the logged ``eval/<metric>`` of the same rows."""
        if metric == "auc":
            return metric_defs.auc_from_histograms(stats)
        return metric_defs.value_from_mean(metric, exact_total(stats) / max(n_total, 1))

    def loss(self, metric: str, y: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Per-row values of a mean metric (:func:`fedmine.metrics.row_values`)."""
        raw = score[0] if self.n_trees == 1 else score.T
        return metric_defs.row_values(metric, y, raw, self.name)


def _bounds(g, h):
    out = np.zeros((g.shape[0], 2), dtype=np.float64)
    if g.shape[1]:
        out[:, 0] = np.abs(g).max(axis=1)
        out[:, 1] = np.abs(h).max(axis=1)
    return out


# One-pass gradient kernels (numpy twins: the ``gradients`` methods). Each
# returns max |g| and max |h| of its rows.


@numba.njit(cache=True, nogil=True)
def _binary_kernel(y, s, sigmoid, g, h):  # pragma: no cover - numba
    mg = 0.0
    mh = 0.0
    for i in range(y.shape[0]):
        label = 1.0 if y[i] > 0 else -1.0
        r = -label * sigmoid / (1.0 + np.exp(label * sigmoid * s[i]))
        a = abs(r)
        g[i] = r
        h[i] = a * (sigmoid - a)
        mg = max(mg, a)
        mh = max(mh, h[i])
    return mg, mh


@numba.njit(cache=True, nogil=True)
def _l2_kernel(y, s, g, h):  # pragma: no cover - numba
    mg = 0.0
    for i in range(y.shape[0]):
        g[i] = s[i] - y[i]
        h[i] = 1.0
        mg = max(mg, abs(g[i]))
    return mg, 1.0 if y.shape[0] else 0.0


@numba.njit(cache=True, nogil=True)
def _poisson_kernel(y, s, mds, g, h):  # pragma: no cover - numba
    mg = 0.0
    mh = 0.0
    for i in range(y.shape[0]):
        g[i] = np.exp(s[i]) - y[i]
        h[i] = np.exp(s[i] + mds)
        mg = max(mg, abs(g[i]))
        mh = max(mh, h[i])
    return mg, mh


@numba.njit(cache=True, nogil=True)
def _tweedie_kernel(y, s, rho, g, h):  # pragma: no cover - numba
    mg = 0.0
    mh = 0.0
    for i in range(y.shape[0]):
        a = np.exp((1.0 - rho) * s[i])
        b = np.exp((2.0 - rho) * s[i])
        g[i] = -y[i] * a + b
        h[i] = -y[i] * (1.0 - rho) * a + (2.0 - rho) * b
        mg = max(mg, abs(g[i]))
        mh = max(mh, abs(h[i]))
    return mg, mh


def _run(kernel, y, score, *args):
    n = y.shape[0]
    g = np.empty((1, n))
    h = np.empty((1, n))
    mg, mh = kernel(np.ascontiguousarray(y), np.ascontiguousarray(score[0]), *args, g[0], h[0])
    return g, h, np.array([[mg, mh]])


class Binary(Objective):
    name = "binary"
    grad_bound = 1.0
    hess_bound = 0.25
    sigmoid = 1.0

    def lightgbm_line(self) -> str:
        return "binary sigmoid:1"

    def check_labels(self, y):
        if not np.all((y == 0) | (y == 1)):
            raise DataError("labels of objective 'binary' must be 0 or 1")

    def label_stats(self, y):
        return np.array([int(np.count_nonzero(y == 1))], dtype=np.int64)

    def init_scores(self, stats, n_total):
        pavg = float(stats[0]) / max(n_total, 1)
        pavg = min(max(pavg, K_EPSILON), 1.0 - K_EPSILON)
        return np.array([np.log(pavg / (1.0 - pavg)) / self.sigmoid])

    def gradients(self, y, score):
        label = np.where(y > 0, 1.0, -1.0)
        response = -label * self.sigmoid / (1.0 + np.exp(label * self.sigmoid * score[0]))
        abs_r = np.abs(response)
        return response[None, :], (abs_r * (self.sigmoid - abs_r))[None, :]

    def gradients_and_bounds(self, y, score):
        return _run(_binary_kernel, y, score, self.sigmoid)

    def transform(self, raw):
        return _sigmoid(self.sigmoid * raw[0])


class Multiclass(Objective):
    name = "multiclass"
    grad_bound = 1.0

    def __init__(self, num_class: int):
        self.n_trees = int(num_class)
        self.factor = self.n_trees / (self.n_trees - 1.0)
        self.hess_bound = self.factor * 0.25

    def lightgbm_line(self) -> str:
        return f"multiclass num_class:{self.n_trees}"

    def check_labels(self, y):
        if not np.all((y >= 0) & (y < self.n_trees) & (y == np.floor(y))):
            raise DataError(f"labels of objective 'multiclass' must be integers in [0, {self.n_trees})")

    def label_stats(self, y):
        return np.bincount(y.astype(np.int64), minlength=self.n_trees).astype(np.int64)

    def init_scores(self, stats, n_total):
        probs = stats.astype(np.float64) / max(n_total, 1)
        return np.log(np.maximum(probs, K_EPSILON))

    def _softmax(self, score):
        m = score.max(axis=0, keepdims=True)
        e = np.exp(score - m)
        return e / e.sum(axis=0, keepdims=True)

    def gradients(self, y, score):
        p = self._softmax(score)
        onehot = (np.arange(self.n_trees)[:, None] == y[None, :].astype(np.int64)).astype(np.float64)
        return p - onehot, self.factor * p * (1.0 - p)

    def transform(self, raw):
        return self._softmax(raw).T


class Regression(Objective):
    name = "regression"
    hess_bound = 1.0

    def init_scores(self, stats, n_total):
        return np.array([exact_total(stats) / max(n_total, 1)])

    def gradients(self, y, score):
        return (score[0] - y)[None, :], np.ones((1, y.shape[0]))

    def gradients_and_bounds(self, y, score):
        return _run(_l2_kernel, y, score)


class Poisson(Objective):
    name = "poisson"

    def __init__(self, max_delta_step: float = 0.7):
        self.max_delta_step = float(max_delta_step)

    def check_labels(self, y):
        if not np.all(np.isfinite(y) & (y >= 0)):
            raise DataError(f"labels of objective {self.name!r} must be finite and >= 0")

    def init_scores(self, stats, n_total):
        mean = exact_total(stats) / max(n_total, 1)
        return np.array([np.log(mean) if mean > 0 else -np.inf])

    def gradients(self, y, score):
        s = score[0]
        return (np.exp(s) - y)[None, :], np.exp(s + self.max_delta_step)[None, :]

    def gradients_and_bounds(self, y, score):
        return _run(_poisson_kernel, y, score, self.max_delta_step)

    def transform(self, raw):
        return np.exp(raw[0])


class Tweedie(Poisson):
    name = "tweedie"

    def __init__(self, variance_power: float = 1.5):
        self.rho = float(variance_power)

    def gradients(self, y, score):
        s = score[0]
        a = np.exp((1.0 - self.rho) * s)
        b = np.exp((2.0 - self.rho) * s)
        g = -y * a + b
        h = -y * (1.0 - self.rho) * a + (2.0 - self.rho) * b
        return g[None, :], h[None, :]

    def gradients_and_bounds(self, y, score):
        return _run(_tweedie_kernel, y, score, self.rho)

    def loss(self, metric, y, score):
        return metric_defs.row_values(metric, y, score[0], self.name, tweedie_variance_power=self.rho)


OBJECTIVES = ("binary", "multiclass", "regression", "poisson", "tweedie")


def make_objective(
    name: str, *, num_class: int = 1, poisson_max_delta_step: float = 0.7, tweedie_variance_power: float = 1.5
):
    """Objective instance from validated params."""
    if name == "binary":
        return Binary()
    if name == "multiclass":
        return Multiclass(num_class)
    if name == "regression":
        return Regression()
    if name == "poisson":
        return Poisson(poisson_max_delta_step)
    if name == "tweedie":
        obj = Tweedie(tweedie_variance_power)
        obj.max_delta_step = 0.0
        return obj
    raise ValueError(name)
