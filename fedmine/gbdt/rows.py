"""The aggregation boundary: where histograms come from.

This module owns the protocol between the tree grower (coordinator side) and
the rows (party side), and its two in-process implementations:

* :class:`LocalRows`: one party's binned rows and fixed-point gradients, with a
  :class:`~fedmine.gbdt.partition.DataPartition` per tree of the round;
* :class:`SumOfSources`: K sources seen as one; it sums their integer
  histograms, broadcasts splits, and counts exchanges and bytes.

Node ids
--------
Trees of one round (one per class) grow together. A node id carries its tree:
``node_id = tree * NODE_STRIDE + slot`` where ``slot`` is handed out by the
grower when it sends a split (root 0); a node records its slot.

Messages
--------
``histograms(node_ids)`` is the only call with an answer that grows with the
data: int64 ``(n_nodes, n_features, max_bin + 1, 3)``. ``apply_split`` has no
answer; :class:`SumOfSources` queues splits and sends them with the next
``histograms`` request (or on ``flush()``), so one exchange per batch is
enough, and a transport can do the same.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedmine.gbdt.dtypes import G_INT_DTYPE, HIST_FIELDS, ROW_INDEX_DTYPE, X_BINNED_DTYPE
from fedmine.gbdt.histogram import (
    build_histogram_ordered,
    build_histogram_packed_accumulate,
    build_histogram_packed_ordered,
    compact_into,
    gather,
)
from fedmine.gbdt.partition import DataPartition

#: Node-id stride between the trees of one round: a tree uses fewer than
#: ``2 * num_leaves * (1 + lookahead)`` slots, below 2**20 for num_leaves <= 2**15
#: and lookahead <= 7.
NODE_STRIDE = 1 << 20


def split_node_id(node_id: int | np.integer) -> tuple[int, int]:
    """``(tree, local)`` of a node id."""
    return int(node_id) // NODE_STRIDE, int(node_id) % NODE_STRIDE


@runtime_checkable
class HistogramSource(Protocol):
    """What the grower needs from the rows (one party, or the sum of many)."""

    def histograms(self, node_ids: np.ndarray) -> np.ndarray:
        """Int64 ``(n_nodes, n_features, max_bin + 1, 3)`` over all rows of those nodes."""

    def apply_split(self, node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id) -> None:
        """Send the rows of ``node_id`` to ``left_id`` / ``right_id``."""


class LocalRows:
    """One party's binned rows and fixed-point gradients: a HistogramSource.

    Parameters
    ----------
    bins : ndarray of shape (n_features, n_rows), uint8, C-contiguous
    max_bin : int
        The NaN bin; histograms have ``max_bin + 1`` bins.
    parallel : bool
        Build large histograms with numba threads (over features). Off when
        several sources share the machine and run concurrently instead.

    Attributes
    ----------
    partitions_ : list of DataPartition
        One per tree of the current round (set by :meth:`set_gradients`).
    """

    def __init__(self, bins: np.ndarray, *, max_bin: int, parallel: bool = True):
        if bins.dtype != X_BINNED_DTYPE or bins.ndim != 2 or not bins.flags.c_contiguous:
            raise TypeError("bins must be a C-contiguous uint8 array of shape (n_features, n_rows)")
        self.bins = bins
        self.max_bin = int(max_bin)
        self.parallel = parallel
        self.partitions_: list[DataPartition] = []
        self._g: np.ndarray | None = None
        self._h: np.ndarray | None = None
        self._count_bits = 0
        self._all_rows = False

    @property
    def n_rows(self) -> int:
        return int(self.bins.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.bins.shape[0])

    def set_gradients(
        self, g: np.ndarray, h: np.ndarray, rows: np.ndarray | None, *, max_nodes: int, count_bits: int = 0
    ):
        """Start the trees of a round.

        Parameters
        ----------
        g, h : ndarray of shape (n_trees, n_rows), int64
            Fixed-point gradient and hessian per tree and row.
        rows : ndarray of shape (n_bag,), int32, or None for every row
            In-bag rows: the root of every tree.
        max_nodes : int
            Node slots per tree.
        count_bits : int
            If > 0, histograms use packed ``(grad, hess << count_bits | 1)``
            accumulators; the caller guarantees the bits fit.
        """
        if g.dtype != G_INT_DTYPE or h.dtype != G_INT_DTYPE or g.shape != h.shape or g.shape[1] != self.n_rows:
            raise TypeError("g and h must be int64 arrays of shape (n_trees, n_rows)")
        self._all_rows = rows is None
        if rows is None:
            rows = np.arange(self.n_rows, dtype=ROW_INDEX_DTYPE)
        self._g = np.ascontiguousarray(g)
        self._count_bits = int(count_bits)
        self._h = (h << self._count_bits) | 1 if self._count_bits else np.ascontiguousarray(h)
        self.partitions_ = [DataPartition(rows, max_nodes) for _ in range(g.shape[0])]

    def histograms(self, node_ids: np.ndarray) -> np.ndarray:
        node_ids = np.asarray(node_ids, dtype=np.int64).ravel()
        n_bins = self.max_bin + 1
        out = np.zeros((node_ids.shape[0], self.n_features, n_bins, HIST_FIELDS), dtype=G_INT_DTYPE)
        if self._g is None or self._h is None:
            raise RuntimeError("histograms() needs the gradients of a round: call set_gradients() first")
        bits = self._count_bits
        if bits:
            acc = np.zeros((self.n_features, n_bins, 2), dtype=G_INT_DTYPE)
        for j, nid in enumerate(node_ids):
            rows, og, oh = self._ordered(nid)
            if bits:
                acc[...] = 0
                build_histogram_packed_ordered(self.bins, rows, og, oh, bits, acc, parallel=self.parallel, out=out[j])
            else:
                build_histogram_ordered(self.bins, rows, og, oh, out[j], parallel=self.parallel)
        return out

    def compact_histograms(self, node_ids: np.ndarray, index: np.ndarray) -> np.ndarray:
        """The nodes' histograms in the wire layout: only the cells at ``index``.

        ``index`` is :func:`~fedmine.gbdt.histogram.cell_index` of the training's bins.

        Returns
        -------
        hists : ndarray of shape (n_nodes, n_cells, 2) with packed accumulators
            (``(grad, hess << count_bits | count)``, as :func:`~fedmine.gbdt.histogram.pack_fields`),
            else of shape (n_nodes, n_cells, 3); int64. Each node is built in
            one scratch histogram and copied out cell by cell: the same
            integers as :meth:`histograms` followed by compaction (and packing).
        """
        node_ids = np.asarray(node_ids, dtype=np.int64).ravel()
        if self._g is None or self._h is None:
            raise RuntimeError("histograms() needs the gradients of a round: call set_gradients() first")
        bits = self._count_bits
        width = 2 if bits else HIST_FIELDS
        out = np.empty((node_ids.shape[0], index.shape[0], width), dtype=G_INT_DTYPE)
        acc = np.empty((self.n_features, self.max_bin + 1, width), dtype=G_INT_DTYPE)
        for j, nid in enumerate(node_ids):
            rows, og, oh = self._ordered(nid)
            acc[...] = 0
            if bits:
                build_histogram_packed_accumulate(self.bins, rows, og, oh, acc, parallel=self.parallel)
            else:
                build_histogram_ordered(self.bins, rows, og, oh, acc, parallel=self.parallel)
            compact_into(acc, index, out[j])
        return out

    def _ordered(self, nid):
        """``(rows, ordered g, ordered h)`` of one node (rows None: the root reading every row in order)."""
        assert self._g is not None and self._h is not None  # set_gradients() first
        tree, local = split_node_id(nid)
        g, h = self._g[tree], self._h[tree]
        if local == 0 and self._all_rows:
            return None, g, h
        rows = self.partitions_[tree].rows(local)
        og = np.empty(rows.shape[0], dtype=G_INT_DTYPE)
        oh = np.empty(rows.shape[0], dtype=G_INT_DTYPE)
        gather(rows, g, h, og, oh)
        return rows, og, oh

    def apply_split(self, node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id) -> None:
        tree, local = split_node_id(node_id)
        _, left = split_node_id(left_id)
        _, right = split_node_id(right_id)
        self.partitions_[tree].split(
            local, self.bins[int(feature)], bin_threshold, default_left, cat_bitset, left, right, self.max_bin
        )

    def leaf_rows(self, node_id) -> np.ndarray:
        """Rows of a node of the current round (positions into this party's rows)."""
        tree, local = split_node_id(node_id)
        return self.partitions_[tree].rows(local)


class SumOfSources:
    """K sources seen as one: sums their histograms, broadcasts splits.

    Parameters
    ----------
    sources : list of HistogramSource
    n_threads : int
        Ask up to this many sources at once (Python threads; the numba kernels
        release the GIL). Sums are integers, so the order does not matter.

    Attributes
    ----------
    exchanges_ : int
        ``histograms`` round trips (one per batch, whatever K).
    nodes_ : int
        Node histograms the parties sent (nodes per request times sources).
    bytes_to_coordinator_ : int
        ``nbytes`` of every histogram array the parties sent.
    bytes_to_parties_ : int
        ``nbytes`` of the node ids and split messages sent to the parties.
    party_seconds_ : float
        Wall time waiting for the sources' histograms (their compute and transport).
    aggregate_seconds_ : float
        Wall time summing their answers.
    """

    def __init__(self, sources, *, n_threads: int = 1):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("SumOfSources needs at least one source")
        self.n_threads = max(1, min(int(n_threads), len(self.sources)))
        self._pool = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None
        self._pending: list[tuple[Any, ...]] = []  # apply_split arguments, queued for the next request
        self.exchanges_ = 0
        self.nodes_ = 0
        self.bytes_to_coordinator_ = 0
        self.bytes_to_parties_ = 0
        self.party_seconds_ = 0.0
        self.aggregate_seconds_ = 0.0

    def map(self, fn, *args, **kwargs) -> list:
        """``[fn(source, *args, **kwargs) for source in sources]``, concurrently if n_threads > 1.

        Every call has ended when this returns or raises (the first failure,
        in source order): a call to one source does not run on, unseen, into
        what the caller does after another failed (a round restarted among
        the remaining parties, their state reset and masks renewed).
        """
        if self._pool is None:
            return [fn(s, *args, **kwargs) for s in self.sources]
        futures = [self._pool.submit(fn, s, *args, **kwargs) for s in self.sources]
        wait(futures)
        return [f.result() for f in futures]

    def histograms(self, node_ids: np.ndarray) -> np.ndarray:
        node_ids = np.asarray(node_ids, dtype=np.int64).ravel()
        self.exchanges_ += 1
        pending, self._pending = self._pending, []

        def ask(s):
            if pending and hasattr(s, "split_histograms"):  # queued splits travel with the request
                return s.split_histograms(pending, node_ids)
            for split in pending:
                s.apply_split(*split)
            return s.histograms(node_ids)

        t0 = time.perf_counter()
        answers = self.map(ask)
        t1 = time.perf_counter()
        total = answers[0] if len(answers) == 1 else np.add(answers[0], answers[1])
        for h in answers[2:]:
            total += h  # integers: exact, in any order (masked ones wrap mod 2**64 and cancel)
        self.party_seconds_ += t1 - t0
        self.aggregate_seconds_ += time.perf_counter() - t1
        self.bytes_to_parties_ += node_ids.nbytes * len(self.sources)
        self.nodes_ += node_ids.shape[0] * len(answers)
        self.bytes_to_coordinator_ += sum(h.nbytes for h in answers)
        return total

    def apply_split(self, node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id) -> None:
        """Queue a split; it reaches the sources with the next request (or :meth:`flush`)."""
        # node, feature, threshold, default_left, left, right: 6 int64; the bitset if categorical
        size = 6 * 8 + (np.asarray(cat_bitset).nbytes if cat_bitset is not None else 0)
        self.bytes_to_parties_ += size * len(self.sources)
        self._pending.append((node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id))

    def discard(self) -> None:
        """Drop queued splits (a round that failed is grown again from the start)."""
        self._pending = []

    def flush(self) -> None:
        """Deliver queued splits now (before anything reads the partitions)."""
        pending, self._pending = self._pending, []
        if pending:
            self.map(lambda s: [s.apply_split(*split) for split in pending])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
