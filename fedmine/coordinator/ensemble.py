"""The global model of the tree strategies: engine tree records that travel, scale and merge.

Under ``bagging``, ``cyclic`` and ``local`` an organisation trains trees with
LightGBM on its own rows and answers them as engine tree records
(:func:`fedmine.gbdt.modeltext.read_trees`); the coordinator scales them (the
server learning rate and the organisation's weight) and appends them to the
global :class:`Ensemble`. The model text is written by
:func:`fedmine.gbdt.export.to_lightgbm_text`, the one LightGBM text writer,
with a header made from the canonical schema (:func:`schema_model`), never
from a party's data, so it carries no party's data ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedmine.config import FederationConfig
from fedmine.gbdt.export import to_lightgbm_text
from fedmine.gbdt.model import Model, Tree


def _objective_line(cfg: FederationConfig) -> str:
    if cfg.objective == "binary":
        return "binary sigmoid:1"
    if cfg.objective == "multiclass":
        return f"multiclass num_class:{cfg.num_class}"
    return cfg.objective  # regression, poisson, tweedie


def _feature_info(spec) -> str:
    if spec.type == "category":
        return ":".join(str(i) for i in range(len(spec.categories)))
    if spec.type == "bool":
        return "[0:1]"
    if spec.min is not None and spec.max is not None:
        return f"[{spec.min!r}:{spec.max!r}]"
    return "none"


def schema_model(cfg: FederationConfig, trees: list[Tree], base_score: np.ndarray) -> Model:
    """A :class:`Model` of ``trees`` whose header comes from the canonical schema (no party's statistics)."""
    names = list(cfg.features)
    return Model(
        trees=list(trees),
        init_scores=np.asarray(base_score, dtype=np.float64),
        objective=cfg.objective,
        objective_line=_objective_line(cfg),
        n_trees_per_round=cfg.num_class,
        n_features=len(names),
        feature_names=names,
        categorical=np.array([cfg.features[n].type == "category" for n in names], dtype=bool),
        feature_infos=[_feature_info(cfg.features[n]) for n in names],
        params={"learning_rate": 1.0},
        best_iteration=len(trees) // max(cfg.num_class, 1),
        history=[],
    )


def scale_tree(tree: Tree, factor: float) -> Tree:
    """A tree whose every output (leaf and internal values) is multiplied by ``factor``."""
    if factor == 1.0:
        return tree
    nodes = tree.nodes.copy()
    nodes["value"] = nodes["value"] * factor
    return Tree(nodes, cat_bitsets=tree.cat_bitsets.copy())


@dataclass
class Ensemble:
    """The global model: tree records, ``num_class`` trees per iteration.

    Parameters
    ----------
    cfg : FederationConfig
        The canonical schema gives the model text's header.
    base_score : ndarray of shape (num_class,)
        The initial raw score; folded into the first iteration's trees in the model text.
    """

    cfg: FederationConfig
    base_score: np.ndarray
    trees: list[Tree] = field(default_factory=list)

    @classmethod
    def for_config(cls, cfg: FederationConfig, base_score: np.ndarray) -> Ensemble:
        return cls(cfg=cfg, base_score=np.asarray(base_score, float))

    @property
    def num_class(self) -> int:
        return self.cfg.num_class

    @property
    def num_trees(self) -> int:
        return len(self.trees)

    def append(self, trees: list[Tree]) -> None:
        """Append whole iterations (a multiple of ``num_class`` trees), without the base score."""
        if len(trees) % self.num_class:
            raise ValueError(f"expected a multiple of {self.num_class} trees, got {len(trees)}")
        self.trees.extend(trees)

    def truncate(self, n_trees: int) -> None:
        """Keep the first ``n_trees`` trees (early stopping's best round)."""
        del self.trees[n_trees:]

    def to_text(self) -> str:
        """The whole model as LightGBM model text, the base score folded into the first iteration's trees."""
        return to_lightgbm_text(schema_model(self.cfg, self.trees, self.base_score))
