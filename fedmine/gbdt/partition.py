"""The data partition: each leaf's rows kept contiguous, as in LightGBM.

This module owns, for one party and one tree, the permutation ``indices`` of the
party's in-bag rows in which every node's rows form one contiguous segment::

    root            [ 7 2 9 4 0 5 8 1 3 6 ]        start 0, count 10
    split root ->   [ 7 9 0 8 1 | 2 4 5 3 6 ]      left keeps order, right too
    split left ->   [ 9 8 | 7 0 1 | 2 4 5 3 6 ]

Splitting a node rewrites only its segment (stable, in place plus a buffer), so
the children's segments are its two halves. The same go-left test is used for
scores, so a bin ``b`` goes left iff:

* numeric:     ``b == nan_bin ? default_left : b <= bin_threshold``
* categorical: ``b`` is set in the split's bitset (the NaN bin never is).
"""

from __future__ import annotations

import numba
import numpy as np

from fedmine.gbdt.dtypes import CAT_BITSET_DTYPE, CAT_WORDS, ROW_INDEX_DTYPE


@numba.njit(cache=True, nogil=True, inline="always")
def _goes_left(b, bin_threshold, default_left, is_categorical, bitset, nan_bin):  # pragma: no cover
    if is_categorical:
        return (bitset[b >> 5] >> (b & 31)) & 1 == 1
    if b == nan_bin:
        return default_left
    return b <= bin_threshold


@numba.njit(cache=True, nogil=True)
def _split_segment(indices, start, count, col, bin_threshold, default_left, is_categorical, bitset, nan_bin, buf):
    # pragma: no cover - numba
    # branch-free: write every row to both places, advance the side it goes to
    n_left = 0
    n_right = 0
    for i in range(start, start + count):
        r = indices[i]
        go = _goes_left(np.int64(col[r]), bin_threshold, default_left, is_categorical, bitset, nan_bin)
        indices[start + n_left] = r  # write position never passes the read position
        buf[n_right] = r
        n_left += go
        n_right += 1 - go
    for j in range(n_right):
        indices[start + n_left + j] = buf[j]
    return n_left


def split_segment_numpy(indices, start, count, col, bin_threshold, default_left, is_categorical, bitset, nan_bin):
    """Plain numpy twin of the partition kernel; returns (new indices, n_left)."""
    seg = indices[start : start + count]
    b = col[seg].astype(np.int64)
    if is_categorical:
        left = ((bitset[b >> 5] >> (b & 31)) & 1) == 1
    else:
        left = np.where(b == nan_bin, bool(default_left), b <= bin_threshold)
    out = indices.copy()
    out[start : start + count] = np.concatenate([seg[left], seg[~left]])
    return out, int(left.sum())


def goes_left(col, bin_threshold, default_left, cat_bitset, nan_bin) -> np.ndarray:
    """The go-left test of one split for binned values (the partition's rule, vectorised).

    Parameters
    ----------
    col : ndarray of shape (m,), uint8
        One feature's bins of some rows.
    cat_bitset : ndarray of shape (8,), uint32, or None for a numeric split

    Returns
    -------
    left : ndarray of shape (m,), bool
    """
    b = np.asarray(col).astype(np.int64)
    if cat_bitset is not None:
        bits = np.asarray(cat_bitset, dtype=CAT_BITSET_DTYPE)
        return ((bits[b >> 5] >> (b & 31).astype(CAT_BITSET_DTYPE)) & 1) == 1
    return np.where(b == int(nan_bin), bool(default_left), b <= int(bin_threshold))


class DataPartition:
    """Contiguous row segments of one tree's nodes at one party.

    Parameters
    ----------
    rows : ndarray of shape (n_bag,), int32
        The party's in-bag rows (positions into its binned columns), the root.
    max_nodes : int
        Node slots (``2 * num_leaves - 1``).

    Attributes
    ----------
    indices : ndarray of shape (n_bag,), int32
    start, count : ndarray of shape (max_nodes,), int64
        Segment of node ``i``: ``indices[start[i] : start[i] + count[i]]``.
    """

    def __init__(self, rows: np.ndarray, max_nodes: int):
        self.indices = np.array(rows, dtype=ROW_INDEX_DTYPE, copy=True)  # owned: split rewrites it
        self.start = np.zeros(max_nodes, dtype=np.int64)
        self.count = np.full(max_nodes, -1, dtype=np.int64)
        self.count[0] = self.indices.shape[0]
        self._buf = np.empty(self.indices.shape[0], dtype=ROW_INDEX_DTYPE)

    def rows(self, node: int) -> np.ndarray:
        """View of the node's rows (do not write)."""
        s = self.start[node]
        return self.indices[s : s + self.count[node]]

    def split(self, node, col, bin_threshold, default_left, cat_bitset, left, right, nan_bin) -> int:
        """Partition ``node``'s segment into ``left`` then ``right`` (IN/OUT: indices).

        Parameters
        ----------
        col : ndarray of shape (n_rows,), uint8
            The split feature's bins.
        cat_bitset : ndarray of shape (8,), uint32, or None for numeric splits

        Returns
        -------
        n_left : int
        """
        if self.count[node] < 0:
            raise KeyError(f"node {node} has no segment in this partition")
        is_cat = cat_bitset is not None
        bitset = (
            np.ascontiguousarray(cat_bitset, dtype=CAT_BITSET_DTYPE)
            if is_cat
            else np.zeros(CAT_WORDS, dtype=CAT_BITSET_DTYPE)
        )
        s, c = int(self.start[node]), int(self.count[node])
        n_left = _split_segment(
            self.indices, s, c, col, int(bin_threshold), bool(default_left), is_cat, bitset, int(nan_bin), self._buf
        )
        self.start[left], self.count[left] = s, n_left
        self.start[right], self.count[right] = s + n_left, c - n_left
        return n_left


@numba.njit(cache=True, nogil=True)
def _add_segments(indices, starts, counts, values, out):  # pragma: no cover - numba
    for j in range(starts.shape[0]):
        v = values[j]
        for i in range(starts[j], starts[j] + counts[j]):
            out[indices[i]] += v


def add_leaf_values(part: DataPartition, leaves: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """``out[rows of leaf j] += values[j]`` for the leaves of a grown tree (IN/OUT: out).

    Parameters
    ----------
    part : DataPartition
        The partition the tree was grown on.
    leaves : ndarray of shape (n_leaves,), int
        Leaf node ids (indices into the tree's nodes).
    values : ndarray of shape (n_leaves,), float64
    out : ndarray of shape (n_rows,), float64
    """
    leaves = np.asarray(leaves, dtype=np.int64)
    _add_segments(
        part.indices, part.start[leaves], part.count[leaves], np.ascontiguousarray(values, dtype=np.float64), out
    )
