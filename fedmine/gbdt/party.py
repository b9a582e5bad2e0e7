"""A party's side of histogram training, and K parties seen as one.

This module owns :class:`PartyState`, everything one organisation computes on
its own rows during ``histogram`` training, and :class:`PartyGroup`, the
in-process aggregation of K of them. The booster talks to either through the
same calls, so pooled training (one PartyState holding every row) and
federated training (a PartyGroup, or a remote federation implementing the same
calls) run the same code path. Every answer is an aggregate:

=================== ======================================== ===============
call                answer                                    merge over K
=================== ======================================== ===============
describe()          {"n_rows", "n_valid", "n_features"}        sum
feature_ranges()    float64 (n_features, 2) min / max         min / max
grid_counts(grids, cat) int64 (n_features, n_grid + 1)            sum
set_bins(mapper)    none                                      broadcast
configure(params, init_scores)  none                          broadcast
label_stats(params) int64 (objective specific)                sum
begin_round(it, trees) float64 (n_trees, 2): max |g|, max h   max
start_trees(...)    none                                      broadcast
histograms(nodes)   int64 (n_nodes, n_features, n_bins, 3)    sum
apply_split(...)    none                                      broadcast
evaluate(metric)    int64 (metric specific)                   sum
set_noise(var, ...) none (DP: noise on every histograms answer) broadcast
=================== ======================================== ===============

Round life cycle at a party::

    begin_round(iteration, last_trees)   scores += last trees; g, h as floats
    start_trees(iteration, scales, ...)  g, h -> int64; bag rows; reset partitions
    histograms / apply_split ...         while the coordinator grows the trees

Differential privacy (:mod:`fedmine.gbdt.privacy`): ``configure(...,
grad_clip=G, hess_clip=H)`` makes the party clip its gradients to ``[-G, G]``
and hessians to ``[0, H]`` and answer ``begin_round`` with ``(G, H)`` instead
of its own maxima; after ``set_noise(variances, n_parties=K, seed=...)`` it adds
its share of Skellam noise to every ``histograms`` answer, before the
federation layer masks it.
"""

from __future__ import annotations

import numba
import numpy as np

from fedmine.errors import DataError
from fedmine.gbdt import binning
from fedmine.gbdt.dtypes import ROW_ID_DTYPE, X_DTYPE, Y_DTYPE
from fedmine.gbdt.objectives import make_objective
from fedmine.gbdt.partition import add_leaf_values
from fedmine.gbdt.predictor import tree_values_binned
from fedmine.gbdt.privacy import add_noise_to_cells, check_variances, noise_cells, noise_rng
from fedmine.gbdt.quantize import quantize
from fedmine.gbdt.sampling import bag_rows
from fedmine.gbdt.source import LocalRows, SumOfSources

class ProtocolError(RuntimeError):
    """A call arrived in a stage that does not accept it (a coordinator bug, not bad data)."""


#: Stages of a PartyState, in order; a round cycles GRADIENTS -> GROWING -> GRADIENTS.
CREATED, BINNED, READY, GRADIENTS, GROWING, FINISHED = "created", "binned", "ready", "gradients", "growing", "finished"

#: Which stages accept each stateful call.
ACCEPTS = {
    "set_bins": (CREATED, BINNED),
    "configure": (BINNED, READY, FINISHED),
    "begin_round": (READY, GROWING),
    "start_trees": (GRADIENTS,),
    "histograms": (GROWING,),
    "apply_split": (GROWING,),
    "finish": (GROWING, READY, GRADIENTS),
    "evaluate": (READY, GRADIENTS, GROWING, FINISHED),
    "set_noise": (BINNED, READY, GRADIENTS, GROWING),
    "replay": (GRADIENTS,),
    "reset": (CREATED, BINNED, READY, GRADIENTS, GROWING, FINISHED),
    "split_histograms": (GROWING,),
}

#: Call names, in the order a training uses them (the federation layer's
#: message keys).
CALLS = (
    "describe",
    "feature_ranges",
    "grid_counts",
    "set_bins",
    "configure",
    "label_stats",
    "begin_round",
    "start_trees",
    "histograms",
    "apply_split",
    "evaluate",
    "set_noise",
    "replay",
    "reset",
    "split_histograms",
)


def _objective(params):
    return make_objective(
        params.objective,
        num_class=params.num_class,
        poisson_max_delta_step=params.poisson_max_delta_step,
        tweedie_variance_power=params.tweedie_variance_power,
    )


class PartyState(LocalRows):
    """One party's rows, labels and scores.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        Raw features; categorical columns hold integer codes (NaN = missing).
    y : array-like of shape (n_rows,)
    row_ids : array-like of shape (n_rows,), optional
        Global ids of the rows (for bagging); ``arange(n_rows)`` if omitted.
    X_valid, y_valid : optional
        The party's validation rows.
    """

    def __init__(self, X, y, *, row_ids=None, X_valid=None, y_valid=None):
        self.X = np.ascontiguousarray(X, dtype=X_DTYPE)
        if self.X.ndim != 2:
            raise DataError(f"X must have shape (n_rows, n_features), got {self.X.shape}")
        self.y = np.ascontiguousarray(y, dtype=Y_DTYPE).ravel()
        if self.y.shape[0] != self.X.shape[0]:
            raise DataError(f"X has {self.X.shape[0]} rows but y has {self.y.shape[0]}")
        self.row_ids = (
            np.arange(self.X.shape[0], dtype=ROW_ID_DTYPE)
            if row_ids is None
            else np.ascontiguousarray(row_ids, dtype=ROW_ID_DTYPE)
        )
        self.X_valid = None if X_valid is None else np.ascontiguousarray(X_valid, dtype=X_DTYPE)
        self.y_valid = None if y_valid is None else np.ascontiguousarray(y_valid, dtype=Y_DTYPE).ravel()
        self.partitions_ = []
        self.bins = None
        self.stage_ = CREATED
        self.clip_ = None
        self._noise = None

    def _enter(self, call: str, next_stage: str | None = None) -> None:
        if self.stage_ not in ACCEPTS[call]:
            raise ProtocolError(f"{call} is not accepted in stage {self.stage_!r}; it needs one of {list(ACCEPTS[call])}")
        if next_stage is not None:
            self.stage_ = next_stage

    # --- binning --------------------------------------------------------
    def describe(self) -> dict:
        n_valid = 0 if self.y_valid is None else int(self.y_valid.shape[0])
        return {"n_rows": int(self.X.shape[0]), "n_valid": n_valid, "n_features": int(self.X.shape[1])}

    def feature_ranges(self) -> np.ndarray:
        return binning.feature_ranges(self.X)

    def grid_counts(self, grids: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        return binning.grid_counts(self.X, grids, categorical=categorical)

    def set_bins(self, mapper: binning.BinMapper, *, parallel: bool = True) -> None:
        """Bin the local rows once (and the validation rows)."""
        self._enter("set_bins", BINNED)
        LocalRows.__init__(self, binning.bin_columns(self.X, mapper, parallel=parallel), max_bin=mapper.max_bin,
                           parallel=parallel)
        self.bins_valid_ = (
            None if self.X_valid is None else binning.bin_columns(self.X_valid, mapper, parallel=parallel)
        )
        self._noise_cells = noise_cells(mapper.n_bins, mapper.max_bin)

    # --- training -------------------------------------------------------
    def configure(self, params, init_scores: np.ndarray, *, grad_clip: float | None = None,
                  hess_clip: float | None = None) -> None:
        """Set the objective and start scores at the initial score.

        ``grad_clip`` and ``hess_clip`` (both or neither) switch on clipping
        for differential privacy: every round's gradients are clipped to
        ``[-grad_clip, grad_clip]`` and hessians to ``[0, hess_clip]``. Noise
        is off until :meth:`set_noise`.
        """
        self._enter("configure", READY)
        if (grad_clip is None) != (hess_clip is None):
            raise ValueError(f"grad_clip and hess_clip go together, got {grad_clip!r} and {hess_clip!r}")
        self.clip_ = None
        if grad_clip is not None:
            g, h = float(grad_clip), float(hess_clip)
            if not (0.0 < g < np.inf and 0.0 < h < np.inf):
                raise ValueError(f"clips must be positive and finite, got {grad_clip!r} and {hess_clip!r}")
            self.clip_ = (g, h)
        self._noise = None
        self.params_ = params
        self.objective_ = _objective(params)
        self.objective_.check_labels(self.y)
        init = np.asarray(init_scores, dtype=Y_DTYPE)
        self.scores_ = np.repeat(init[:, None], self.y.shape[0], axis=1)
        if self.y_valid is not None:
            self.scores_valid_ = np.repeat(init[:, None], self.y_valid.shape[0], axis=1)

    def label_stats(self, params) -> np.ndarray:
        """Summable statistics of the labels for the initial score (checks the labels)."""
        obj = _objective(params)
        obj.check_labels(self.y)
        return obj.label_stats(self.y)

    def _apply_trees(self, trees) -> None:
        """Add the last round's trees to the scores (partition for in-bag rows)."""
        for k, tree in enumerate(trees):
            if tree is None:
                continue
            part = self.partitions_[k] if k < len(self.partitions_) else None
            leaves = tree.leaf_ids()
            if part is not None:  # a leaf's rows are the partition segment of its slot
                add_leaf_values(part, tree.nodes["slot"][leaves], tree.nodes["value"][leaves], self.scores_[k])
            if part is None or part.indices.shape[0] < self.n_rows:  # out-of-bag rows: walk the tree
                covered = np.zeros(self.n_rows, dtype=bool)
                if part is not None:
                    covered[part.indices] = True
                rest = np.flatnonzero(~covered).astype(np.int64)
                if rest.size:
                    self.scores_[k, rest] += tree_values_binned(tree, self.bins, rest, self.max_bin)
            if self.y_valid is not None and self.y_valid.shape[0]:
                allv = np.arange(self.y_valid.shape[0], dtype=np.int64)
                self.scores_valid_[k] += tree_values_binned(tree, self.bins_valid_, allv, self.max_bin)

    def begin_round(self, iteration: int, trees) -> np.ndarray:
        """Apply the last round's trees, compute float gradients.

        Returns
        -------
        bounds : ndarray of shape (n_trees, 2), float64
            Local ``max |g|`` and ``max h`` per tree (merge: max).
        """
        self._enter("begin_round", GRADIENTS)
        if trees:
            self._apply_trees(trees)
        return self._gradients()

    def split_histograms(self, splits, node_ids: np.ndarray) -> np.ndarray:
        """Apply queued splits, then answer ``histograms``: one round trip for both.

        Parameters
        ----------
        splits : list of tuple
            ``apply_split`` arguments, in order.
        node_ids : ndarray of int64
        """
        self._enter("split_histograms")
        for split in splits:
            LocalRows.apply_split(self, *split)
        return self.histograms(node_ids)  # with this party's noise share, if any

    def reset(self) -> None:
        """Back to the stage after construction (a training recovers from a failure and starts the party over)."""
        self._enter("reset", CREATED)
        self.partitions_ = []
        self.bins = None

    def replay(self, rounds) -> np.ndarray:
        """Apply the trees of past rounds, in order, then compute gradients (a resumed training).

        Each tree adds its leaf value to each row's score once, as it did when
        it was grown, so the scores are the same bits as before the interruption.

        Parameters
        ----------
        rounds : list of list of Tree
            Round by round, ``n_trees`` trees each.
        """
        self._enter("replay")
        for trees in rounds:
            self._apply_trees(trees)
        return self._gradients()

    def _gradients(self) -> np.ndarray:
        """Float gradients and hessians of the current scores; local bounds (DP: the clip bounds)."""
        self._g_float, self._h_float, bounds = self.objective_.gradients_and_bounds(self.y, self.scores_)
        if self.clip_ is not None:  # DP: clipped, and the bounds reveal nothing about the rows
            g, h = self.clip_
            np.clip(self._g_float, -g, g, out=self._g_float)
            np.clip(self._h_float, 0.0, h, out=self._h_float)
            bounds = np.tile(np.array([g, h]), (bounds.shape[0], 1))
        return bounds

    def start_trees(self, iteration: int, grad_scales, hess_scales, *, count_bits: int, max_nodes: int) -> None:
        """Quantise gradients with the global scales, bag rows, reset partitions."""
        self._enter("start_trees", GROWING)
        p = self.params_
        n_trees = self._g_float.shape[0]
        qg = np.empty(self._g_float.shape, dtype=np.int64)
        qh = np.empty(self._h_float.shape, dtype=np.int64)
        for k in range(n_trees):
            qg[k] = quantize(self._g_float[k], grad_scales[k])
            qh[k] = quantize(self._h_float[k], hess_scales[k])
        rows = None
        if p.bagging_freq > 0 and p.bagging_fraction < 1.0:
            rows = bag_rows(self.row_ids, seed=p.seed, bag_round=iteration // p.bagging_freq, fraction=p.bagging_fraction)
        self.set_gradients(qg, qh, rows, max_nodes=max_nodes, count_bits=count_bits)
        self._g_float = self._h_float = None

    def finish(self, trees) -> None:
        """Apply the final round's trees (scores then match the model)."""
        self._enter("finish", FINISHED)
        if trees:
            self._apply_trees(trees)
        self.partitions_ = []

    def histograms(self, node_ids: np.ndarray) -> np.ndarray:
        """Node histograms of the local rows, plus this party's noise share once :meth:`set_noise` is on."""
        self._enter("histograms")
        out = LocalRows.histograms(self, node_ids)
        if self._noise is not None:
            variances, n_parties, rng = self._noise
            out = add_noise_to_cells(out, self._noise_cells, variances, n_parties=n_parties, rng=rng)
        return out

    def set_noise(self, variances, *, n_parties: int, seed: int | None = None, party_index: int = 0) -> None:
        """Add a Skellam noise share to every later ``histograms`` answer (None: no noise).

        Parameters
        ----------
        variances : array-like of shape (3,) or None
            Variance of the noise in the *sum* over parties, per field (grad,
            hess, count), from :meth:`Sensitivity.variances`.
        n_parties : int
            Parties adding a share (each adds ``variances / n_parties``).
        seed : int or None
            None: fresh operating-system entropy. An integer: reproducible
            noise from ``(seed, party_index, a hash of this party's row ids)``
            (:func:`fedmine.gbdt.privacy.noise_rng`); whoever knows these can
            recompute the noise.
        party_index : int
            Position of the party in its federation (keeps the streams of
            parties with equal row ids apart).
        """
        self._enter("set_noise")
        if variances is None:
            self._noise = None
            return
        v = check_variances(variances)
        if isinstance(n_parties, bool) or not isinstance(n_parties, (int, np.integer)) or n_parties < 1:
            raise ValueError(f"n_parties must be an integer >= 1, got {n_parties!r}")
        self._noise = (v, int(n_parties), noise_rng(seed, party_index, self.row_ids))

    def apply_split(self, node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id) -> None:
        self._enter("apply_split")
        LocalRows.apply_split(self, node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id)

    def evaluate(self, metric: str) -> np.ndarray:
        """Summable statistics of ``metric`` on the validation rows."""
        self._enter("evaluate")
        if self.y_valid is None:
            return self.objective_.metric_stats(metric, np.zeros(0), np.zeros((self.objective_.n_trees, 0)))
        return self.objective_.metric_stats(metric, self.y_valid, self.scores_valid_)


class PartyGroup:
    """K parties seen as one party: the in-process federation.

    Answers are merged as the table in the module docstring says; histograms
    and splits go through a :class:`~fedmine.gbdt.source.SumOfSources`, whose
    counters say what crossed the boundary.
    """

    def __init__(self, parties, *, n_threads: int | None = None):
        self.parties = list(parties)
        if n_threads is None:
            n_threads = numba.get_num_threads()
        self.source = SumOfSources(self.parties, n_threads=n_threads)
        self._concurrent = self.source.n_threads > 1

    def describe(self) -> dict:
        ds = [p.describe() for p in self.parties]
        n_features = {d["n_features"] for d in ds}
        if len(n_features) != 1:
            raise DataError(f"parties disagree on the number of features: {sorted(n_features)}")
        return {"n_rows": sum(d["n_rows"] for d in ds), "n_valid": sum(d["n_valid"] for d in ds),
                "n_features": n_features.pop()}

    def feature_ranges(self):
        return binning.merge_ranges(self.source.map(lambda p: p.feature_ranges()))

    def grid_counts(self, grids, categorical):
        return np.sum(self.source.map(lambda p: p.grid_counts(grids, categorical)), axis=0)

    def set_bins(self, mapper):
        self.source.map(lambda p: p.set_bins(mapper, parallel=not self._concurrent))

    def label_stats(self, params):
        return np.sum([p.label_stats(params) for p in self.parties], axis=0)

    def configure(self, params, init_scores, **clips):
        for p in self.parties:
            p.configure(params, init_scores, **clips)

    def begin_round(self, iteration, trees):
        self.source.flush()
        return np.max(self.source.map(lambda p: p.begin_round(iteration, trees)), axis=0)

    def start_trees(self, iteration, grad_scales, hess_scales, *, count_bits, max_nodes):
        self.source.map(lambda p: p.start_trees(iteration, grad_scales, hess_scales, count_bits=count_bits,
                                                max_nodes=max_nodes))

    def histograms(self, node_ids):
        return self.source.histograms(node_ids)

    def apply_split(self, *args):
        self.source.apply_split(*args)  # queued until the next request

    def finish(self, trees):
        self.source.flush()
        self.source.map(lambda p: p.finish(trees))
        self.source.close()

    def evaluate(self, metric):
        return np.sum([p.evaluate(metric) for p in self.parties], axis=0)

    def replay(self, rounds):
        self.source.flush()
        return np.max(self.source.map(lambda p: p.replay(rounds)), axis=0)

    def reset(self):
        self.source.discard()
        self.source.map(lambda p: p.reset())

    def set_noise(self, variances, *, n_parties, seed=None):
        """Broadcast :meth:`PartyState.set_noise`; party ``i`` gets ``party_index=i``."""
        for i, p in enumerate(self.parties):
            p.set_noise(variances, n_parties=n_parties, seed=seed, party_index=i)

