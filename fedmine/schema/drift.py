"""Drift: how far each organisation's profile moved since the previous profile.

A profile stores, per organisation and numeric feature, its percentiles
(1 .. 99) and, per category feature, its category counts: enough to compare
two profiles even when their grids differ. :func:`drift` returns the PSI of
every organisation's feature between the previous and the current profile,
on the deciles of the current federation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmine.schema.profiler import PERCENTILES, psi

#: Deciles of the current federation: the bins of a numeric feature's drift.
_DECILES = [9, 19, 29, 39, 49, 59, 69, 79, 89]  # indexes of p10 .. p90 in PERCENTILES


def shares_from_percentiles(percentiles: list[float], edges: np.ndarray) -> np.ndarray:
    """Share of values in each bin cut at ``edges``, from a distribution's percentiles 1 .. 99."""
    x = np.asarray(percentiles, dtype=np.float64)
    cdf = np.interp(edges, x, np.asarray(PERCENTILES), left=0.0, right=1.0)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def feature_drift(previous: dict[str, Any], current: dict[str, Any], edges: np.ndarray | None) -> float:
    """PSI of one feature's summary between two profiles (NaN when either side is empty)."""
    if "categories" in current and "categories" in previous:
        cats = list(current["categories"])
        return psi([previous["categories"].get(c, 0) for c in cats], [current["categories"][c] for c in cats])
    before, now = previous.get("percentiles"), current.get("percentiles")
    if edges is None or not before or not now or np.isnan(before).any() or np.isnan(now).any():
        return float("nan")
    return psi(shares_from_percentiles(before, edges), shares_from_percentiles(now, edges))


def drift(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, dict[str, float]]:
    """PSI per organisation and feature between two profiles (as :meth:`FederatedProfile.as_dict`).

    Organisations and features present in only one of them are left out.
    """
    out: dict[str, dict[str, float]] = {}
    fed = current["federation"]["features"]
    for org, view in current["organisations"].items():
        before = previous.get("organisations", {}).get(org)
        if before is None:
            continue
        values = {}
        for name, entry in view["features"].items():
            if name not in before["features"]:
                continue
            pct = fed.get(name, {}).get("percentiles")
            edges = None
            if pct and not np.isnan(pct).any():
                edges = np.unique(np.asarray(pct)[_DECILES])
            value = feature_drift(before["features"][name], entry, edges)
            if value == value:
                values[name] = value
        out[org] = values
    return out
