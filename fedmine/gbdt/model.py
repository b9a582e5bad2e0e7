"""Trees and models as plain data.

This module owns :class:`Tree` (a flat :data:`~fedmine.gbdt.dtypes.NODE_DTYPE`
array plus its categorical bitsets) and :class:`Model` (the trees of every
round, the initial scores and what export needs). Neither holds behaviour
beyond accessors; prediction lives in :mod:`fedmine.gbdt.predictor`, export in
:mod:`fedmine.gbdt.export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedmine.gbdt.dtypes import CAT_BITSET_DTYPE, CAT_WORDS, NODE_DTYPE


@dataclass
class Tree:
    """One tree.

    Attributes
    ----------
    nodes : ndarray of shape (n_nodes,), NODE_DTYPE
        Root at 0; node ``i``'s children are ``nodes[i].left / .right``.
    cat_bitsets : ndarray of shape (n_cat_splits, 8), uint32
        Row ``nodes[i].cat_index`` holds the categories (bins) going left.
    """

    nodes: np.ndarray
    cat_bitsets: np.ndarray = field(default_factory=lambda: np.zeros((0, CAT_WORDS), dtype=CAT_BITSET_DTYPE))

    @property
    def n_leaves(self) -> int:
        return int(self.nodes["is_leaf"].sum())

    def leaf_ids(self) -> np.ndarray:
        return np.flatnonzero(self.nodes["is_leaf"])

    def equal(self, other: Tree) -> bool:
        """Bit-for-bit equality of nodes and bitsets."""
        return (
            self.nodes.dtype == other.nodes.dtype
            and np.array_equal(self.nodes.view(np.uint8), other.nodes.view(np.uint8))
            and np.array_equal(self.cat_bitsets, other.cat_bitsets)
        )

    @staticmethod
    def single_leaf(value: float = 0.0, count: int = 0, hess: float = 0.0) -> Tree:
        nodes = np.zeros(1, dtype=NODE_DTYPE)
        nodes[0]["is_leaf"] = 1
        nodes[0]["feature"] = -1
        nodes[0]["left"] = nodes[0]["right"] = nodes[0]["parent"] = -1
        nodes[0]["cat_index"] = -1
        nodes[0]["split_order"] = -1
        nodes[0]["slot"] = 0
        nodes[0]["value"] = value
        nodes[0]["count"] = count
        nodes[0]["hess"] = hess
        return Tree(nodes)


@dataclass
class Model:
    """A trained model.

    Attributes
    ----------
    trees : list of Tree
        Round-major: tree ``r * n_trees_per_round + k`` is class ``k`` of round ``r``.
    init_scores : ndarray of shape (n_trees_per_round,), float64
        Added to the raw score of each class (LightGBM folds it into the first
        round's trees, and so does export).
    objective : str
    objective_line : str
        LightGBM's ``objective=`` line.
    n_trees_per_round : int
    n_features : int
    feature_names : list of str
    categorical : ndarray of shape (n_features,), bool
    feature_infos : list of str
        LightGBM's ``feature_infos`` entries.
    params : dict
    best_iteration : int
        Rounds kept (early stopping truncates ``trees`` to these).
    history : list of float
        Validation metric per round, if a validation set was given.
    """

    trees: list
    init_scores: np.ndarray
    objective: str
    objective_line: str
    n_trees_per_round: int
    n_features: int
    feature_names: list
    categorical: np.ndarray
    feature_infos: list
    params: dict
    best_iteration: int = 0
    history: list = field(default_factory=list)

    @property
    def n_rounds(self) -> int:
        return len(self.trees) // self.n_trees_per_round

    def equal(self, other: Model) -> bool:
        return (
            len(self.trees) == len(other.trees)
            and all(a.equal(b) for a, b in zip(self.trees, other.trees))
            and np.array_equal(self.init_scores, other.init_scores)
        )


def tree_arrays(trees: list[Tree]) -> dict[str, np.ndarray]:
    """Named arrays of ``trees`` for a checkpoint: ``tree{i}.nodes`` and ``tree{i}.cat_bitsets``."""
    arrays = {}
    for i, tree in enumerate(trees):
        arrays[f"tree{i}.nodes"] = tree.nodes
        arrays[f"tree{i}.cat_bitsets"] = tree.cat_bitsets
    return arrays


def trees_from_arrays(arrays: dict[str, np.ndarray], n_trees: int) -> list[Tree]:
    """The first ``n_trees`` trees of :func:`tree_arrays`' output."""
    return [Tree(nodes=arrays[f"tree{i}.nodes"], cat_bitsets=arrays[f"tree{i}.cat_bitsets"]) for i in range(n_trees)]
