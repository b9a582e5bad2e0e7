"""Leaf-wise growth of the trees of one round against a HistogramSource.

This module owns the coordinator's side of tree growth. It sees only summed
integer histograms (:mod:`fedmine.gbdt.source`) and never a row. The trees of
a round (one per class) grow in lockstep, so every exchange carries a batch:
the roots of all trees first, then at each step the smaller child of the leaf
each tree splits::

    step 0   histograms([root_0, ..., root_{K-1}])
    step s   for each tree: split its best leaf (LightGBM's leaf-wise rule),
             apply_split(...) to the parties, pick the smaller child by the
             *global* counts of the split (ties: left)
             histograms([smaller child of each tree])   one exchange
             sibling = parent - smaller, on the coordinator (exact in int64)

Rules follow LightGBM's ``SerialTreeLearner``: the leaf with the largest gain
splits (ties: lowest leaf index, LightGBM's numbering), growth stops at
``num_leaves`` or when no leaf has a positive gain; a leaf at ``max_depth`` or
with fewer than ``2 * min_data_in_leaf`` rows is not searched, and children are
not searched after the last split. Leaf outputs are computed when a leaf is
created, from its integer sums, and shrunk by ``learning_rate`` at the end.
"""

from __future__ import annotations

import numpy as np

from fedmine.gbdt.dtypes import CAT_BITSET_DTYPE, CAT_WORDS, COUNT, GRAD, HESS, NODE_DTYPE
from fedmine.gbdt.model import Tree
from fedmine.gbdt.source import NODE_STRIDE
from fedmine.gbdt.splitting import find_best_split, leaf_output


class _TreeState:
    """Scratch state of one growing tree (dropped when the tree is built)."""

    def __init__(self, max_nodes: int):
        self.nodes = np.zeros(max_nodes, dtype=NODE_DTYPE)
        self.out = np.zeros(max_nodes, dtype=np.float64)  # unshrunk outputs
        self.n_nodes = 1
        self.leaf_slots = [0]  # LightGBM leaf index -> node
        self.best = {}  # node -> (split record, bitset), leaves only
        self.hist = {}  # node -> histogram, leaves that may split
        self.bitsets = []
        self.n_splits = 0
        self.active = True


class TreeGrower:
    """Grow the trees of one round.

    Parameters
    ----------
    source : HistogramSource
        Summed histograms of all parties, and the split broadcast.
    mapper : BinMapper
        Global bins (numeric thresholds come from its edges).
    rules : SplitRules
    num_leaves, max_depth : int
    learning_rate : float
    grad_scales, hess_scales : ndarray of shape (n_trees,)
        Fixed-point scales of the round, per tree.
    feature_masks : ndarray of shape (n_trees, n_features), bool
    """

    def __init__(self, source, *, mapper, rules, num_leaves, max_depth, learning_rate, grad_scales, hess_scales,
                 feature_masks):
        self.source = source
        self.mapper = mapper
        self.rules = rules
        self.num_leaves = int(num_leaves)
        self.max_depth = int(max_depth)
        self.learning_rate = float(learning_rate)
        self.grad_scales = np.asarray(grad_scales, dtype=np.float64)
        self.hess_scales = np.asarray(hess_scales, dtype=np.float64)
        self.feature_masks = np.asarray(feature_masks, dtype=bool)
        self._rules_array = rules.as_array()

    # ------------------------------------------------------------------
    def _searchable(self, st: _TreeState, node: int) -> bool:
        nd = st.nodes[node]
        if self.max_depth > 0 and nd["depth"] >= self.max_depth:
            return False
        return nd["count"] >= 2 * self.rules.min_data_in_leaf and nd["count"] >= 2

    def _search(self, k: int, st: _TreeState, node: int, hist: np.ndarray) -> None:
        split, bits = find_best_split(
            hist,
            allowed=self.feature_masks[k],
            n_bins=self.mapper.n_bins,
            categorical=self.mapper.categorical,
            nan_bin=self.mapper.nan_bin,
            grad_scale=self.grad_scales[k],
            hess_scale=self.hess_scales[k],
            rules=self._rules_array,
            parent_output=st.out[node],
        )
        st.best[node] = (split, bits)
        st.hist[node] = hist

    def _split(self, k: int, st: _TreeState, leaf_index: int):
        """Split the leaf at ``leaf_index``; returns (parent, left, right)."""
        parent = st.leaf_slots[leaf_index]
        split, bits = st.best.pop(parent)
        left, right = st.n_nodes, st.n_nodes + 1
        st.n_nodes += 2
        nd = st.nodes
        f = int(split["feature"])
        is_cat = bool(split["is_categorical"])
        p = nd[parent]
        p["is_leaf"] = 0
        p["feature"] = f
        p["is_categorical"] = is_cat
        p["gain"] = split["gain"]
        p["left"], p["right"] = left, right
        p["split_order"] = st.n_splits
        st.n_splits += 1
        if is_cat:
            p["cat_index"] = len(st.bitsets)
            st.bitsets.append(bits.copy())
            p["bin_threshold"] = 0
            p["threshold"] = float(p["cat_index"])
            p["default_left"] = 0
        else:
            p["bin_threshold"] = split["bin_threshold"]
            p["threshold"] = self.mapper.threshold(f, int(split["bin_threshold"]))
            p["default_left"] = split["default_left"]
        for child, side in ((left, "left"), (right, "right")):
            c = nd[child]
            c["is_leaf"] = 1
            c["feature"] = -1
            c["cat_index"] = -1
            c["left"] = c["right"] = -1
            c["split_order"] = -1
            c["parent"] = parent
            c["depth"] = p["depth"] + 1
            c["count"] = split[side + "_count"]
            c["sum_grad"] = split[side + "_grad"]
            c["sum_hess"] = split[side + "_hess"]
            c["hess"] = split[side + "_hess"] / self.hess_scales[k]
            st.out[child] = split[side + "_value"]
        st.leaf_slots[leaf_index] = left
        st.leaf_slots.append(right)
        self.source.apply_split(
            k * NODE_STRIDE + parent,
            f,
            int(p["bin_threshold"]),
            bool(p["default_left"]),
            bits if is_cat else None,
            k * NODE_STRIDE + left,
            k * NODE_STRIDE + right,
        )
        return parent, left, right

    def _best_leaf(self, st: _TreeState) -> int:
        best_i, best_gain = -1, 0.0
        for i, node in enumerate(st.leaf_slots):
            entry = st.best.get(node)
            if entry is not None and entry[0]["gain"] > best_gain:
                best_i, best_gain = i, float(entry[0]["gain"])
        return best_i

    # ------------------------------------------------------------------
    def grow(self) -> list:
        """Grow every tree of the round; returns one :class:`Tree` per tree."""
        n_trees = self.grad_scales.shape[0]
        max_nodes = 2 * self.num_leaves - 1
        states = [_TreeState(max_nodes) for _ in range(n_trees)]
        roots = self.source.histograms(np.arange(n_trees, dtype=np.int64) * NODE_STRIDE)
        l1, l2 = self.rules.lambda_l1, self.rules.lambda_l2
        for k, st in enumerate(states):
            h = roots[k]
            r = st.nodes[0]
            r["is_leaf"] = 1
            r["feature"] = r["left"] = r["right"] = r["parent"] = r["cat_index"] = r["split_order"] = -1
            r["sum_grad"] = h[0, :, GRAD].sum()
            r["sum_hess"] = h[0, :, HESS].sum()
            r["count"] = h[0, :, COUNT].sum()
            r["hess"] = r["sum_hess"] / self.hess_scales[k]
            st.out[0] = leaf_output(r["sum_grad"] / self.grad_scales[k], r["hess"], l1, l2)
            if self.num_leaves > 1 and self._searchable(st, 0):
                self._search(k, st, 0, h)
        del roots

        while True:
            requests, pending = [], []
            for k, st in enumerate(states):
                if not st.active:
                    continue
                leaf_index = self._best_leaf(st) if len(st.leaf_slots) < self.num_leaves else -1
                if leaf_index < 0:
                    st.active = False
                    st.hist.clear()
                    st.best.clear()
                    continue
                parent, left, right = self._split(k, st, leaf_index)
                parent_hist = st.hist.pop(parent)
                last = len(st.leaf_slots) >= self.num_leaves
                want = [c for c in (left, right) if not last and self._searchable(st, c)]
                if not want:
                    continue
                smaller = left if st.nodes[left]["count"] <= st.nodes[right]["count"] else right
                larger = right if smaller == left else left
                requests.append(k * NODE_STRIDE + smaller)
                pending.append((k, st, smaller, larger, parent_hist, want))
            if not requests:
                if all(not st.active for st in states):
                    break
                continue
            hists = self.source.histograms(np.asarray(requests, dtype=np.int64))
            for j, (k, st, smaller, larger, parent_hist, want) in enumerate(pending):
                small_h = hists[j]
                for node, h in ((smaller, small_h), (larger, None)):
                    if node not in want:
                        continue
                    if h is None:
                        h = parent_hist - small_h
                    self._search(k, st, node, h)
        return [self._finish(st) for st in states]

    def _finish(self, st: _TreeState) -> Tree:
        nodes = st.nodes[: st.n_nodes].copy()
        nodes["value"] = st.out[: st.n_nodes] * self.learning_rate
        bitsets = (
            np.stack(st.bitsets).astype(CAT_BITSET_DTYPE)
            if st.bitsets
            else np.zeros((0, CAT_WORDS), dtype=CAT_BITSET_DTYPE)
        )
        return Tree(nodes, bitsets)
