"""Global bins agreed without moving rows.

This module owns the mapping from raw feature values to uint8 bins. Binning is
agreed in three steps that only move aggregates::

    party:        feature_ranges(X)            -> (min, max) per feature
    coordinator:  merge_ranges(...), make_grids -> a fine shared grid per feature
    party:        grid_counts(X, grids)         -> int64 counts per grid cell
    coordinator:  edges_from_grid_counts(sum of counts) -> BinMapper
    party:        bin_columns(X, mapper)        -> uint8 bins, column-major

Bin layout of one feature (``max_bin = M``)::

    numeric:      bin b in 0 .. n_bins-1 holds  edges[b-1] < x <= edges[b]
                  (edges[-1] = -inf, edges[n_bins-1] = +inf); NaN -> bin M
    categorical:  bin = category code c (0 <= c < M); NaN, negative or unseen
                  codes -> bin M

Edges are grid points, so they are real numbers lying between observed values:
``bin <= b`` in the engine and ``value <= edges[b]`` in an exported LightGBM
model are the same test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from fedmine.errors import ConfigError, DataError
from fedmine.gbdt.dtypes import MAX_BIN_LIMIT, X_BINNED_DTYPE, X_DTYPE

#: Default number of cells of the fine shared grid per numeric feature.
DEFAULT_GRID_SIZE = 16384
SPACINGS = ("uniform", "log")


@dataclass(frozen=True)
class BinMapper:
    """Global bin edges, the same at every party.

    Attributes
    ----------
    edges : ndarray of shape (n_features, max_bin - 1), float64
        Upper bounds of numeric bins, padded with +inf; row ``f`` uses its first
        ``n_bins[f] - 1`` entries. Unused for categorical features.
    n_bins : ndarray of shape (n_features,), int32
        Non-NaN bins per feature (categories for categorical features).
    categorical : ndarray of shape (n_features,), bool
    max_bin : int
        Bin ``max_bin`` is the NaN bin of every feature.
    feature_min, feature_max : ndarray of shape (n_features,), float64
        Global range of each numeric feature (for the exported feature_infos).
    grids : ndarray of shape (n_features, n_grid), float64, optional
        The shared grid the edges were chosen from (every edge is a grid point).
    lut : ndarray of shape (n_features, n_grid), uint8, optional
        ``lut[f, c]`` = bin of every value in grid cell ``c``: binning finds a
        value's cell arithmetically and looks its bin up, instead of a binary
        search over the edges.
    """

    edges: np.ndarray
    n_bins: np.ndarray
    categorical: np.ndarray
    max_bin: int
    feature_min: np.ndarray
    feature_max: np.ndarray
    grids: np.ndarray | None = None
    lut: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return int(self.n_bins.shape[0])

    @property
    def nan_bin(self) -> int:
        return self.max_bin

    def threshold(self, feature: int, bin_threshold: int) -> float:
        """Raw threshold of the numeric split ``bin <= bin_threshold``.

        ``inf`` when every non-NaN bin goes left; beyond the ``max_bin - 1``
        stored edges only under DP, where noise can put rows in the NaN bin of
        a feature that has ``max_bin`` bins and none.
        """
        if bin_threshold >= self.edges.shape[1]:
            return float("inf")
        return float(self.edges[feature, bin_threshold])


def check_max_bin(max_bin) -> int:
    """Validate ``max_bin`` once, where it enters."""
    if isinstance(max_bin, bool) or not isinstance(max_bin, (int, np.integer)) or not 2 <= max_bin <= MAX_BIN_LIMIT:
        raise ConfigError(f"max_bin must be an integer in [2, {MAX_BIN_LIMIT}], got {max_bin!r}")
    return int(max_bin)


def _as_features(X) -> np.ndarray:
    X = np.asarray(X, dtype=X_DTYPE)
    if X.ndim != 2:
        raise DataError(f"X must be a 2-D array of shape (n_rows, n_features), got shape {X.shape}")
    return X


def _as_mask(categorical, n_features: int) -> np.ndarray:
    if categorical is None:
        return np.zeros(n_features, dtype=bool)
    mask = np.asarray(categorical)
    if mask.dtype != bool:
        idx = mask.astype(np.int64)
        mask = np.zeros(n_features, dtype=bool)
        mask[idx] = True
    if mask.shape != (n_features,):
        raise DataError(f"categorical mask must have shape ({n_features},), got {mask.shape}")
    return mask


def feature_ranges(X) -> np.ndarray:
    """Party side: per-feature (min, max) over non-NaN values.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)

    Returns
    -------
    ranges : ndarray of shape (n_features, 2), float64
        ``+inf, -inf`` for a feature with no value. Merge with :func:`merge_ranges`.
    """
    X = _as_features(X)
    out = np.empty((X.shape[1], 2), dtype=X_DTYPE)
    out[:, 0] = np.inf
    out[:, 1] = -np.inf
    _ranges_kernel(np.ascontiguousarray(X), out)
    return out


@numba.njit(cache=True, nogil=True)
def _ranges_kernel(X, out):  # pragma: no cover - numba
    for i in range(X.shape[0]):  # row-major X: read in order
        for f in range(X.shape[1]):
            x = X[i, f]
            if x < out[f, 0]:  # False for NaN
                out[f, 0] = x
            if x > out[f, 1]:
                out[f, 1] = x


def feature_ranges_numpy(X) -> np.ndarray:
    """Plain numpy twin of :func:`feature_ranges`."""
    X = _as_features(X)
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isnan(X), np.inf, X).min(axis=0, initial=np.inf)
        hi = np.where(np.isnan(X), -np.inf, X).max(axis=0, initial=-np.inf)
    return np.stack([lo, hi], axis=1).astype(X_DTYPE)


def merge_ranges(ranges) -> np.ndarray:
    """Coordinator side: merge parties' :func:`feature_ranges` (min of mins, max of maxs)."""
    ranges = np.asarray(ranges, dtype=X_DTYPE)
    if ranges.ndim == 2:
        return ranges.copy()
    out = np.empty(ranges.shape[1:], dtype=X_DTYPE)
    out[:, 0] = ranges[:, :, 0].min(axis=0)
    out[:, 1] = ranges[:, :, 1].max(axis=0)
    return out


def make_grids(ranges, *, n_grid: int = DEFAULT_GRID_SIZE, spacing: str = "uniform") -> np.ndarray:
    """Fine shared grid per feature from a global range.

    Parameters
    ----------
    ranges : ndarray of shape (n_features, 2)
        Declared or merged (min, max) per feature.
    n_grid : int
        Cells per feature.
    spacing : {"uniform", "log"}
        "log" spaces cells geometrically for features whose min is > 0 and
        falls back to uniform elsewhere.

    Returns
    -------
    grids : ndarray of shape (n_features, n_grid), float64
        Cell upper bounds: cell ``j`` holds ``grids[j-1] < x <= grids[j]``;
        the last point is the feature's max. Deterministic in its inputs.
    """
    if spacing not in SPACINGS:
        raise ConfigError(f"spacing must be one of {list(SPACINGS)}, got {spacing!r}")
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)) or n_grid < 2:
        raise ConfigError(f"n_grid must be an integer >= 2, got {n_grid!r}")
    ranges = np.asarray(ranges, dtype=X_DTYPE)
    lo = ranges[:, 0].copy()
    hi = ranges[:, 1].copy()
    empty = ~(lo <= hi)
    lo[empty] = 0.0
    hi[empty] = 0.0
    frac = np.arange(1, n_grid + 1, dtype=X_DTYPE) / n_grid
    grids = lo[:, None] + (hi - lo)[:, None] * frac[None, :]
    if spacing == "log":
        pos = lo > 0
        if pos.any():
            llo, lhi = np.log(lo[pos]), np.log(hi[pos])
            grids[pos] = np.exp(llo[:, None] + (lhi - llo)[:, None] * frac[None, :])
    grids[:, -1] = hi  # exact max, whatever the rounding above
    return np.maximum.accumulate(grids, axis=1)


@numba.njit(cache=True, nogil=True, inline="always")
def _grid_cell(x, g, step):  # pragma: no cover - numba
    """The cell of ``x`` on grid ``g``: the first grid point >= x, clipped to the last.

    Guessed as if the grid were uniform (``step`` apart), then walked to the
    exact cell, so it is exact on any increasing grid.
    """
    n_grid = g.shape[0]
    c = 0
    if step > 0.0:
        t = (x - g[0]) / step
        if t > 0.0:
            c = min(int(np.ceil(t)), n_grid - 1)
    while c > 0 and g[c - 1] >= x:
        c -= 1
    while c < n_grid - 1 and g[c] < x:
        c += 1
    return c


@numba.njit(cache=True, nogil=True)
def _grid_counts_kernel(X, grids, categorical, counts):  # pragma: no cover - numba
    n_grid = grids.shape[1]
    step = np.empty(grids.shape[0])
    for f in range(grids.shape[0]):
        step[f] = (grids[f, n_grid - 1] - grids[f, 0]) / (n_grid - 1)
    for i0 in range(0, X.shape[0], _BLOCK):
        i1 = min(i0 + _BLOCK, X.shape[0])
        for f in range(X.shape[1]):
            g = grids[f]
            for i in range(i0, i1):
                x = X[i, f]
                if np.isnan(x):
                    counts[f, n_grid] += 1
                elif categorical[f]:
                    c = int(x)
                    if c < 0:
                        counts[f, n_grid] += 1
                    elif c >= n_grid:
                        return f  # caller raises
                    else:
                        counts[f, c] += 1
                else:
                    counts[f, _grid_cell(x, g, step[f])] += 1
    return -1


def grid_counts(X, grids, *, categorical=None) -> np.ndarray:
    """Party side: counts per feature on the shared grid.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
    grids : ndarray of shape (n_features, n_grid)
        From :func:`make_grids`. Values above a feature's last grid point
        (possible with declared ranges) count in the last cell.
    categorical : bool mask or index list, optional
        Categorical features count per category code instead (codes must be
        ``< n_grid``, read with truncation); NaN and negative codes count as
        missing.

    Returns
    -------
    counts : ndarray of shape (n_features, n_grid + 1), int64
        Last column counts NaN. Sum these over parties.
    """
    X = _as_features(X)
    grids = np.ascontiguousarray(grids, dtype=X_DTYPE)
    mask = _as_mask(categorical, X.shape[1])
    counts = np.zeros((X.shape[1], grids.shape[1] + 1), dtype=np.int64)
    bad = _grid_counts_kernel(np.ascontiguousarray(X), grids, mask, counts)
    if bad >= 0:
        col = X[:, bad]
        raise DataError(
            f"categorical feature {bad} has code {col[np.trunc(col) >= grids.shape[1]][0]!r}; "
            f"codes must be integers in [0, {grids.shape[1]})"
        )
    return counts


def grid_counts_numpy(X, grids, *, categorical=None) -> np.ndarray:
    """Plain numpy twin of :func:`grid_counts`."""
    X = _as_features(X)
    grids = np.asarray(grids, dtype=X_DTYPE)
    n_features = X.shape[1]
    n_grid = grids.shape[1]
    mask = _as_mask(categorical, n_features)
    counts = np.zeros((n_features, n_grid + 1), dtype=np.int64)
    for f in range(n_features):
        col = X[:, f]
        nan = np.isnan(col)
        if mask[f]:
            codes = np.trunc(np.where(nan, -1.0, col))
            if (codes >= n_grid).any():
                raise DataError(f"categorical feature {f} has a code >= {n_grid}")
            ok = codes >= 0
            counts[f, :n_grid] = np.bincount(codes[ok].astype(np.int64), minlength=n_grid)
            counts[f, n_grid] = int((~ok).sum())
        else:
            cell = np.minimum(np.searchsorted(grids[f], col[~nan], side="left"), n_grid - 1)
            counts[f, :n_grid] = np.bincount(cell, minlength=n_grid)
            counts[f, n_grid] = int(nan.sum())
    return counts


#: LightGBM's ``min_data_in_bin`` default: a bin of distinct values holds at least this many rows.
MIN_DATA_IN_BIN = 3


@numba.njit(cache=True, nogil=True)
def _greedy_cuts(counts, max_bin, min_data_in_bin):  # pragma: no cover - numba
    """LightGBM's ``GreedyFindBin`` over occupied cells; returns cut positions.

    ``counts`` are the row counts of consecutive occupied cells (LightGBM's
    distinct values). A cut after cell ``i`` puts cells ``<= i`` and ``> i``
    in different bins. With at most ``max_bin`` cells, a bin closes once it
    holds ``min_data_in_bin`` rows; otherwise cells holding at least the mean
    bin size get a bin of their own and the others fill bins of about the
    mean size of what is left.
    """
    n = counts.shape[0]
    cuts = np.empty(max(n, 1), dtype=np.int64)
    n_cuts = 0
    if n <= 1 or max_bin <= 1:
        return cuts[:0]
    total = 0.0
    for i in range(n):
        total += counts[i]
    if n <= max_bin:
        in_bin = 0.0
        for i in range(n - 1):
            in_bin += counts[i]
            if in_bin >= min_data_in_bin:
                cuts[n_cuts] = i
                n_cuts += 1
                in_bin = 0.0
        return cuts[:n_cuts]
    if min_data_in_bin > 0:
        max_bin = max(min(max_bin, int(total / min_data_in_bin)), 1)
    mean_size = total / max_bin
    big = np.zeros(n, dtype=np.bool_)
    rest_bins = max_bin
    rest = total
    for i in range(n):
        if counts[i] >= mean_size:
            big[i] = True
            rest_bins -= 1
            rest -= counts[i]
    mean_size = rest / rest_bins if rest_bins > 0 else np.inf
    in_bin = 0.0
    for i in range(n - 1):
        if not big[i]:
            rest -= counts[i]
        in_bin += counts[i]
        if big[i] or in_bin >= mean_size or (big[i + 1] and in_bin >= max(1.0, mean_size * 0.5)):
            cuts[n_cuts] = i
            n_cuts += 1
            if n_cuts >= max_bin - 1:
                break
            in_bin = 0.0
            if not big[i]:
                rest_bins -= 1
                mean_size = rest / rest_bins if rest_bins > 0 else np.inf
    return cuts[:n_cuts]


def _numeric_edges(
    cell_counts: np.ndarray,
    grid: np.ndarray,
    max_bin: int,
    *,
    lo: float,
    has_nan: bool = False,
    min_data_in_bin: int = MIN_DATA_IN_BIN,
) -> np.ndarray:
    """Upper edges (fewer than max_bin) of one feature's bins from its cell counts.

    Mirrors LightGBM's ``FindBinWithZeroAsOneBin``: occupied cells play the
    part of distinct values; cells below zero and above zero are binned
    separately (:func:`_greedy_cuts`), sharing ``max_bin - 1`` bins in
    proportion to their rows, and the cell holding zero is a bin of its own.
    A feature with NaN leaves one of ``max_bin`` to the NaN bin, as LightGBM
    does. An edge is the upper grid point of the last cell of a bin: a real
    number below every value of the next bin.
    """
    if has_nan:
        max_bin -= 1
    occupied = np.flatnonzero(cell_counts)
    if occupied.size <= 1 or max_bin < 2:
        return np.empty(0, dtype=X_DTYPE)
    counts = cell_counts[occupied].astype(np.float64)
    upper = grid[occupied]
    # the cell holding zero (cell j holds (grid[j-1], grid[j]], cell 0 holds [lo, grid[0]])
    if lo > 0.0:
        j0 = -1
    elif grid[-1] < 0.0:
        j0 = grid.shape[0]
    else:
        j0 = int(np.searchsorted(grid, 0.0, side="left"))
    neg = occupied < j0
    pos = occupied > j0
    zero = occupied == j0
    total = counts.sum()
    n_zero = counts[zero].sum()
    edges = []
    if neg.any():
        left_max = max(1, int(counts[neg].sum() / max(total - n_zero, 1.0) * (max_bin - 1)))
        idx = np.flatnonzero(neg)
        cuts = _greedy_cuts(counts[idx], left_max, min_data_in_bin)
        edges.extend(upper[idx[cuts]].tolist())
        edges.append(float(upper[idx[-1]]))  # closes the negative side (LightGBM's -kZeroThreshold)
    right_max = max_bin - 1 - len(edges)  # before the zero cell's edge, as LightGBM counts
    if pos.any() and right_max > 0:
        idx = np.flatnonzero(pos)
        if zero.any():
            edges.append(float(upper[zero][0]))  # closes the zero cell (LightGBM's kZeroThreshold)
        # all values positive: LightGBM's empty (-inf, 0] bin holds no rows and changes no split
        cuts = _greedy_cuts(counts[idx], right_max, min_data_in_bin)
        edges.extend(upper[idx[cuts]].tolist())
    out = np.unique(np.asarray(edges, dtype=X_DTYPE))
    return out[out < upper[-1]]  # the last edge is +inf, implicit


def edges_from_grid_counts(counts, grids, *, max_bin: int = 255, categorical=None, ranges=None) -> BinMapper:
    """Coordinator side: at most ``max_bin`` bins per feature from summed grid counts.

    Parameters
    ----------
    counts : ndarray of shape (n_features, n_grid + 1), int64
        Sum over parties of :func:`grid_counts`.
    grids : ndarray of shape (n_features, n_grid)
    max_bin : int
        Numeric bins per feature at most; categorical features need fewer than
        ``max_bin`` categories.
    categorical : bool mask or index list, optional
    ranges : ndarray of shape (n_features, 2), optional
        Global (min, max), recorded for export.

    Returns
    -------
    BinMapper
        Deterministic in its inputs, so every party derives the same bins.
    """
    max_bin = check_max_bin(max_bin)
    counts = np.asarray(counts, dtype=np.int64)
    grids = np.asarray(grids, dtype=X_DTYPE)
    n_features, n_grid = grids.shape
    mask = _as_mask(categorical, n_features)
    if ranges is None:  # cell 0 starts about one cell below its upper point
        ranges = np.stack([2 * grids[:, 0] - grids[:, 1], grids[:, -1]], axis=1)
    ranges = np.asarray(ranges, dtype=X_DTYPE)
    edges = np.full((n_features, max_bin - 1), np.inf, dtype=X_DTYPE)
    n_bins = np.ones(n_features, dtype=np.int32)
    for f in range(n_features):
        if mask[f]:
            seen = np.flatnonzero(counts[f, :n_grid])
            k = int(seen[-1]) + 1 if seen.size else 1
            if k > max_bin:
                raise DataError(f"categorical feature {f} has {k} categories; at most max_bin={max_bin} are supported")
            n_bins[f] = k
        else:
            e = _numeric_edges(
                counts[f, :n_grid], grids[f], max_bin, lo=float(ranges[f, 0]), has_nan=bool(counts[f, n_grid] > 0)
            )
            edges[f, : e.size] = e
            n_bins[f] = e.size + 1
    lut = np.zeros(grids.shape, dtype=X_BINNED_DTYPE)
    for f in range(n_features):
        if not mask[f]:  # bin of cell c = number of edges below its upper point
            lut[f] = np.searchsorted(edges[f, : n_bins[f] - 1], grids[f], side="left")
    return BinMapper(
        edges=edges,
        n_bins=n_bins,
        categorical=mask,
        max_bin=max_bin,
        feature_min=ranges[:, 0].copy(),
        feature_max=ranges[:, 1].copy(),
        grids=np.ascontiguousarray(grids),
        lut=lut,
    )


def fit_bins(X, *, max_bin: int = 255, categorical=None, n_grid: int = DEFAULT_GRID_SIZE, ranges=None) -> BinMapper:
    """The whole agreement for one holder of every value of its features (pooled training, a vertical owner).

    ``ranges`` (n_features, 2): declared (min, max), NaN where none is
    declared; declared ranges win, as in the federation's agreement, so one
    owner's bins of its features are the joined table's bins of them.
    """
    X = _as_features(X)
    own = feature_ranges(X)
    if ranges is None:
        ranges = own
    else:
        declared = np.asarray(ranges, dtype=X_DTYPE).reshape(own.shape)
        ranges = np.where(np.isfinite(declared), declared, own)
    grids = make_grids(ranges, n_grid=n_grid)
    counts = grid_counts(X, grids, categorical=categorical)
    return edges_from_grid_counts(counts, grids, max_bin=max_bin, categorical=categorical, ranges=ranges)


def hidden_mapper(n_bins, categorical, *, max_bin: int) -> BinMapper:
    """Bins of features whose values another organisation holds: how many, not where (edges NaN).

    A vertical label holder searches splits over these bins; thresholds,
    ranges and the binning itself stay with the owner.
    """
    n_bins = np.asarray(n_bins, dtype=np.int32).ravel()
    n = n_bins.shape[0]
    return BinMapper(
        edges=np.full((n, check_max_bin(max_bin) - 1), np.nan, dtype=X_DTYPE),
        n_bins=n_bins,
        categorical=_as_mask(categorical, n),
        max_bin=int(max_bin),
        feature_min=np.full(n, np.nan),
        feature_max=np.full(n, np.nan),
    )


def join_mappers(parts, n_features: int) -> BinMapper:
    """One mapper from per-holder mappers of disjoint features.

    Parameters
    ----------
    parts : list of (ndarray of int, BinMapper)
        Each holder's feature positions in the joined order and its mapper of them.
    n_features : int

    Returns
    -------
    BinMapper
        Without grids or lookup table (holders bin their own columns).
    """
    max_bins = {int(m.max_bin) for _, m in parts}
    if len(max_bins) != 1:
        raise DataError(f"holders disagree on max_bin: {sorted(max_bins)}")
    max_bin = max_bins.pop()
    edges = np.full((n_features, max_bin - 1), np.inf, dtype=X_DTYPE)
    n_bins = np.zeros(n_features, dtype=np.int32)
    categorical = np.zeros(n_features, dtype=bool)
    lo = np.full(n_features, np.nan)
    hi = np.full(n_features, np.nan)
    seen = np.zeros(n_features, dtype=bool)
    for idx, m in parts:
        idx = np.asarray(idx, dtype=np.int64)
        if seen[idx].any():
            raise DataError(f"features {np.flatnonzero(seen[idx]).tolist()} are given by two holders")
        seen[idx] = True
        edges[idx], n_bins[idx], categorical[idx] = m.edges, m.n_bins, m.categorical
        lo[idx], hi[idx] = m.feature_min, m.feature_max
    if not seen.all():
        raise DataError(f"features {np.flatnonzero(~seen).tolist()} have no holder")
    return BinMapper(edges, n_bins, categorical, max_bin, lo, hi)


#: Rows per block in the binning kernels: a block of row-major X stays in cache
#: while every feature of it is read.
_BLOCK = 2048


@numba.njit(cache=True, nogil=True, inline="always")
def _bin_block(X, i0, i1, edges, n_bins, categorical, nan_bin, out):  # pragma: no cover - numba
    for f in range(X.shape[1]):
        n_edges = n_bins[f] - 1
        for i in range(i0, i1):
            x = X[i, f]
            if np.isnan(x):
                out[f, i] = nan_bin
            elif categorical[f]:
                c = int(x)  # truncation, as LightGBM reads a category
                if c < 0 or c >= n_bins[f]:
                    out[f, i] = nan_bin
                else:
                    out[f, i] = c
            else:
                lo = 0
                hi = n_edges
                while lo < hi:  # first edge >= x
                    mid = (lo + hi) >> 1
                    if edges[f, mid] < x:
                        lo = mid + 1
                    else:
                        hi = mid
                out[f, i] = lo


@numba.njit(cache=True, nogil=True, inline="always")
def _bin_block_lut(X, i0, i1, grids, step, lut, n_bins, categorical, nan_bin, out):  # pragma: no cover - numba
    n_grid = grids.shape[1]
    for f in range(X.shape[1]):
        g = grids[f]
        last = g[n_grid - 1]
        top = n_bins[f] - 1
        for i in range(i0, i1):
            x = X[i, f]
            if np.isnan(x):
                out[f, i] = nan_bin
            elif categorical[f]:
                c = int(x)
                if c < 0 or c >= n_bins[f]:
                    out[f, i] = nan_bin
                else:
                    out[f, i] = c
            elif x > last:
                out[f, i] = top
            else:
                out[f, i] = lut[f, _grid_cell(x, g, step[f])]


@numba.njit(parallel=True, cache=True, nogil=True)
def _bin_columns_lut_kernel(X, grids, step, lut, n_bins, categorical, nan_bin, out):  # pragma: no cover - numba
    n_blocks = (X.shape[0] + _BLOCK - 1) // _BLOCK
    for blk in numba.prange(n_blocks):
        _bin_block_lut(
            X, blk * _BLOCK, min((blk + 1) * _BLOCK, X.shape[0]), grids, step, lut, n_bins, categorical, nan_bin, out
        )


@numba.njit(cache=True, nogil=True)
def _bin_columns_lut_serial_kernel(X, grids, step, lut, n_bins, categorical, nan_bin, out):  # pragma: no cover
    for i0 in range(0, X.shape[0], _BLOCK):
        _bin_block_lut(X, i0, min(i0 + _BLOCK, X.shape[0]), grids, step, lut, n_bins, categorical, nan_bin, out)


@numba.njit(parallel=True, cache=True, nogil=True)
def _bin_columns_kernel(X, edges, n_bins, categorical, nan_bin, out):  # pragma: no cover - numba
    n_blocks = (X.shape[0] + _BLOCK - 1) // _BLOCK
    for blk in numba.prange(n_blocks):
        _bin_block(X, blk * _BLOCK, min((blk + 1) * _BLOCK, X.shape[0]), edges, n_bins, categorical, nan_bin, out)


@numba.njit(cache=True, nogil=True)
def _bin_columns_serial_kernel(X, edges, n_bins, categorical, nan_bin, out):  # pragma: no cover - numba
    for i0 in range(0, X.shape[0], _BLOCK):
        _bin_block(X, i0, min(i0 + _BLOCK, X.shape[0]), edges, n_bins, categorical, nan_bin, out)


def bin_columns(X, mapper: BinMapper, *, parallel: bool = True) -> np.ndarray:
    """Bin raw features, column-major.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
    mapper : BinMapper
    parallel : bool
        Use numba threads (over blocks of rows).

    Returns
    -------
    binned : ndarray of shape (n_features, n_rows), uint8, C-contiguous
        ``binned[f]`` is feature ``f`` of every row, contiguous.
    """
    X = _as_features(X)
    if X.shape[1] != mapper.n_features:
        raise DataError(f"X has {X.shape[1]} features, the bins were agreed for {mapper.n_features}")
    out = np.empty((X.shape[1], X.shape[0]), dtype=X_BINNED_DTYPE)
    X = np.ascontiguousarray(X)
    g = mapper.grids
    if mapper.lut is not None and g is not None:  # a lookup table indexes the cells of its grid
        step = (g[:, -1] - g[:, 0]) / max(g.shape[1] - 1, 1)
        lut_kernel = _bin_columns_lut_kernel if parallel else _bin_columns_lut_serial_kernel
        lut_kernel(X, g, step, mapper.lut, mapper.n_bins, mapper.categorical, mapper.nan_bin, out)
    else:
        kernel = _bin_columns_kernel if parallel else _bin_columns_serial_kernel
        kernel(X, mapper.edges, mapper.n_bins, mapper.categorical, mapper.nan_bin, out)
    return out


def bin_columns_numpy(X, mapper: BinMapper) -> np.ndarray:
    """Plain numpy twin of :func:`bin_columns`."""
    X = _as_features(X)
    out = np.empty((X.shape[1], X.shape[0]), dtype=X_BINNED_DTYPE)
    for f in range(X.shape[1]):
        col = X[:, f]
        nan = np.isnan(col)
        if mapper.categorical[f]:
            c = np.trunc(np.where(nan, -1, col))
            ok = ~nan & (c >= 0) & (c < mapper.n_bins[f])
            b = np.where(ok, c, mapper.nan_bin)
        else:
            e = mapper.edges[f, : mapper.n_bins[f] - 1]
            b = np.where(nan, mapper.nan_bin, np.searchsorted(e, np.where(nan, 0, col), side="left"))
        out[f] = b.astype(X_BINNED_DTYPE)
    return out
