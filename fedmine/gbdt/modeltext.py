"""LightGBM model text read back: the tree blocks of a model (:mod:`fedmine.gbdt.export` writes it).

Organisations that train with LightGBM itself (the ``bagging`` and ``cyclic``
strategies) answer with the ``Tree=i`` blocks of their model text; this module
owns taking a model text apart.
"""

from __future__ import annotations

__all__ = ["tree_blocks"]


def tree_blocks(model_text: str) -> list[str]:
    """The ``Tree=i`` blocks of a LightGBM model text, in order, without their ``Tree=i`` line."""
    body = model_text.split("end of trees", 1)[0]
    parts = body.split("\nTree=")[1:]
    blocks = []
    for part in parts:
        lines = part.strip().splitlines()[1:]  # drop the index
        blocks.append("\n".join(lines))
    return blocks
