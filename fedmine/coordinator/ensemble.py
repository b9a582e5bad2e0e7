"""The global model as LightGBM model text: trees that travel, scale and merge.

A LightGBM model file is a header (objective, feature names, feature infos),
one ``Tree=i`` block per tree, and ``end of trees``. Federated tree strategies
move tree blocks only: a party trains trees on its own rows and sends their
blocks; the coordinator scales them (the server learning rate and the
organisation's weight) and appends them to the global ensemble. The header is
written from the canonical schema, never copied from a party's model, so it
carries no party's data ranges. ``tree_sizes`` is left out of the header
(LightGBM then parses trees sequentially; a wrong value would abort it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedmine.config import FederationConfig
from fedmine.gbdt.modeltext import tree_blocks

_SCALED_KEYS = ("leaf_value", "internal_value")


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


def header_for(cfg: FederationConfig) -> str:
    """The model header the canonical schema implies (no party's statistics in it)."""
    names = list(cfg.features)
    return "\n".join(
        [
            "tree",
            "version=v4",
            f"num_class={cfg.num_class}",
            f"num_tree_per_iteration={cfg.num_class}",
            "label_index=0",
            f"max_feature_idx={len(names) - 1}",
            f"objective={_objective_line(cfg)}",
            "feature_names=" + " ".join(names),
            "feature_infos=" + " ".join(_feature_info(cfg.features[n]) for n in names),
        ]
    )


def _transform(block: str, fn) -> str:
    out = []
    for line in block.splitlines():
        key, _, value = line.partition("=")
        if key in _SCALED_KEYS and value:
            values = np.array(value.split(" "), dtype=np.float64)
            value = " ".join(repr(float(v)) for v in fn(values))
            line = f"{key}={value}"
        out.append(line)
    return "\n".join(out)


def scale_tree(block: str, factor: float) -> str:
    """A tree whose every output is multiplied by ``factor``."""
    if factor == 1.0:
        return block
    block = _transform(block, lambda v: v * factor)
    lines = []
    for line in block.splitlines():
        if line.startswith("shrinkage="):
            line = f"shrinkage={float(line.split('=', 1)[1]) * factor!r}"
        lines.append(line)
    return "\n".join(lines)


def add_bias(block: str, bias: float) -> str:
    """A tree whose every output is shifted by ``bias`` (LightGBM's boost-from-average)."""
    if bias == 0.0:
        return block
    return _transform(block, lambda v: v + bias)


@dataclass
class Ensemble:
    """The global model: a header and tree blocks, ``num_class`` trees per iteration.

    Parameters
    ----------
    header : str
        From :func:`header_for`.
    num_class : int
        Trees per boosting iteration.
    base_score : ndarray of shape (num_class,)
        The initial raw score; folded into the first iteration's trees.
    """

    header: str
    num_class: int
    base_score: np.ndarray
    trees: list[str] = field(default_factory=list)

    @classmethod
    def for_config(cls, cfg: FederationConfig, base_score: np.ndarray) -> "Ensemble":
        return cls(header=header_for(cfg), num_class=cfg.num_class, base_score=np.asarray(base_score, float))

    @property
    def num_trees(self) -> int:
        return len(self.trees)

    def append(self, blocks: list[str]) -> None:
        """Append whole iterations (a multiple of ``num_class`` trees), without the base score."""
        if len(blocks) % self.num_class:
            raise ValueError(f"expected a multiple of {self.num_class} trees, got {len(blocks)}")
        self.trees.extend(blocks)

    def truncate(self, n_trees: int) -> None:
        """Keep the first ``n_trees`` trees (early stopping's best round)."""
        del self.trees[n_trees:]

    def to_text(self, trees: list[str] | None = None) -> str:
        """LightGBM model text.

        Without ``trees``: the whole model, the base score folded into the first
        iteration's trees (as LightGBM does). With ``trees``: just those trees
        under this header and without the base score (a delta a party applies
        to scores that already start from the base score).
        """
        if trees is None:
            trees = [add_bias(b, float(self.base_score[i])) if i < self.num_class else b for i, b in enumerate(self.trees)]
        parts = [self.header, ""]
        for i, block in enumerate(trees):
            parts.append(f"Tree={i}\n{block}\n")
        parts.append("end of trees\n")
        return "\n".join(parts)
