"""LightGBM model text from a :class:`~fedmine.gbdt.model.Model`.

This module owns the translation to LightGBM's text format (``tree`` header,
one ``Tree=i`` block per tree, ``end of trees``), which ``lightgbm.Booster(
model_str=...)`` loads and which predicts what the engine predicts.

Format notes
------------
* Internal nodes are numbered in split order and leaves as LightGBM numbers
  them (a split keeps the parent's leaf index on the left and gives the right
  child the next one); a child pointer to leaf ``j`` is written ``~j = -j-1``.
* ``decision_type`` bits: 1 = categorical, 2 = default left, bits 2-3 = missing
  type. The engine's own splits use missing type NaN (value 2, i.e. ``+8``):
  numeric splits send NaN to the default side and compare ``value <= threshold``
  otherwise, categorical splits send NaN (and negative codes) right, exactly
  the engine's rules. Trees read from LightGBM keep their numeric splits'
  missing type (None, Zero) in the record's ``missing`` field.
* Numeric thresholds are the bin upper edges, real numbers written with 17
  significant digits (round trip); categorical splits write the index of their
  bitset in ``threshold`` and the bitsets in ``cat_boundaries``/``cat_threshold``
  (uint32 words, trailing zero words trimmed).
* The initial score is folded into the first round's trees (leaf and internal
  values), as LightGBM does with ``boost_from_average``.
* ``leaf_count``/``internal_count`` (in-bag rows), ``leaf_weight``/
  ``internal_weight`` (hessian sums), ``internal_value`` and ``split_gain`` are
  written for every tree, so ``pred_contrib=True`` (TreeSHAP) works.
* ``tree_sizes`` is omitted (LightGBM then parses the trees in order).
"""

from __future__ import annotations

import numpy as np

from fedmine.gbdt.booster import canonical_feature_names
from fedmine.gbdt.dtypes import MISSING_NAN, MISSING_NONE, MISSING_ZERO
from fedmine.gbdt.model import Model, Tree

_NAN_MISSING = 2 << 2
#: The record's missing rule as LightGBM's missing type in decision_type bits 2-3.
_MISSING_BITS = {MISSING_NAN: 2 << 2, MISSING_NONE: 0, MISSING_ZERO: 1 << 2}
_CATEGORICAL = 1
_DEFAULT_LEFT = 2


def _num(x) -> str:
    """Round-trip float text (LightGBM parses it with strtod)."""
    x = float(x)
    if x == 0.0:
        return "0"
    r = repr(x)
    return r[:-2] if r.endswith(".0") else r


def _join(values) -> str:
    return " ".join(values)


def tree_to_text(tree: Tree, index: int, *, bias: float = 0.0, shrinkage: float = 1.0) -> str:
    """One ``Tree=index`` block."""
    nd = tree.nodes
    internal = np.flatnonzero(nd["is_leaf"] == 0)
    if internal.size == 0:
        leaf = nd[0]
        lines = [
            f"Tree={index}",
            "num_leaves=1",
            "num_cat=0",
            "split_feature=",
            "split_gain=",
            "threshold=",
            "decision_type=",
            "left_child=",
            "right_child=",
            f"leaf_value={_num(leaf['value'] + bias)}",
            "leaf_weight=",
            f"leaf_count={int(leaf['count'])}",
            "internal_value=",
            "internal_weight=",
            "internal_count=",
            "is_linear=0",
            f"shrinkage={_num(shrinkage)}",
        ]
        return "\n".join(lines) + "\n\n\n"

    order = internal[np.argsort(nd["split_order"][internal], kind="stable")]
    split_index = np.full(nd.shape[0], -1, dtype=np.int64)
    split_index[order] = np.arange(order.size)
    leaf_index = np.full(nd.shape[0], -1, dtype=np.int64)
    leaf_index[0] = 0
    n_leaves = 1
    for node in order:  # replay the splits: left keeps the leaf index, right gets a new one
        leaf_index[nd[node]["left"]] = leaf_index[node]
        leaf_index[nd[node]["right"]] = n_leaves
        n_leaves += 1
    leaves = np.flatnonzero(nd["is_leaf"] == 1)
    leaf_by_index = np.empty(n_leaves, dtype=np.int64)
    leaf_by_index[leaf_index[leaves]] = leaves

    def child(c):
        return str(split_index[c]) if nd[c]["is_leaf"] == 0 else str(-leaf_index[c] - 1)

    words: list[str] = []
    boundaries = [0]
    for bits in tree.cat_bitsets:
        nz = np.flatnonzero(bits)
        used = bits[: (nz[-1] + 1 if nz.size else 1)]
        words.extend(str(int(w)) for w in used)
        boundaries.append(boundaries[-1] + used.size)

    dtype = []
    thresholds = []
    for node in order:
        r = nd[node]
        if r["is_categorical"]:
            dtype.append(str(_CATEGORICAL | _NAN_MISSING))
            thresholds.append(str(int(r["cat_index"])))
        else:
            dtype.append(str((_DEFAULT_LEFT if r["default_left"] else 0) | _MISSING_BITS[int(r["missing"])]))
            thresholds.append(_num(r["threshold"]))

    lines = [
        f"Tree={index}",
        f"num_leaves={n_leaves}",
        f"num_cat={tree.cat_bitsets.shape[0]}",
        "split_feature=" + _join(str(int(nd[n]["feature"])) for n in order),
        "split_gain=" + _join(_num(nd[n]["gain"]) for n in order),
        "threshold=" + _join(thresholds),
        "decision_type=" + _join(dtype),
        "left_child=" + _join(child(nd[n]["left"]) for n in order),
        "right_child=" + _join(child(nd[n]["right"]) for n in order),
        "leaf_value=" + _join(_num(nd[n]["value"] + bias) for n in leaf_by_index),
        "leaf_weight=" + _join(_num(nd[n]["hess"]) for n in leaf_by_index),
        "leaf_count=" + _join(str(int(nd[n]["count"])) for n in leaf_by_index),
        "internal_value=" + _join(_num(nd[n]["value"] + bias) for n in order),
        "internal_weight=" + _join(_num(nd[n]["hess"]) for n in order),
        "internal_count=" + _join(str(int(nd[n]["count"])) for n in order),
    ]
    if tree.cat_bitsets.shape[0]:
        lines.append("cat_boundaries=" + _join(str(b) for b in boundaries))
        lines.append("cat_threshold=" + _join(words))
    lines += ["is_linear=0", f"shrinkage={_num(shrinkage)}"]
    return "\n".join(lines) + "\n\n\n"


def to_lightgbm_text(model: Model, feature_names=None) -> str:
    """LightGBM model text of ``model``.

    Parameters
    ----------
    model : Model
    feature_names : list of str, optional
        Overrides ``model.feature_names``; made canonical (alphanumerics and
        underscores) as LightGBM requires.

    Returns
    -------
    text : str
        Loadable with ``lightgbm.Booster(model_str=text)``.
    """
    names = canonical_feature_names(model.n_features, feature_names or model.feature_names)
    k = model.n_trees_per_round
    lr = float(model.params.get("learning_rate", 1.0))
    head = [
        "tree",
        "version=v4",
        f"num_class={k}",
        f"num_tree_per_iteration={k}",
        "label_index=0",
        f"max_feature_idx={model.n_features - 1}",
        f"objective={model.objective_line}",
        "feature_names=" + " ".join(names),
        "feature_infos=" + " ".join(model.feature_infos),
        "",
        "",
    ]
    body = []
    for i, tree in enumerate(model.trees):
        bias = float(model.init_scores[i]) if i < k else 0.0
        body.append(tree_to_text(tree, i, bias=bias, shrinkage=lr))
    tail = ["end of trees", "", "pandas_categorical:null", ""]
    return "\n".join(head) + "".join(body) + "\n".join(tail)
