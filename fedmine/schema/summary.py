"""Summaries of counts on the profile's shared grid: quantiles, PSI, one entry per feature.

Both ends of the federated profile use this module: an organisation's party
summarises its own counts against the rest of the federation (its *own
view*, the ``profile_view`` call), the coordinator summarises the summed
counts (:mod:`fedmine.schema.profiler`). It is plain numpy and imports
nothing of the coordinator, so the party can use it.

A feature is described by a plain dict, as it travels in ``profile_view``:
``{"name": str, "type": "float" | "int" | "date" | "category" | "bool",
"categories": [str] | None}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Quantiles shown in tables.
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Percentiles stored for drift (1 .. 99).
PERCENTILES = tuple(i / 100 for i in range(1, 100))
#: Bins of the PSI: groups of cells holding about a tenth of the federation's values each.
PSI_BINS = 10
#: Floor of a bin's share in the PSI (a bin empty on one side would be infinite).
PSI_FLOOR = 1e-4
#: Plot bars per numeric feature.
PLOT_BINS = 32
#: Feature types counted per category code on the grid.
CATEGORICAL_TYPES = ("category", "bool")
#: Every feature type a summary knows.
TYPES = ("float", "int", "date", *CATEGORICAL_TYPES)


def is_numeric(kind: str) -> bool:
    return kind in ("float", "int", "date")


def psi(p_counts, q_counts, *, floor: float = PSI_FLOOR) -> float:
    """Population stability index of two histograms over the same bins.

    ``sum((p - q) * ln(p / q))`` over shares, each share floored at ``floor``.
    0 for identical shares; 0.1 is a small shift, above 0.25 a large one.
    NaN when either side is empty.
    """
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p = np.maximum(p / p.sum(), floor)
    q = np.maximum(q / q.sum(), floor)
    return float(np.sum((p - q) * np.log(p / q)))


def cell_bounds(grid: np.ndarray, lo: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of each grid cell (cell 0 starts at ``lo``)."""
    upper = np.asarray(grid, dtype=np.float64)
    lower = np.concatenate([[min(lo, upper[0])], upper[:-1]])
    return lower, upper


def grid_quantiles(counts: np.ndarray, grid: np.ndarray, lo: float, qs) -> list[float]:
    """Quantiles from cell counts, interpolating linearly inside the cell (NaN when empty)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return [float("nan")] * len(qs)
    lower, upper = cell_bounds(grid, lo)
    cum = np.cumsum(counts)
    out = []
    for q in qs:
        target = q * total
        j = int(np.searchsorted(cum, target, side="left"))
        j = min(j, len(counts) - 1)
        before = cum[j] - counts[j]
        frac = (target - before) / counts[j] if counts[j] > 0 else 0.0
        out.append(float(lower[j] + (upper[j] - lower[j]) * min(max(frac, 0.0), 1.0)))
    return out


def equal_mass_groups(counts: np.ndarray, n_bins: int) -> np.ndarray:
    """Group index per cell so that each group holds about ``1 / n_bins`` of the counts."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return np.zeros(len(counts), dtype=np.int64)
    cum_before = np.cumsum(counts) - counts
    return np.minimum((cum_before / total * n_bins).astype(np.int64), n_bins - 1)


def grouped(counts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return np.bincount(groups, weights=np.asarray(counts, dtype=np.float64), minlength=int(groups.max()) + 1)


def plot_groups(n_grid: int) -> np.ndarray:
    """Plot bar of each grid cell of a numeric feature (:data:`PLOT_BINS` bars)."""
    return np.arange(n_grid) * PLOT_BINS // n_grid


def categorical_mask(features: list[dict[str, Any]]) -> np.ndarray:
    """Which features count per category code on the grid."""
    return np.array([f["type"] in CATEGORICAL_TYPES for f in features], dtype=bool)


def vocabulary(feature: dict[str, Any]) -> list[str]:
    """The category labels of a categorical feature, in code order."""
    return list(feature.get("categories") or []) if feature["type"] == "category" else ["false", "true"]


def summarise_counts(
    features: list[dict[str, Any]],
    grids: np.ndarray,
    lows: np.ndarray,
    counts: np.ndarray,
    *,
    rest: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-feature summary of grid counts; with ``rest``, the PSI and median ratio against it.

    Parameters
    ----------
    features : one dict per feature, in column order (see the module docstring).
    grids : float64 (n_features, n_grid), the shared grid.
    lows : float64 (n_features,), where each feature's first cell starts.
    counts : int64 (n_features, n_grid + 1), counts per cell, missing last.
    rest : the same counts of the other organisations, or None.
    """
    out: dict[str, Any] = {}
    rows = int(counts[0].sum()) if len(counts) else 0
    n_grid = grids.shape[1] if np.ndim(grids) == 2 else 0
    for i, feat in enumerate(features):
        kind = feat["type"]
        c = counts[i, :-1]
        n_missing = int(counts[i, -1])
        count = int(c.sum())
        entry: dict[str, Any] = {
            "type": kind,
            "count": count,
            "missing_rate": n_missing / rows if rows else float("nan"),
        }
        if is_numeric(kind):
            grid, lo = grids[i], float(lows[i])
            qs = grid_quantiles(c, grid, lo, QUANTILES)
            if kind in ("int", "date"):  # whole values: the interpolation inside a cell is noise
                qs = [float(np.round(v)) if v == v else v for v in qs]
            entry["quantiles"] = dict(zip((f"p{int(q * 100)}" for q in QUANTILES), qs))
            entry["percentiles"] = grid_quantiles(c, grid, lo, PERCENTILES)
            entry["plot"] = grouped(c, plot_groups(n_grid)).tolist()
            if rest is not None:
                r = rest[i, :-1]
                groups = equal_mass_groups(c + r, PSI_BINS)
                entry["psi"] = psi(grouped(c, groups), grouped(r, groups))
                med_own = grid_quantiles(c, grid, lo, (0.5,))[0]
                med_rest = grid_quantiles(r, grid, lo, (0.5,))[0]
                usable = med_rest not in (0.0,) and med_rest == med_rest
                entry["median_ratio"] = (med_own / med_rest) if usable else float("nan")
        else:
            vocab = vocabulary(feat)
            entry["categories"] = {str(v): int(c[j]) for j, v in enumerate(vocab)}
            if rest is not None:
                entry["psi"] = psi(c[: len(vocab)], rest[i, : len(vocab)])
        out[feat["name"]] = entry
    return {"rows": rows, "features": out}
