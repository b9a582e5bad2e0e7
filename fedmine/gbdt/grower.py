"""Leaf-wise growth of the trees of one round against a HistogramSource.

This module owns the coordinator's side of tree growth. It sees only summed
integer histograms (:mod:`fedmine.gbdt.rows`) and never a row. Every
exchange carries a batch of nodes:

* the trees of a round (one per class) grow in lockstep, one node each;
* with ``lookahead = L > 0`` each tree also opens up to ``L`` more leaves, the
  next best by gain, speculatively: their split is sent and their smaller
  child's histogram travels in the same exchange. A leaf's histogram never
  changes, so neither does its best split: if the leaf-wise rule later picks
  it, its children are ready and no exchange is needed; if it never does, the
  party's partition simply holds the leaf's rows as two adjacent segments.
  The tree is the same for every ``L``; only the number of exchanges (fewer)
  and the histograms computed (a few more) change.

::

    step 0   histograms([root_0, ..., root_{K-1}])
    step s   for each tree: split its best leaf (LightGBM's leaf-wise rule);
             if its children are not known yet: apply_split(...), ask for the
             smaller child by the *global* counts of the split (ties: left);
             open up to L more leaves the same way
             histograms([...])     one exchange for the whole batch
             sibling = parent - smaller, on the coordinator (exact in int64)

Rules follow LightGBM's ``SerialTreeLearner``: the leaf with the largest gain
splits (ties: lowest leaf index, LightGBM's numbering), growth stops at
``num_leaves`` or when no leaf has a positive gain; a leaf at ``max_depth`` or
with fewer than ``2 * min_data_in_leaf`` rows is not searched, and children are
not searched after the last split. Leaf outputs are computed when a leaf is
created, from its integer sums, and shrunk by ``learning_rate`` at the end.

Differential privacy (``clamp=True``): summed histograms carry noise, so the
hessian and count fields of every received histogram, and of every sibling
``parent - smaller``, are clamped at 0 (:func:`~fedmine.privacy.noise.clamp_histograms`),
and so are a new leaf's count and hessian. Gains and leaf outputs then stay
finite (``leaf_output`` is 0 without hessian); everything is post-processing
of the noisy sums. The nodes of one exchange are disjoint within each tree
(the smaller child of distinct leaves), so one row is in at most one node per
tree of a release.

Node ids on the wire are *slots* (``tree * NODE_STRIDE + slot``), handed out
when a split is sent; each node records its slot so a party can find the
node's rows in its partition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmine.errors import PartyError
from fedmine.gbdt.dtypes import CAT_BITSET_DTYPE, CAT_WORDS, COUNT, GRAD, HESS, NODE_DTYPE
from fedmine.gbdt.model import Tree
from fedmine.gbdt.rows import NODE_STRIDE
from fedmine.gbdt.splitting import find_best_split, leaf_output
from fedmine.privacy.noise import clamp_histograms

#: Largest ``lookahead``.
MAX_LOOKAHEAD = 7


def max_slots(num_leaves: int, lookahead: int) -> int:
    """Slots one tree may use: its nodes plus the children of opened leaves never split."""
    return 1 + 2 * (num_leaves - 1) * (1 + lookahead)


class _TreeState:
    """Scratch state of one growing tree (dropped when the tree is built)."""

    def __init__(self, max_nodes: int):
        self.nodes = np.zeros(max_nodes, dtype=NODE_DTYPE)
        self.out = np.zeros(max_nodes, dtype=np.float64)  # unshrunk outputs
        self.n_nodes = 1
        self.n_slots = 1
        self.leaf_slots = [0]  # LightGBM leaf index -> node
        self.best: dict[int, tuple[np.void, np.ndarray]] = {}  # node -> (split record, bitset), leaves only
        self.hist: dict[int, np.ndarray] = {}  # node -> histogram, leaves that may split
        # node -> [left slot, right slot, left hist, right hist] of a sent split (hists None until received)
        self.opened: dict[int, list[Any]] = {}
        self.bitsets: list[np.ndarray] = []
        self.n_splits = 0
        self.active = True


def check_histograms(hists: np.ndarray, node_ids: np.ndarray) -> None:
    """Exact sums add up: in every node, every feature's bin counts total the same, none negative.

    Each row of a node falls in exactly one bin of every feature (missing
    values in the NaN bin), so honest integer sums always pass. Sums of
    answers that do not cancel (parties that were sent different requests,
    masks that do not match, a faulty party) fail here, loudly, before a
    split is made of them.

    Raises
    ------
    PartyError
        Naming the first node whose counts do not add up.
    """
    counts = hists[..., COUNT]
    totals = counts.sum(axis=2)  # (n_nodes, n_features)
    bad = np.flatnonzero((counts < 0).any(axis=(1, 2)) | (totals != totals[:, :1]).any(axis=1))
    if bad.size:
        j = int(bad[0])
        raise PartyError(
            f"the organisations' histograms of node {int(node_ids[j])} do not add up (feature counts "
            f"{int(totals[j].min())}..{int(totals[j].max())}): the parties answered different requests, "
            f"or a party is faulty"
        )


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
    lookahead : int
        Extra leaves opened per tree and exchange (0: one node per tree).
    clamp : bool
        Histograms are noisy (DP): clamp hessians and counts at 0.

    Attributes
    ----------
    exchanges_ : int
        ``histograms`` requests made by :meth:`grow` (DP releases).
    """

    def __init__(
        self,
        source,
        *,
        mapper,
        rules,
        num_leaves,
        max_depth,
        learning_rate,
        grad_scales,
        hess_scales,
        feature_masks,
        lookahead: int = 0,
        clamp: bool = False,
    ):
        self.source = source
        self.mapper = mapper
        self.rules = rules
        self.num_leaves = int(num_leaves)
        self.max_depth = int(max_depth)
        self.learning_rate = float(learning_rate)
        self.grad_scales = np.asarray(grad_scales, dtype=np.float64)
        self.hess_scales = np.asarray(hess_scales, dtype=np.float64)
        self.feature_masks = np.asarray(feature_masks, dtype=bool)
        self.lookahead = int(lookahead)
        self.clamp = bool(clamp)
        self._rules_array = rules.as_array()
        self.exchanges_ = 0
        self._roots: np.ndarray | None = None

    def _receive(self, node_ids: np.ndarray) -> np.ndarray:
        """One exchange: the summed histograms of ``node_ids`` (clamped under DP, checked without noise)."""
        self.exchanges_ += 1
        hists = self.source.histograms(node_ids)
        if self.clamp:
            return clamp_histograms(hists)
        check_histograms(hists, node_ids)
        return hists

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

    def _children_wanted(self, st: _TreeState, node: int) -> bool:
        """Will a child of ``node``'s split be searched if ``node`` splits next?"""
        if len(st.leaf_slots) + 1 >= self.num_leaves:
            return False
        if self.max_depth > 0 and st.nodes[node]["depth"] + 1 >= self.max_depth:
            return False
        split = st.best[node][0]
        need = max(2 * self.rules.min_data_in_leaf, 2)
        return split["left_count"] >= need or split["right_count"] >= need

    def _send_split(
        self,
        k: int,
        st: _TreeState,
        node: int,
        requests: list[int],
        pending: list[tuple[int, _TreeState, int, bool]],
        *,
        want_hist: bool = True,
    ) -> None:
        """Send ``node``'s best split to the parties and ask for its smaller child."""
        split, bits = st.best[node]
        left, right = st.n_slots, st.n_slots + 1
        st.n_slots += 2
        is_cat = bool(split["is_categorical"])
        self.source.apply_split(
            k * NODE_STRIDE + int(st.nodes[node]["slot"]),
            int(split["feature"]),
            int(split["bin_threshold"]) if not is_cat else 0,
            bool(split["default_left"]),
            bits if is_cat else None,
            k * NODE_STRIDE + left,
            k * NODE_STRIDE + right,
        )
        st.opened[node] = [left, right, None, None]
        if not want_hist:
            return
        small_left = split["left_count"] <= split["right_count"]
        requests.append(k * NODE_STRIDE + (left if small_left else right))
        pending.append((k, st, node, small_left))

    def _commit(self, k: int, st: _TreeState, leaf_index: int):
        """Make the leaf at ``leaf_index`` an internal node; returns (left, right) nodes."""
        parent = st.leaf_slots[leaf_index]
        split, bits = st.best.pop(parent)
        left_slot, right_slot, _, _ = st.opened[parent]
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
        for child, slot, side in ((left, left_slot, "left"), (right, right_slot, "right")):
            c = nd[child]
            c["is_leaf"] = 1
            c["slot"] = slot
            c["feature"] = -1
            c["cat_index"] = -1
            c["left"] = c["right"] = -1
            c["split_order"] = -1
            c["parent"] = parent
            c["depth"] = p["depth"] + 1
            c["count"] = split[side + "_count"]
            c["sum_grad"] = split[side + "_grad"]
            c["sum_hess"] = split[side + "_hess"]
            if self.clamp:  # noisy sums: a difference of noisy totals may be negative
                c["count"] = max(c["count"], 0)
                c["sum_hess"] = max(c["sum_hess"], 0)
            c["hess"] = c["sum_hess"] / self.hess_scales[k]
            st.out[child] = split[side + "_value"]
        st.leaf_slots[leaf_index] = left
        st.leaf_slots.append(right)
        return parent, left, right

    def _ranked_leaves(self, st: _TreeState) -> list:
        """Leaf indices with a positive best gain, best first (ties: lower leaf index)."""
        cand = []
        for i, node in enumerate(st.leaf_slots):
            entry = st.best.get(node)
            if entry is not None and entry[0]["gain"] > 0.0:
                cand.append((-float(entry[0]["gain"]), i))
        cand.sort()
        return [i for _, i in cand]

    def _children_ready(self, k: int, st: _TreeState, node: int, left: int, right: int) -> None:
        """Search the children of a committed split whose histograms have arrived."""
        _, _, h_left, h_right = st.opened.pop(node)
        st.hist.pop(node, None)
        if len(st.leaf_slots) >= self.num_leaves:
            return
        for child, h in ((left, h_left), (right, h_right)):
            if self._searchable(st, child):
                self._search(k, st, child, h)

    # ------------------------------------------------------------------
    def open(self) -> None:
        """Ask for the roots' histograms now (the round's first exchange; :meth:`grow` asks if this was not called)."""
        n_trees = self.grad_scales.shape[0]
        self._roots = self._receive(np.arange(n_trees, dtype=np.int64) * NODE_STRIDE)

    def grow(self) -> list:
        """Grow every tree of the round; returns one :class:`Tree` per tree."""
        n_trees = self.grad_scales.shape[0]
        states = [_TreeState(max_slots(self.num_leaves, self.lookahead)) for _ in range(n_trees)]
        if self._roots is None:
            self.open()
        roots, self._roots = self._roots, None
        assert roots is not None  # asked for just above
        l1, l2 = self.rules.lambda_l1, self.rules.lambda_l2
        for k, st in enumerate(states):
            h = roots[k]
            r = st.nodes[0]
            r["is_leaf"] = 1
            r["slot"] = 0
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
            requests: list[int] = []
            pending: list[tuple[int, _TreeState, int, bool]] = []
            ready: list[tuple[int, _TreeState, int, int, int]] = []
            for k, st in enumerate(states):
                while st.active:  # split this tree's best leaves until one needs an exchange
                    ranked = self._ranked_leaves(st) if len(st.leaf_slots) < self.num_leaves else []
                    if not ranked:
                        st.active = False
                        st.hist.clear()
                        st.best.clear()
                        st.opened.clear()
                        break
                    node = st.leaf_slots[ranked[0]]
                    if node in st.opened:  # opened in an earlier exchange: its children are here
                        parent, left, right = self._commit(k, st, ranked[0])
                        self._children_ready(k, st, parent, left, right)
                        continue
                    want = self._children_wanted(st, node)
                    self._send_split(k, st, node, requests, pending, want_hist=want)
                    parent, left, right = self._commit(k, st, ranked[0])
                    if not want:  # no child will be searched: nothing to wait for
                        st.opened.pop(parent)
                        st.hist.pop(parent, None)
                        continue
                    ready.append((k, st, parent, left, right))
                    # open the next best leaves while the budget of splits may reach them
                    budget = self.num_leaves - len(st.leaf_slots)
                    extra = 0
                    for leaf_index in ranked[1:]:
                        if budget <= 0 or extra >= self.lookahead:
                            break
                        other = st.leaf_slots[leaf_index]
                        if other not in st.opened:
                            self._send_split(k, st, other, requests, pending)
                            extra += 1
                        budget -= 1
                    break
            if not requests:
                break
            hists = self._receive(np.asarray(requests, dtype=np.int64))
            for j, (_, st, node, small_left) in enumerate(pending):
                small = hists[j]
                large = st.hist[node] - small
                if self.clamp:
                    clamp_histograms(large)
                st.opened[node][2:] = (small, large) if small_left else (large, small)
            for k, st, parent, left, right in ready:
                self._children_ready(k, st, parent, left, right)
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
