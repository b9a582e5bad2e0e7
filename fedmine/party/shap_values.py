"""SHAP values of the global model on one organisation's own rows, where the rows are.

This module owns the organisation's side of an explanation (``fedmine
explain``): LightGBM's TreeSHAP (``pred_contrib=True``) of the model the
coordinator sends, evaluated on the party's rows; the fixed-point sums of
``|SHAP|`` that leave the party (summed over organisations, so masked under
secure aggregation); and the summary and dependence plots of its rows, which
never leave it.

Fixed point
-----------
Each row's ``|SHAP|`` is rounded to an integer multiple of ``1 / scale``
before summing, so the sums are integers: they add up to the same bits in any
order and under the masks, and the federation's mean differs from the pooled
rows' float mean by at most ``0.5 / scale``. The coordinator picks ``scale`` so
that no sum can leave int64 (:func:`fedmine.coordinator.explanation.fixed_point_scale`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from fedmine.errors import PartyError
from fedmine.gbdt.booster import canonical_feature_names

#: The largest fixed-point scale a party accepts (a float64 |SHAP| has no more bits to give).
MAX_SCALE = 2.0**52
#: Points drawn per feature in the summary plot (a sample of the rows beyond it).
MAX_POINTS = 2000
#: Dependence plots a party draws: the features that matter most in the federation.
MAX_DEPENDENCE = 6


def load_model(model_text: str, *, org: str, feature_names: list[str]) -> lgb.Booster:
    """The model text as a LightGBM booster, refused unless it is a model of this organisation's features."""
    if not isinstance(model_text, str) or not model_text.startswith("tree"):
        raise PartyError(f"party {org}: explain refused: the model is not LightGBM model text")
    try:
        booster = lgb.Booster(model_str=model_text)
    except lgb.basic.LightGBMError as exc:
        raise PartyError(f"party {org}: explain refused: the model text does not load: {exc}") from None
    expected = canonical_feature_names(len(feature_names), list(feature_names))
    if booster.feature_name() != expected:
        raise PartyError(
            f"party {org}: explain refused: the model's features {booster.feature_name()} are not this "
            f"organisation's {expected}"
        )
    return booster


def contributions(booster: lgb.Booster, blocks: list[np.ndarray]) -> np.ndarray:
    """SHAP values of every row of ``blocks``, shape (n_rows, n_outputs, n_features + 1); the bias last.

    ``n_outputs`` is the model's trees per iteration (classes of a multiclass
    model, else 1). Each row's values sum to its raw score.
    """
    k = booster.num_model_per_iteration()
    parts = []
    for X in blocks:
        if len(X):
            parts.append(np.asarray(booster.predict(X, pred_contrib=True), dtype=np.float64).reshape(len(X), k, -1))
    if not parts:
        return np.zeros((0, k, booster.num_feature() + 1))
    return np.concatenate(parts)


def abs_sums(contrib: np.ndarray, scale: float) -> np.ndarray:
    """Fixed-point sums of ``|SHAP|`` per output and feature, and the row count last.

    Parameters
    ----------
    contrib : ndarray of shape (n_rows, n_outputs, n_features + 1), from :func:`contributions`.
    scale : the fixed-point scale; each row's value is rounded to a multiple of ``1 / scale``.

    Returns
    -------
    sums : ndarray of shape (n_outputs, n_features + 1), int64
    """
    n, k, width = contrib.shape
    fixed = np.rint(np.abs(contrib[:, :, :-1]) * scale).astype(np.int64)
    out = np.empty((k, width), dtype=np.int64)
    out[:, :-1] = fixed.sum(axis=0)
    out[:, -1] = n
    return out


def check_scale(scale: Any, *, org: str) -> float:
    """A positive finite scale of at most :data:`MAX_SCALE`, else a :class:`PartyError`."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= MAX_SCALE:
        raise PartyError(f"party {org}: shap_sums refused: scale must be in (0, 2**52], got {scale!r}")
    return value


def _colour_values(x: np.ndarray) -> np.ndarray:
    """Each value's rank among the feature's values in [0, 1] (NaN stays NaN): the summary plot's colour."""
    out = np.full(x.shape, np.nan)
    ok = ~np.isnan(x)
    if ok.sum() > 1:
        ranks = np.argsort(np.argsort(x[ok], kind="stable"), kind="stable")
        out[ok] = ranks / (ok.sum() - 1)
    elif ok.any():
        out[ok] = 0.5
    return out


def _jitter(values: np.ndarray, rng: np.random.Generator, width: float = 0.4) -> np.ndarray:
    """Vertical offsets that spread points where they are dense (a beeswarm's look, without its search)."""
    if values.size < 2:
        return np.zeros(values.size)
    counts, edges = np.histogram(values, bins=min(50, values.size))
    density = counts[np.clip(np.searchsorted(edges, values, side="right") - 1, 0, counts.size - 1)]
    return rng.uniform(-1, 1, values.size) * width * density / density.max()


def write_plots(
    contrib: np.ndarray,
    X: np.ndarray,
    *,
    features: list[dict[str, Any]],
    order: np.ndarray,
    outputs: list[str],
    folder: Path,
    org: str,
) -> list[Path]:
    """This organisation's SHAP plots of its own rows, written into ``folder``; the files written.

    Parameters
    ----------
    contrib : ndarray of shape (n_rows, n_outputs, n_features + 1), the rows' SHAP values.
    X : ndarray of shape (n_rows, n_features), the same rows (canonical encoding).
    features : the canonical features (name, type, categories), in column order.
    order : feature indices, most important in the federation first: the plots' order.
    outputs : a name per output (``["score"]``, or the classes).

    Writes ``summary.png`` (one row of points per feature: SHAP value, coloured
    by the feature's value) per output, ``dependence_<feature>.png`` (SHAP value
    against the feature's value) for the :data:`MAX_DEPENDENCE` first features
    of ``order``, and ``mean_abs_shap.csv``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n, k, _ = contrib.shape
    names = [f["name"] for f in features]
    written = []
    sample = np.sort(rng.choice(n, MAX_POINTS, replace=False)) if n > MAX_POINTS else np.arange(n)
    for j, out_name in enumerate(outputs):
        suffix = "" if k == 1 else f"_{_safe(out_name)}"
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(order) + 1.4))
        for row, i in enumerate(order[::-1]):
            phi = contrib[sample, j, i]
            colour = _colour_values(X[sample, i])
            y = row + _jitter(phi, rng)
            missing = np.isnan(colour)
            ax.scatter(phi[missing], y[missing], s=6, c="#999999", alpha=0.6, linewidths=0)
            points = ax.scatter(
                phi[~missing], y[~missing], s=6, c=colour[~missing], cmap="coolwarm", vmin=0, vmax=1, linewidths=0
            )
        ax.set_yticks(range(len(order)), [names[i] for i in order[::-1]])
        ax.axvline(0, color="#444444", lw=0.8)
        ax.set_xlabel(f"SHAP value ({out_name})" if k > 1 else "SHAP value (impact on the raw score)")
        ax.set_title(f"{org}: SHAP values of its own {n} rows")
        bar = fig.colorbar(points, ax=ax, ticks=[0, 1], pad=0.01)
        bar.ax.set_yticklabels(["low", "high"])
        bar.set_label("feature value")
        fig.tight_layout()
        path = folder / f"summary{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    for i in order[:MAX_DEPENDENCE]:
        spec = features[i]
        fig, ax = plt.subplots(figsize=(6, 4))
        x = X[sample, i]
        for j, out_name in enumerate(outputs):
            phi = contrib[sample, j, i]
            if spec.get("type") == "category":
                xs = x + rng.uniform(-0.2, 0.2, x.size)
            else:
                xs = x
            ax.scatter(xs, phi, s=7, alpha=0.6, linewidths=0, label=out_name if k > 1 else None, color=f"C{j}")
        if spec.get("type") == "category" and spec.get("categories"):
            ax.set_xticks(range(len(spec["categories"])), spec["categories"], rotation=30, ha="right")
        ax.axhline(0, color="#444444", lw=0.8)
        ax.set_xlabel(spec["name"])
        ax.set_ylabel(f"SHAP value of {spec['name']}")
        ax.set_title(f"{org}: dependence on {spec['name']}")
        if k > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"dependence_{_safe(spec['name'])}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    mean = np.abs(contrib[:, :, :-1]).mean(axis=0) if n else np.zeros((k, len(names)))
    lines = ["output,feature,mean_abs_shap"] + [
        f"{outputs[j]},{names[i]},{mean[j, i]:.10g}" for j in range(k) for i in order
    ]
    path = folder / "mean_abs_shap.csv"
    path.write_text("\n".join(lines) + "\n")
    written.append(path)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
