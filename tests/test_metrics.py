"""Metrics: exact per party, mergeable across parties."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from fedmine import metrics


def test_exact_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(float)
    p = np.round(rng.random(500), 2)  # many ties
    assert metrics.auc(y, p) == np.float64(roc_auc_score(y, p)).round(15) or abs(metrics.auc(y, p) - roc_auc_score(y, p)) < 1e-12


def test_merged_sums_give_pooled_metrics():
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.3).astype(float)
    raw = rng.normal(size=3000) + 1.5 * y
    parts = np.array_split(np.arange(3000), [500, 1800])
    merged = metrics.from_sums(metrics.merge([metrics.sums(y[i], raw[i], "binary") for i in parts]), "binary")
    pooled = metrics.exact(y, raw, "binary")
    assert abs(merged["binary_logloss"] - pooled["binary_logloss"]) < 1e-12
    assert abs(merged["auc"] - pooled["auc"]) < 2e-3  # AUC from score histograms


def test_regression_and_multiclass_sums():
    rng = np.random.default_rng(2)
    y = rng.normal(size=100)
    raw = y + rng.normal(size=100)
    m = metrics.from_sums(metrics.merge([metrics.sums(y[:30], raw[:30], "regression"),
                                         metrics.sums(y[30:], raw[30:], "regression")]), "regression")
    assert abs(m["rmse"] - np.sqrt(np.mean((raw - y) ** 2))) < 1e-12
    k = rng.integers(0, 3, 100).astype(float)
    raw3 = rng.normal(size=(100, 3))
    mc = metrics.exact(k, raw3, "multiclass")
    p = np.exp(raw3) / np.exp(raw3).sum(1, keepdims=True)
    assert abs(mc["multi_logloss"] + np.mean(np.log(p[np.arange(100), k.astype(int)]))) < 1e-12
    assert mc["multi_error"] == np.mean(p.argmax(1) != k)


def test_better_respects_direction():
    assert metrics.better("binary", 0.8, 0.7)
    assert metrics.better("regression", 0.5, 0.7)
