"""Seeded row and feature sampling that does not depend on the partition.

This module owns ``bagging_fraction`` / ``bagging_freq`` and
``feature_fraction``.

Rows: whether row ``r`` is in the bag of bagging round ``j = iteration //
bagging_freq`` is a pure function of ``(seed, j, r)`` where ``r`` is the row's
*global* id (each party knows the global ids of its own rows)::

    u = splitmix64(r + GOLDEN * (j + 1) + MIX * seed) / 2**64
    in_bag  <=>  u < bagging_fraction

so a row is sampled or not whichever party holds it, and pooled and federated
training use the same bag. The fraction in the bag is ``bagging_fraction`` in
expectation (LightGBM draws an exact count; the difference does not matter for
the model's quality and cannot be reproduced without moving row ids).

Features: the coordinator draws the features of each tree from
``numpy.random.default_rng([seed, iteration, tree])``, choosing
``max(1, round(n_features * feature_fraction))`` of them as LightGBM does; it
only restricts split finding, so parties never see it.
"""

from __future__ import annotations

import numba
import numpy as np

from fedmine.gbdt.dtypes import ROW_ID_DTYPE, ROW_INDEX_DTYPE

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


@numba.njit(cache=True, nogil=True)
def _bag_kernel(row_ids, key, threshold, out):  # pragma: no cover - numba
    n = 0
    for i in range(row_ids.shape[0]):
        z = row_ids[i] + key
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        if (z >> np.uint64(11)) < threshold:
            out[n] = i
            n += 1
    return n


def _key(seed: int, bag_round: int) -> np.uint64:
    with np.errstate(over="ignore"):
        return np.uint64(_GOLDEN * np.uint64(bag_round + 1) + _MIX * np.uint64(seed))


def _threshold(fraction: float) -> np.uint64:
    return np.uint64(min(int(fraction * 2.0**53), 1 << 53))


def bag_rows(row_ids: np.ndarray, *, seed: int, bag_round: int, fraction: float) -> np.ndarray:
    """Positions of the in-bag rows of one party.

    Parameters
    ----------
    row_ids : ndarray of shape (n_rows,), uint64
        Global ids of the party's rows.
    seed, bag_round : int
    fraction : float in (0, 1]

    Returns
    -------
    rows : ndarray of shape (n_bag,), int32
        Increasing positions ``i`` (into the party's rows) that are in the bag.
    """
    row_ids = np.ascontiguousarray(row_ids, dtype=ROW_ID_DTYPE)
    if fraction >= 1.0:
        return np.arange(row_ids.shape[0], dtype=ROW_INDEX_DTYPE)
    out = np.empty(row_ids.shape[0], dtype=ROW_INDEX_DTYPE)
    n = _bag_kernel(row_ids, _key(seed, bag_round), _threshold(fraction), out)
    return out[:n].copy()


def bag_rows_numpy(row_ids, *, seed: int, bag_round: int, fraction: float) -> np.ndarray:
    """Plain numpy twin of :func:`bag_rows`."""
    row_ids = np.asarray(row_ids, dtype=ROW_ID_DTYPE)
    if fraction >= 1.0:
        return np.arange(row_ids.shape[0], dtype=ROW_INDEX_DTYPE)
    with np.errstate(over="ignore"):
        z = row_ids + _key(seed, bag_round)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.flatnonzero((z >> np.uint64(11)) < _threshold(fraction)).astype(ROW_INDEX_DTYPE)


def feature_mask(n_features: int, *, seed: int, iteration: int, tree: int, fraction: float) -> np.ndarray:
    """Features allowed in one tree, shape (n_features,), bool."""
    mask = np.ones(n_features, dtype=bool)
    if fraction >= 1.0:
        return mask
    k = max(1, round(n_features * fraction))
    rng = np.random.default_rng([seed, iteration, tree])
    mask[:] = False
    mask[rng.choice(n_features, size=k, replace=False)] = True
    return mask
