"""Prediction: raw scores from raw features, and leaf values from bins.

This module owns tree traversal. Two inputs are supported:

* raw float features (:func:`predict_raw`), NaN and categorical aware, with
  exactly LightGBM's decision rules so an exported model predicts the same:
  numeric ``NaN -> default_left`` else ``x <= threshold``; categorical
  ``NaN``, ``int(x) < 0`` or a category outside the bitset go right;
* a party's uint8 bins (:func:`tree_values_binned`), used to update scores of
  rows whose leaf is not known from the partition (out-of-bag, validation).

Trees are flattened once into parallel arrays (:func:`flatten`) so the numba
kernels see plain arrays. Each kernel has a numpy twin.
"""

from __future__ import annotations

import numba
import numpy as np

from fedmine.gbdt.dtypes import (
    CAT_BITSET_DTYPE,
    CAT_WORDS,
    MISSING_NAN,
    MISSING_ZERO,
    X_DTYPE,
    Y_DTYPE,
    ZERO_THRESHOLD,
)


def flatten(trees):
    """Concatenate trees into arrays for the kernels.

    Returns
    -------
    offsets : ndarray of shape (n_trees,), int64
        Index of each tree's root.
    feature, left, right, cat_index : ndarray of shape (n_nodes_total,), int64
        Children are global indices (offset added); leaves have ``left = -1``.
    threshold, value : ndarray of shape (n_nodes_total,), float64
    bin_threshold : ndarray of shape (n_nodes_total,), int64
    default_left, is_categorical : ndarray of shape (n_nodes_total,), bool
    bitsets : ndarray of shape (n_cat_total, 8), uint32
    missing : ndarray of shape (n_nodes_total,), int64
        The numeric split's missing rule (``dtypes.MISSING_*``).
    """
    offsets, parts, bits = [], [], []
    n_nodes = 0
    n_cats = 0
    for t in trees:
        nd = t.nodes
        offsets.append(n_nodes)
        left = np.where(nd["is_leaf"] == 1, -1, nd["left"].astype(np.int64) + n_nodes)
        right = np.where(nd["is_leaf"] == 1, -1, nd["right"].astype(np.int64) + n_nodes)
        cat = np.where(nd["cat_index"] >= 0, nd["cat_index"].astype(np.int64) + n_cats, -1)
        parts.append((nd, left, right, cat))
        bits.append(t.cat_bitsets)
        n_nodes += nd.shape[0]
        n_cats += t.cat_bitsets.shape[0]
    if not parts:
        z = np.zeros(0, dtype=np.int64)
        return (
            z,
            z,
            z,
            z,
            z,
            np.zeros(0),
            np.zeros(0),
            z,
            np.zeros(0, bool),
            np.zeros(0, bool),
            np.zeros((0, CAT_WORDS), CAT_BITSET_DTYPE),
            z,
        )
    nodes = np.concatenate([p[0] for p in parts])
    return (
        np.asarray(offsets, dtype=np.int64),
        nodes["feature"].astype(np.int64),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[3] for p in parts]),
        nodes["threshold"].astype(np.float64),
        nodes["value"].astype(np.float64),
        nodes["bin_threshold"].astype(np.int64),
        nodes["default_left"] == 1,
        nodes["is_categorical"] == 1,
        np.ascontiguousarray(np.concatenate(bits), dtype=CAT_BITSET_DTYPE).reshape(-1, CAT_WORDS),
        nodes["missing"].astype(np.int64),
    )


@numba.njit(cache=True, nogil=True, inline="always")
def _raw_goes_left(x, threshold, default_left, is_cat, bits, missing):  # pragma: no cover - numba
    if is_cat:
        if np.isnan(x):
            return False
        c = int(x)
        if c < 0 or c >= 32 * bits.shape[0]:
            return False
        return (bits[c >> 5] >> (c & 31)) & 1 == 1
    if np.isnan(x):
        if missing == MISSING_NAN:
            return default_left
        x = 0.0  # LightGBM: NaN is 0.0 unless NaN is the missing value
    if missing == MISSING_ZERO and -ZERO_THRESHOLD <= x <= ZERO_THRESHOLD:
        return default_left
    return x <= threshold


@numba.njit(parallel=True, cache=True, nogil=True)
def _predict_raw_kernel(
    X,
    offsets,
    tree_class,
    feature,
    left,
    right,
    cat_index,
    threshold,
    value,
    default_left,
    is_cat,
    bitsets,
    missing,
    out,
):  # pragma: no cover - numba
    n_rows = X.shape[0]
    for i in numba.prange(n_rows):
        for t in range(offsets.shape[0]):
            node = offsets[t]
            while left[node] >= 0:
                ci = cat_index[node] if is_cat[node] else 0
                if _raw_goes_left(
                    X[i, feature[node]], threshold[node], default_left[node], is_cat[node], bitsets[ci], missing[node]
                ):
                    node = left[node]
                else:
                    node = right[node]
            out[tree_class[t], i] += value[node]


def predict_raw(trees, X, *, n_trees_per_round: int = 1, init_scores=None) -> np.ndarray:
    """Raw scores of a list of trees on raw features.

    Parameters
    ----------
    trees : list of Tree
        Round-major, ``n_trees_per_round`` per round.
    X : array-like of shape (n_rows, n_features)
    init_scores : ndarray of shape (n_trees_per_round,), optional

    Returns
    -------
    raw : ndarray of shape (n_trees_per_round, n_rows), float64
        Starts from ``init_scores`` and adds trees in order.
    """
    X = np.ascontiguousarray(X, dtype=X_DTYPE)
    k = n_trees_per_round
    out = np.zeros((k, X.shape[0]), dtype=Y_DTYPE)
    if init_scores is not None:
        out += np.asarray(init_scores, dtype=Y_DTYPE)[:, None]
    if not trees:
        return out
    flat = flatten(trees)
    bitsets = flat[10] if flat[10].shape[0] else np.zeros((1, CAT_WORDS), CAT_BITSET_DTYPE)
    tree_class = np.arange(len(trees), dtype=np.int64) % k
    _predict_raw_kernel(
        X,
        flat[0],
        tree_class,
        flat[1],
        flat[2],
        flat[3],
        flat[4],
        flat[5],
        flat[6],
        flat[8],
        flat[9],
        bitsets,
        flat[11],
        out,
    )
    return out


def predict_raw_numpy(trees, X, *, n_trees_per_round: int = 1, init_scores=None) -> np.ndarray:
    """Plain numpy twin of :func:`predict_raw` (vectorised over rows, loop over nodes)."""
    X = np.asarray(X, dtype=X_DTYPE)
    k = n_trees_per_round
    out = np.zeros((k, X.shape[0]), dtype=Y_DTYPE)
    if init_scores is not None:
        out += np.asarray(init_scores, dtype=Y_DTYPE)[:, None]
    for t_i, t in enumerate(trees):
        nd = t.nodes
        node = np.zeros(X.shape[0], dtype=np.int64)
        while True:
            internal = nd["is_leaf"][node] == 0
            if not internal.any():
                break
            rows = np.flatnonzero(internal)
            cur = node[rows]
            x = X[rows, nd["feature"][cur]]
            nan = np.isnan(x)
            rule = nd["missing"][cur]
            xz = np.where(nan & (rule != MISSING_NAN), 0.0, x)  # LightGBM: NaN is 0.0 unless NaN is missing
            to_default = (nan & (rule == MISSING_NAN)) | ((rule == MISSING_ZERO) & (np.abs(xz) <= ZERO_THRESHOLD))
            with np.errstate(invalid="ignore"):
                go = np.where(to_default, nd["default_left"][cur] == 1, xz <= nd["threshold"][cur])
            cat = nd["is_categorical"][cur] == 1
            if cat.any():
                c = np.where(nan | ~np.isfinite(x), -1, np.trunc(np.where(np.isfinite(x), x, -1))).astype(np.int64)
                ok = (c >= 0) & (c < 32 * CAT_WORDS)
                ci = np.where(cat, nd["cat_index"][cur], 0)
                cs = np.where(ok, c, 0)
                word = t.cat_bitsets[ci, cs >> 5] if t.cat_bitsets.shape[0] else np.zeros(cs.shape, np.uint32)
                bit = ok & (((word >> (cs & 31).astype(np.uint32)) & 1) == 1)
                go = np.where(cat, bit, go)
            node[rows] = np.where(go, nd["left"][cur], nd["right"][cur])
        out[t_i % k] += nd["value"][node]
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _tree_values_binned_kernel(
    bins, rows, feature, left, right, bin_threshold, default_left, is_cat, cat_index, bitsets, value, nan_bin, out
):  # pragma: no cover - numba
    for j in numba.prange(rows.shape[0]):
        r = rows[j]
        node = 0
        while left[node] >= 0:
            b = np.int64(bins[feature[node], r])
            if is_cat[node]:
                go = (bitsets[cat_index[node], b >> 5] >> (b & 31)) & 1 == 1
            elif b == nan_bin:
                go = default_left[node]
            else:
                go = b <= bin_threshold[node]
            node = left[node] if go else right[node]
        out[j] = value[node]


def tree_values_binned(tree, bins, rows, nan_bin: int) -> np.ndarray:
    """Leaf value of one tree for some of a party's binned rows.

    Parameters
    ----------
    tree : Tree
    bins : ndarray of shape (n_features, n_rows), uint8
    rows : ndarray of shape (m,), int32 or int64
    nan_bin : int

    Returns
    -------
    values : ndarray of shape (m,), float64
    """
    nd = tree.nodes
    left = np.where(nd["is_leaf"] == 1, -1, nd["left"]).astype(np.int64)
    right = nd["right"].astype(np.int64)
    bitsets = tree.cat_bitsets if tree.cat_bitsets.shape[0] else np.zeros((1, CAT_WORDS), CAT_BITSET_DTYPE)
    out = np.empty(rows.shape[0], dtype=Y_DTYPE)
    _tree_values_binned_kernel(
        bins,
        rows,
        nd["feature"].astype(np.int64),
        left,
        right,
        nd["bin_threshold"].astype(np.int64),
        nd["default_left"] == 1,
        nd["is_categorical"] == 1,
        np.maximum(nd["cat_index"], 0).astype(np.int64),
        np.ascontiguousarray(bitsets),
        nd["value"].astype(np.float64),
        int(nan_bin),
        out,
    )
    return out


def tree_values_binned_numpy(tree, bins, rows, nan_bin: int) -> np.ndarray:
    """Plain numpy twin of :func:`tree_values_binned`."""
    nd = tree.nodes
    rows = np.asarray(rows, dtype=np.int64)
    node = np.zeros(rows.shape[0], dtype=np.int64)
    while True:
        internal = nd["is_leaf"][node] == 0
        if not internal.any():
            break
        idx = np.flatnonzero(internal)
        cur = node[idx]
        b = bins[nd["feature"][cur], rows[idx]].astype(np.int64)
        go = np.where(b == nan_bin, nd["default_left"][cur] == 1, b <= nd["bin_threshold"][cur])
        cat = nd["is_categorical"][cur] == 1
        if cat.any():
            ci = np.maximum(nd["cat_index"][cur], 0)
            word = tree.cat_bitsets[ci, b >> 5]
            go = np.where(cat, ((word >> (b & 31).astype(np.uint32)) & 1) == 1, go)
        node[idx] = np.where(go, nd["left"][cur], nd["right"][cur])
    return nd["value"][node].astype(Y_DTYPE)


def leaves_from_decisions(tree, decisions: dict, n_rows: int) -> np.ndarray:
    """The leaf each row reaches, given every internal node's go-left test on those rows.

    The holders of the features answer the tests (vertical federation: no one
    holds every feature of a row); the walk only routes.

    Parameters
    ----------
    tree : Tree
    decisions : dict of int -> ndarray of shape (n_rows,), bool
        Internal node id -> whether each row goes left there.
    n_rows : int

    Returns
    -------
    leaves : ndarray of shape (n_rows,), int64
        Node id of each row's leaf.
    """
    nd = tree.nodes
    node = np.zeros(n_rows, dtype=np.int64)
    inner = np.flatnonzero(nd["is_leaf"] == 0)
    for j in inner[np.argsort(nd["depth"][inner], kind="stable")]:  # parents before children
        here = np.flatnonzero(node == j)
        if here.size:
            node[here] = np.where(decisions[int(j)][here], nd["left"][j], nd["right"][j])
    return node
