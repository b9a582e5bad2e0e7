"""An organisation's engine state for histogram training, and K of them seen as one.

This module owns :class:`EngineState`, everything one organisation computes
on its own rows during ``histogram`` training, and :class:`EngineGroup`, the
in-process aggregation of K of them. The booster talks to either through the
same calls, so pooled training (one EngineState holding every row) and
federated training (an EngineGroup of parties reached through the
coordinator's links) run the same code path. The calls, the stages that accept
them and how their answers merge are entries of the protocol table
(:data:`fedmine.protocol.CALLS`, ``side="engine"``); every answer is an
aggregate.

Round life cycle at a party::

    begin_round(iteration, last_trees)   scores += last trees; g, h as floats
    start_trees(iteration, scales, ...)  g, h -> int64; bag rows; reset partitions
    histograms / apply_split ...         while the coordinator grows the trees

Differential privacy (:mod:`fedmine.privacy.noise`): ``configure(...,
grad_clip=G, hess_clip=H)`` makes the party clip its gradients to ``[-G, G]``
and hessians to ``[0, H]`` and answer ``begin_round`` with ``(G, H)`` instead
of its own maxima; after ``set_noise(variances, n_parties=K, seed=...)`` it adds
its share of Skellam noise to every ``histograms`` answer, before the
party masks it.
"""

from __future__ import annotations

import numba
import numpy as np

from fedmine import protocol
from fedmine.errors import DataError
from fedmine.gbdt import binning
from fedmine.gbdt.dtypes import ROW_ID_DTYPE, X_DTYPE, Y_DTYPE
from fedmine.gbdt.histogram import cell_index, expand_fields, reachable_cells
from fedmine.gbdt.objectives import make_objective
from fedmine.gbdt.partition import add_leaf_values
from fedmine.gbdt.predictor import tree_values_binned
from fedmine.gbdt.quantize import quantize
from fedmine.gbdt.rows import LocalRows, SumOfSources
from fedmine.gbdt.sampling import bag_rows
from fedmine.privacy.noise import add_noise_to_cells, check_variances, noise_cells, noise_share
from fedmine.protocol import CREATED, ProtocolError


def _objective(params):
    return make_objective(
        params.objective,
        num_class=params.num_class,
        poisson_max_delta_step=params.poisson_max_delta_step,
        tweedie_variance_power=params.tweedie_variance_power,
    )


class EngineState(LocalRows):
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
        self.bins = None  # type: ignore[assignment]  # binned by set_bins (LocalRows' rows)
        self.stage_ = CREATED
        self.clip_ = None
        self._noise = None
        self.answer_cells_ = None

    def _enter(self, name: str) -> None:
        """Check the stage against the protocol table; move to the stage the call leads to."""
        entry = protocol.call(name)
        if not entry.accepts(self.stage_):
            raise ProtocolError(f"{name} is not accepted in stage {self.stage_!r}; it needs one of {list(entry.needs)}")
        if entry.leads_to is not None:
            self.stage_ = entry.leads_to

    # --- binning --------------------------------------------------------
    def describe(self) -> dict:
        n_valid = 0 if self.y_valid is None else int(self.y_valid.shape[0])
        return {"n_rows": int(self.X.shape[0]), "n_valid": n_valid, "n_features": int(self.X.shape[1])}

    def feature_ranges(self) -> np.ndarray:
        return binning.feature_ranges(self.X)

    def grid_counts(
        self, grids: np.ndarray, categorical: np.ndarray, *, variance: float | None = None, n_parties: int = 1
    ) -> np.ndarray:
        """Counts on the shared grid; with ``variance`` (DP bins), plus this party's Skellam share of that noise."""
        counts = binning.grid_counts(self.X, grids, categorical=categorical)
        if variance is None:
            return counts
        from fedmine.privacy.dp import add_noise_share

        v = check_variances([variance] * 3)[:1]
        return add_noise_share(counts[..., None], v, n_parties=int(n_parties))[..., 0]

    def leaf_sums(self, trees, grad_scales, hess_scales) -> np.ndarray:
        """Gradient and hessian sums of the training rows in each leaf of ``trees`` (``privacy.dp_method: leaf``).

        Parameters
        ----------
        trees : list of Tree, one per class
            Structures chosen without looking at the rows; leaf ``j``'s value is ``j``.
        grad_scales, hess_scales : ndarray of shape (n_trees,)
            Fixed-point scales of the round.

        Returns
        -------
        sums : ndarray of shape (n_trees, n_leaves, 2), int64
            ``(sum of round(g * s_g), sum of round(h * s_h))`` per leaf, plus this
            party's noise share (variances of fields grad and hess) once :meth:`set_noise` is on.
        """
        self._enter("leaf_sums")
        n_leaves = max(int(t.nodes["value"][t.leaf_ids()].max()) + 1 for t in trees)
        rows = np.arange(self.n_rows, dtype=np.int64)
        out = np.zeros((len(trees), n_leaves, 2), dtype=np.int64)
        for k, tree in enumerate(trees):
            leaf = tree_values_binned(tree, self.bins, rows, self.max_bin).astype(np.int64)
            qg = quantize(self._g_float[k], grad_scales[k])
            qh = quantize(self._h_float[k], hess_scales[k])
            out[k, :, 0] = np.bincount(leaf, weights=qg, minlength=n_leaves)  # exact: |sums| < 2**53
            out[k, :, 1] = np.bincount(leaf, weights=qh, minlength=n_leaves)
        if self._noise is not None:
            from fedmine.privacy.dp import add_noise_share

            variances, n_parties, rng = self._noise
            out = add_noise_share(out, variances[:2], n_parties=n_parties, rng=rng)
        return out

    def set_bins(self, mapper: binning.BinMapper, *, parallel: bool = True) -> None:
        """Bin the local rows once (and the validation rows)."""
        self._enter("set_bins")
        LocalRows.__init__(
            self, binning.bin_columns(self.X, mapper, parallel=parallel), max_bin=mapper.max_bin, parallel=parallel
        )
        self.bins_valid_ = (
            None if self.X_valid is None else binning.bin_columns(self.X_valid, mapper, parallel=parallel)
        )
        self._noise_cells = noise_cells(mapper.n_bins, mapper.max_bin)

    # --- training -------------------------------------------------------
    def configure(
        self, params, init_scores: np.ndarray, *, grad_clip: float | None = None, hess_clip: float | None = None
    ) -> None:
        """Set the objective and start scores at the initial score.

        ``grad_clip`` and ``hess_clip`` (both or neither) switch on clipping
        for differential privacy: every round's gradients are clipped to
        ``[-grad_clip, grad_clip]`` and hessians to ``[0, hess_clip]``. Noise
        is off until :meth:`set_noise`.
        """
        self._enter("configure")
        if (grad_clip is None) != (hess_clip is None):
            raise ValueError(f"grad_clip and hess_clip go together, got {grad_clip!r} and {hess_clip!r}")
        self.clip_ = None
        if grad_clip is not None:
            g, h = float(grad_clip), float(hess_clip)  # type: ignore[arg-type]  # both or neither: checked above
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

    def label_stats(self, params, *, variance: float | None = None, n_parties: int = 1) -> np.ndarray:
        """Summable statistics of the labels for the initial score (checks the labels).

        ``variance`` (DP, class counts only): plus this party's Skellam share of that noise.
        """
        obj = _objective(params)
        obj.check_labels(self.y)
        stats = obj.label_stats(self.y)
        if variance is None:
            return stats
        from fedmine.privacy.dp import add_noise_share

        v = check_variances([variance] * 3)[:1]
        return add_noise_share(stats[..., None], v, n_parties=int(n_parties))[..., 0]

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
        self._enter("begin_round")
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
        self._enter("reset")
        self.partitions_ = []
        self.bins = None  # type: ignore[assignment]  # until set_bins again

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
        self._enter("start_trees")
        p = self.params_
        n_trees = self._g_float.shape[0]
        qg = np.empty(self._g_float.shape, dtype=np.int64)
        qh = np.empty(self._h_float.shape, dtype=np.int64)
        for k in range(n_trees):
            qg[k] = quantize(self._g_float[k], grad_scales[k])
            qh[k] = quantize(self._h_float[k], hess_scales[k])
        rows = None
        if p.bagging_freq > 0 and p.bagging_fraction < 1.0:
            rows = bag_rows(
                self.row_ids, seed=p.seed, bag_round=iteration // p.bagging_freq, fraction=p.bagging_fraction
            )
        self.set_gradients(qg, qh, rows, max_nodes=max_nodes, count_bits=count_bits)
        self._g_float = self._h_float = None

    def finish(self, trees) -> None:
        """Apply the final round's trees (scores then match the model)."""
        self._enter("finish")
        if trees:
            self._apply_trees(trees)
        self.partitions_ = []

    def answer_compact(self, cells: np.ndarray | None) -> None:
        """Answer ``histograms`` in the wire layout from now on (None: the full layout).

        ``cells`` is :func:`~fedmine.gbdt.histogram.reachable_cells` of the
        training's bins. Without noise, answers then have shape ``(n_nodes,
        n_cells, 2)`` (packed accumulators) or ``(n_nodes, n_cells, 3)``, built
        straight from the accumulators; with noise they stay in the full
        layout (the noise goes on every cell a row can reach).
        """
        self.answer_cells_ = None if cells is None else cell_index(cells)

    def histograms(self, node_ids: np.ndarray) -> np.ndarray:
        """Node histograms of the local rows, plus this party's noise share once :meth:`set_noise` is on."""
        self._enter("histograms")
        if self.answer_cells_ is not None and self._noise is None:
            return LocalRows.compact_histograms(self, node_ids, self.answer_cells_)
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
            (:func:`fedmine.privacy.noise.noise_rng`); whoever knows these can
            recompute the noise.
        party_index : int
            Position of the party in its federation (keeps the streams of
            parties with equal row ids apart).
        """
        self._enter("set_noise")
        self._noise = noise_share(
            variances, n_parties=n_parties, seed=seed, party_index=party_index, row_ids=self.row_ids
        )

    def apply_split(self, node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id) -> None:
        self._enter("apply_split")
        LocalRows.apply_split(self, node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id)

    def metric_stats(self, metric: str) -> np.ndarray:
        """Summable statistics of ``metric`` on the validation rows."""
        self._enter("metric_stats")
        if self.y_valid is None:
            return self.objective_.metric_stats(metric, np.zeros(0), np.zeros((self.objective_.n_trees, 0)))
        return self.objective_.metric_stats(metric, self.y_valid, self.scores_valid_)


class EngineGroup:
    """K parties seen as one party: their answers merged as the protocol table says.

    Histograms and splits go through a :class:`~fedmine.gbdt.rows.SumOfSources`,
    which queues splits until the next request and whose counters say what
    crossed the boundary; any other engine call of the table is sent to every
    party and merged by its entry's ``merge`` rule (:func:`fedmine.protocol.merge`).
    """

    def __init__(self, parties, *, n_threads: int | None = None):
        self.parties = list(parties)
        if n_threads is None:
            n_threads = numba.get_num_threads()
        self.source = SumOfSources(self.parties, n_threads=n_threads)
        self._concurrent = self.source.n_threads > 1

    def __getattr__(self, name: str):
        """Engine calls of the protocol table without a method here: ask every party, merge the answers."""
        entry = protocol.CALLS.get(name)
        if name.startswith("_") or entry is None or entry.side != protocol.ENGINE:
            raise AttributeError(f"{type(self).__name__} has no call {name!r}")

        def ask_all(*args, **kwargs):
            self.source.flush()  # queued splits reach the parties before anything else
            return protocol.merge(name, self.source.map(lambda p: getattr(p, name)(*args, **kwargs)))

        return ask_all

    def describe(self) -> dict:
        ds = [p.describe() for p in self.parties]
        n_features = {d["n_features"] for d in ds}
        if len(n_features) != 1:
            raise DataError(f"parties disagree on the number of features: {sorted(n_features)}")
        return {
            "n_rows": sum(d["n_rows"] for d in ds),
            "n_valid": sum(d["n_valid"] for d in ds),
            "n_features": n_features.pop(),
        }

    def set_bins(self, mapper):
        self.source.map(lambda p: p.set_bins(mapper, parallel=not self._concurrent))
        self._cells = reachable_cells(mapper.n_bins, mapper.max_bin)
        self._cell_index = cell_index(self._cells)

    def begin_round(self, iteration, trees):
        self.source.flush()
        return protocol.merge("begin_round", self.source.map(lambda p: p.begin_round(iteration, trees)))

    def start_trees(self, iteration, grad_scales, hess_scales, *, count_bits, max_nodes):
        self._count_bits = int(count_bits)
        self.source.flush()
        self.source.map(
            lambda p: p.start_trees(iteration, grad_scales, hess_scales, count_bits=count_bits, max_nodes=max_nodes)
        )

    def histograms(self, node_ids):
        """The summed histograms, in the full layout (parties at a Link answer the compact, packed one)."""
        total = self.source.histograms(node_ids)
        if total.ndim == 3:  # compact; two fields: (grad, hess << count_bits | count), exact in the sum
            bits = self._count_bits if total.shape[-1] == 2 else 0
            return expand_fields(total, self._cell_index, self._cells.shape, bits)
        return total

    def apply_split(self, *args):
        self.source.apply_split(*args)  # queued until the next request

    def finish(self, trees):
        self.source.flush()
        self.source.map(lambda p: p.finish(trees))
        self.source.close()

    def replay(self, rounds):
        self.source.flush()
        return protocol.merge("replay", self.source.map(lambda p: p.replay(rounds)))

    def reset(self):
        self.source.discard()
        self.source.map(lambda p: p.reset())

    def set_noise(self, variances, *, n_parties, seed=None):
        """Broadcast :meth:`EngineState.set_noise`; party ``i`` gets ``party_index=i``."""
        for i, p in enumerate(self.parties):
            p.set_noise(variances, n_parties=n_parties, seed=seed, party_index=i)
