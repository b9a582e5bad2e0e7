"""LightGBM model text read back into the engine's tree records (:mod:`fedmine.gbdt.export` writes it).

Organisations that train with LightGBM itself (the ``bagging``, ``cyclic`` and
``local`` strategies) read their booster's ``Tree=i`` blocks into
:class:`~fedmine.gbdt.model.Tree` records, the one tree representation of
fedmine: the coordinator scales and appends records, the parties score rows
with the engine's predictor, and :mod:`fedmine.gbdt.export` writes the model
text. This module owns taking a model text apart.

A LightGBM tree block lists its internal nodes in split order
(``split_feature``, ``threshold``, ``decision_type``, ``left_child``, ...) and
its leaves by leaf index; a child ``c >= 0`` is internal node ``c`` and
``c < 0`` is leaf ``~c``. The records put the root at 0 and every child after
its parent (depth-first), so the tree travels as the wire expects::

    internal 0 (root) ----> record 0
      left  ~0 (leaf 0)  --> record 1
      right  1           --> record 2
        left ~1 (leaf 1) --> record 3
        right ~2 (leaf 2)--> record 4
"""

from __future__ import annotations

import numpy as np

from fedmine.errors import DataError
from fedmine.gbdt.dtypes import (
    CAT_BITSET_DTYPE,
    CAT_WORDS,
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    NODE_DTYPE,
)
from fedmine.gbdt.model import Tree

__all__ = ["read_tree", "read_trees", "tree_blocks"]

#: LightGBM's ``decision_type`` bits: categorical, default left, and the missing type in bits 2-3.
_CATEGORICAL, _DEFAULT_LEFT = 1, 2
#: LightGBM's missing types (0 None, 1 Zero, 2 NaN) as the engine's missing rules.
_MISSING_RULE = {0: MISSING_NONE, 1: MISSING_ZERO, 2: MISSING_NAN}


def tree_blocks(model_text: str) -> list[str]:
    """The ``Tree=i`` blocks of a LightGBM model text, in order, without their ``Tree=i`` line."""
    body = model_text.split("end of trees", 1)[0]
    parts = body.split("\nTree=")[1:]
    blocks = []
    for part in parts:
        lines = part.strip().splitlines()[1:]  # drop the index
        blocks.append("\n".join(lines))
    return blocks


def _fields(block: str) -> dict[str, str]:
    out = {}
    for line in block.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _numbers(fields: dict[str, str], key: str, dtype, n: int) -> np.ndarray:
    text = fields.get(key, "")
    values = np.array(text.split(), dtype=dtype) if text else np.zeros(0, dtype=dtype)
    if values.shape[0] != n:
        raise DataError(f"LightGBM tree: {key} has {values.shape[0]} values, expected {n}")
    return values


def read_tree(block: str) -> Tree:
    """One LightGBM tree block as a :class:`Tree` (thresholds on raw values; no bins).

    Raises
    ------
    DataError
        A block that is not a plain LightGBM tree (linear trees, categorical
        bitsets wider than :data:`~fedmine.gbdt.dtypes.CAT_WORDS` words,
        inconsistent lengths).
    """
    f = _fields(block)
    n_leaves = int(f.get("num_leaves", "0"))
    if n_leaves < 1:
        raise DataError(f"LightGBM tree: num_leaves must be >= 1, got {f.get('num_leaves')!r}")
    if f.get("is_linear", "0") not in ("0", ""):
        raise DataError("LightGBM tree: linear trees are not supported")
    n_int = n_leaves - 1
    leaf_value = _numbers(f, "leaf_value", np.float64, n_leaves)
    leaf_count = _numbers(f, "leaf_count", np.int64, n_leaves) if f.get("leaf_count") else np.zeros(n_leaves, np.int64)
    leaf_weight = (
        _numbers(f, "leaf_weight", np.float64, n_leaves) if f.get("leaf_weight") else np.zeros(n_leaves, np.float64)
    )
    nodes = np.zeros(2 * n_leaves - 1, dtype=NODE_DTYPE)
    if n_int == 0:
        nodes[0] = Tree.single_leaf(float(leaf_value[0]), int(leaf_count[0]), float(leaf_weight[0])).nodes[0]
        return Tree(nodes)
    feature = _numbers(f, "split_feature", np.int64, n_int)
    gain = _numbers(f, "split_gain", np.float64, n_int)
    threshold = _numbers(f, "threshold", np.float64, n_int)
    decision = _numbers(f, "decision_type", np.int64, n_int)
    left = _numbers(f, "left_child", np.int64, n_int)
    right = _numbers(f, "right_child", np.int64, n_int)
    internal_value = _numbers(f, "internal_value", np.float64, n_int)
    internal_weight = (
        _numbers(f, "internal_weight", np.float64, n_int) if f.get("internal_weight") else np.zeros(n_int, np.float64)
    )
    internal_count = (
        _numbers(f, "internal_count", np.int64, n_int) if f.get("internal_count") else np.zeros(n_int, np.int64)
    )
    n_cat = int(f.get("num_cat", "0") or 0)
    bitsets = np.zeros((n_cat, CAT_WORDS), dtype=CAT_BITSET_DTYPE)
    if n_cat:
        bounds = _numbers(f, "cat_boundaries", np.int64, n_cat + 1)
        words = np.array(f.get("cat_threshold", "").split(), dtype=np.uint64)
        for i in range(n_cat):
            w = words[bounds[i] : bounds[i + 1]]
            if w.shape[0] > CAT_WORDS and np.any(w[CAT_WORDS:]):
                raise DataError(f"LightGBM tree: a categorical split uses a category code >= {32 * CAT_WORDS}")
            w = w[:CAT_WORDS]
            bitsets[i, : w.shape[0]] = w.astype(CAT_BITSET_DTYPE)

    # depth-first, root first: every child's record comes after its parent's
    stack = [(0, -1, 0)]  # (LightGBM child pointer, parent record, depth); the root is internal 0
    i = 0
    while stack:
        ptr, parent, depth = stack.pop()
        r = nodes[i]
        r["parent"], r["depth"], r["slot"] = parent, depth, i
        if parent >= 0:
            side = "left" if nodes[parent]["left"] == -2 else "right"
            nodes[parent][side] = i
        if ptr < 0:  # leaf ~ptr
            leaf = ~ptr
            r["is_leaf"], r["feature"], r["left"], r["right"] = 1, -1, -1, -1
            r["cat_index"], r["split_order"], r["bin_threshold"] = -1, -1, -1
            r["value"], r["count"], r["hess"] = leaf_value[leaf], leaf_count[leaf], leaf_weight[leaf]
        else:
            d = int(decision[ptr])
            r["feature"], r["split_order"], r["gain"] = feature[ptr], ptr, gain[ptr]
            r["value"], r["count"], r["hess"] = internal_value[ptr], internal_count[ptr], internal_weight[ptr]
            r["bin_threshold"] = -1
            r["default_left"] = 1 if d & _DEFAULT_LEFT else 0
            r["missing"] = _MISSING_RULE.get((d >> 2) & 3, MISSING_NAN)
            if d & _CATEGORICAL:
                r["is_categorical"], r["cat_index"] = 1, int(threshold[ptr])
                if not 0 <= int(threshold[ptr]) < n_cat:
                    raise DataError(f"LightGBM tree: categorical split {ptr} names bitset {threshold[ptr]!r}")
            else:
                r["cat_index"], r["threshold"] = -1, threshold[ptr]
            r["left"] = r["right"] = -2  # filled when the children are placed
            stack.append((int(right[ptr]), i, depth + 1))  # popped second: left subtree first
            stack.append((int(left[ptr]), i, depth + 1))
        i += 1
    return Tree(nodes, cat_bitsets=bitsets)


def read_trees(model_text: str) -> list[Tree]:
    """Every tree of a LightGBM model text, in order."""
    return [read_tree(b) for b in tree_blocks(model_text)]
