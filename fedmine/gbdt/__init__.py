"""The gradient-boosting engine of the ``histogram`` strategy (pure numpy/numba).

Training is driven through an aggregation boundary: the coordinator sees only
integer sums (fixed-point gradient histograms, counts, exact float sums) and
maxima, so training over K parties gives the same model, bit for bit, as
training on the pooled rows. See docs/gbdt.md.

Public API
----------
Training::

    train(party, params, *, categorical=None, feature_names=None, n_grid=16384, callback=None) -> Model
    train_pooled(X, y, params, *, categorical=None, feature_names=None, X_valid=None, y_valid=None) -> Model
    train_partitioned(parts, params, *, categorical=None, feature_names=None, row_ids=None,
                      valid_parts=None, return_group=False) -> Model | (Model, EngineGroup)

Party side (the engine calls of the protocol table, :mod:`fedmine.protocol`; see :mod:`fedmine.gbdt.state`)::

    EngineState(X, y, *, row_ids=None, X_valid=None, y_valid=None)
        describe() -> dict;  feature_ranges() -> (F, 2);  grid_counts(grids, categorical) -> (F, G+1)
        set_bins(mapper);  label_stats(params) -> int64;  configure(params, init_scores)
        begin_round(iteration, last_trees) -> (K, 2) bounds
        start_trees(iteration, grad_scales, hess_scales, *, count_bits, max_nodes)
        histograms(node_ids) -> int64 (n, F, max_bin + 1, 3)
        apply_split(node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id)
        finish(last_trees);  metric_stats(metric) -> int64
    EngineGroup(parties, *, n_threads=None)   K parties seen as one (merges answers;
                                             .source counts exchanges_ and bytes)
    HistogramSource, LocalRows, SumOfSources, NODE_STRIDE   (the grower's boundary)

Model and outputs::

    Model, Tree                                 plain arrays (dtypes.NODE_DTYPE)
    predict_raw(trees, X, *, n_trees_per_round=1, init_scores=None) -> (K, n_rows)
    predict(model, X) -> transformed predictions (probabilities, means)
    to_lightgbm_text(model, feature_names=None) -> str   (lightgbm.Booster(model_str=...))

Parameters are LightGBM's names (:class:`Params`, :func:`make_params`); a bad
value raises :class:`fedmine.errors.ConfigError` naming the key. Engine-only
keys: ``lookahead`` (extra leaves opened per exchange, default 2: fewer
exchanges, identical trees) and ``packed`` ("auto" / "off").

A federation layer wires one message per EngineState call; the coordinator side
is :func:`train` given an object with the same calls that forwards them and
merges the answers as :class:`EngineGroup` does (sum, max, min/max, broadcast).
"""

from __future__ import annotations

import numpy as np

from fedmine.errors import DataError
from fedmine.gbdt.binning import BinMapper, bin_columns, edges_from_grid_counts, grid_counts, make_grids
from fedmine.gbdt.booster import train, train_partitioned, train_pooled
from fedmine.gbdt.export import to_lightgbm_text
from fedmine.gbdt.model import Model, Tree
from fedmine.gbdt.objectives import make_objective
from fedmine.gbdt.params import Params, make_params
from fedmine.gbdt.predictor import predict_raw
from fedmine.gbdt.rows import NODE_STRIDE, HistogramSource, LocalRows, SumOfSources
from fedmine.gbdt.state import EngineGroup, EngineState
from fedmine.privacy.noise import DPConfig


def predict(model: Model, X) -> np.ndarray:
    """Transformed predictions of ``model`` on raw features.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)

    Returns
    -------
    ndarray of shape (n_rows,) (binary: probability; regression, poisson,
    tweedie: mean) or (n_rows, num_class) (multiclass: probabilities).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != model.n_features:
        raise DataError(f"X must have shape (n_rows, {model.n_features}), got {X.shape}")
    raw = predict_raw(model.trees, X, n_trees_per_round=model.n_trees_per_round, init_scores=model.init_scores)
    obj = make_objective(
        model.objective,
        num_class=model.n_trees_per_round,
        tweedie_variance_power=model.params.get("tweedie_variance_power", 1.5),
    )
    return obj.transform(raw)


__all__ = [
    "NODE_STRIDE",
    "BinMapper",
    "DPConfig",
    "EngineGroup",
    "EngineState",
    "HistogramSource",
    "LocalRows",
    "Model",
    "Params",
    "SumOfSources",
    "Tree",
    "bin_columns",
    "edges_from_grid_counts",
    "grid_counts",
    "make_grids",
    "make_params",
    "predict",
    "predict_raw",
    "to_lightgbm_text",
    "train",
    "train_partitioned",
    "train_pooled",
]
