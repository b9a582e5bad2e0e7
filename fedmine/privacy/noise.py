"""Differential privacy in the engine: bounds, scales, noise cells and clamping.

This module owns what the histogram engine does differently when a training is
differentially private (``Trainer(..., dp=DPConfig(...))``); the noise itself
and the accounting live in :mod:`fedmine.privacy.dp` and
:mod:`fedmine.privacy.accountant`.

::

    coordinator                                  party k
    -----------                                  -------
    bounds G, H  = dp_bounds(config, objective)
    scales s     = dp_scale(bound, n_total, row_bits)
    configure(params, init, grad_clip=G, hess_clip=H)   clip g to [-G, G], h to [0, H]
    set_noise(variances, n_parties=K, seed=...)         rng_k = noise_rng(seed, k, row ids)
    start_trees(scales, count_bits=0)                   q = round(clip(g) * s)
    histograms(nodes)  <------------------------------  hist + Skellam share on noise_cells
    clamp_histograms(sum): hess, count >= 0

One *release* is one ``histograms`` exchange: within a tree its nodes are
disjoint (the grower opens only distinct leaves), so a row is in at most one
node per tree, and in ``n_trees`` nodes of the release (one per class for
multiclass). :func:`fedmine.privacy.dp.histogram_sensitivity` with
``nodes_per_row = n_trees`` is its sensitivity.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from fedmine.errors import ConfigError
from fedmine.gbdt.dtypes import COUNT, HESS, HIST_FIELDS

# fedmine.privacy.dp (and dp_accounting behind it, ~0.6 s to import) is loaded
# only when a DP training uses it.

#: :data:`fedmine.privacy.dp.DEFAULT_ROW_BITS` (a test checks they agree).
DEFAULT_ROW_BITS = 12

#: Domain separation of the noise seeds (no other generator in the engine uses it).
NOISE_SEED_DOMAIN = 0x6E6F697365  # "noise"


def _bound(value, key: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < float(value) < math.inf:
        raise ConfigError(f"{key} must be a positive finite number or None, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DPConfig:
    """What a differentially private training needs from the configuration.

    Parameters
    ----------
    grad_bound : float > 0 or None
        Clip of ``|g|`` per row (``privacy.gradient_bound``). ``None``: the
        objective's own bound (binary, multiclass: 1); required for
        regression, poisson and tweedie. The tighter of the two is used.
    hess_bound : float > 0 or None
        Clip of ``h`` per row (``privacy.hessian_bound``). ``None``: the
        objective's own bound (binary 1/4, multiclass K/(4(K-1)),
        regression 1); required for poisson and tweedie.
    row_bits : int
        Fixed-point resolution: a row's largest ``|g|`` (or ``h``) is about
        ``2**row_bits`` units (:func:`fedmine.privacy.dp.dp_scale`).
    """

    grad_bound: float | None = None
    hess_bound: float | None = None
    row_bits: int = DEFAULT_ROW_BITS

    def __post_init__(self):
        object.__setattr__(self, "grad_bound", _bound(self.grad_bound, "privacy.gradient_bound"))
        object.__setattr__(self, "hess_bound", _bound(self.hess_bound, "privacy.hessian_bound"))
        rb = self.row_bits
        if isinstance(rb, bool) or not isinstance(rb, (int, np.integer)) or not 1 <= rb <= 40:
            raise ConfigError(f"row_bits must be an integer in [1, 40], got {rb!r}")
        object.__setattr__(self, "row_bits", int(rb))

    @classmethod
    def make(cls, value) -> DPConfig | None:
        """``value`` as a DPConfig: None, a DPConfig, or a dict of its fields."""
        if value is None or isinstance(value, DPConfig):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"grad_bound", "hess_bound", "row_bits"})
            if unknown:
                raise ConfigError(f"unknown DP setting(s) {unknown}; allowed: ['grad_bound', 'hess_bound', 'row_bits']")
            return cls(**value)
        raise ConfigError(f"dp must be a DPConfig, a dict or None, got {value!r}")


def _tighter(configured, natural):
    if configured is None:
        return natural
    if natural is None:
        return configured
    return min(configured, natural)


def dp_bounds(config: DPConfig, objective) -> tuple:
    """``(G, H)``: the per-row clips of a DP training with ``objective``.

    The tighter of the configured bound and the objective's own one; an
    objective without its own bound needs the configured one.

    Raises
    ------
    ConfigError
        The objective has no bound of its own and none is configured.
    """
    g = _tighter(config.grad_bound, objective.grad_bound)
    h = _tighter(config.hess_bound, objective.hess_bound)
    if g is None:
        raise ConfigError(
            f"objective {objective.name!r} under differential privacy needs a gradient bound "
            f"(privacy.gradient_bound), got None"
        )
    if h is None:
        raise ConfigError(
            f"objective {objective.name!r} under differential privacy needs a hessian bound "
            f"(privacy.hessian_bound), got None"
        )
    return float(g), float(h)


def max_exchanges_per_round(num_leaves: int) -> int:
    """Upper bound on ``histograms`` exchanges of one round, whatever the look-ahead and ``num_class``.

    The roots take one exchange. After it, every exchange carries, for each
    tree still growing, the smaller child of a split whose children will be
    searched; a tree makes such a split at most once per leaf count from 1 to
    ``num_leaves - 2`` (the split reaching ``num_leaves`` leaves asks for no
    child), and the trees of a round grow in lockstep. Hence at most
    ``1 + (num_leaves - 2)`` exchanges.
    """
    return max(1, int(num_leaves) - 1)


def noise_cells(n_bins: np.ndarray, max_bin: int) -> np.ndarray:
    """Histogram cells a row can reach: bins below ``n_bins[f]``, and the NaN bin.

    The other cells (padding of features with fewer bins) are zero for every
    data set, so they need no noise and get none: they stay exactly zero.

    Returns
    -------
    cells : ndarray of shape (n_features, max_bin + 1), bool
    """
    from fedmine.gbdt.histogram import reachable_cells

    return reachable_cells(n_bins, max_bin)


def noise_rng(seed, party_index: int, row_ids: np.ndarray) -> np.random.Generator:
    """A party's noise generator.

    ``seed=None``: fresh operating-system entropy (the private choice). An
    integer ``seed``: a generator seeded from ``(seed, party_index, sha256 of
    the party's row ids)``, reproducible, and distinct per party. Anyone who
    knows all three can recompute, and subtract, the party's noise.
    """
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"noise seed must be an integer >= 0 or None, got {seed!r}")
    digest = hashlib.sha256(np.ascontiguousarray(row_ids).tobytes()).digest()
    words = np.frombuffer(digest, dtype=np.uint32).tolist()
    return np.random.default_rng(np.random.SeedSequence([NOISE_SEED_DOMAIN, int(seed), int(party_index), *words]))


def check_variances(variances) -> np.ndarray:
    """Variances of the summed noise per histogram field, shape (3,), finite, >= 0, samplable."""
    from fedmine.privacy.dp import MAX_SKELLAM_VARIANCE

    v = np.asarray(variances, dtype=np.float64)
    if v.shape != (HIST_FIELDS,) or not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"noise variances must be 3 finite numbers >= 0 (grad, hess, count), got {variances!r}")
    if np.any(v > MAX_SKELLAM_VARIANCE):
        raise ValueError(
            f"noise variance {float(v.max()):.3g} exceeds {MAX_SKELLAM_VARIANCE:.3g}: use a smaller "
            f"row_bits or a smaller noise multiplier"
        )
    return v


def noise_share(variances, *, n_parties, seed, party_index: int, row_ids: np.ndarray):
    """A party's noise request checked once: ``(variances, n_parties, generator)``, or None (no noise).

    The one implementation behind every ``set_noise`` (an engine state, an
    organisation's partitions): they differ only in the row ids that seed a
    reproducible generator (:func:`noise_rng`).

    Parameters
    ----------
    variances : array-like of shape (3,) or None
        Variance of the summed noise per histogram field (grad, hess, count); None: no noise.
    n_parties : int >= 1
        Parties adding a share.
    seed : int or None
        None: fresh operating-system entropy; an integer: :func:`noise_rng`'s reproducible generator.
    party_index : int
    row_ids : ndarray of shape (n_rows,)
        The party's global row ids.

    Returns
    -------
    (ndarray of shape (3,), int, numpy Generator) or None
    """
    if variances is None:
        return None
    v = check_variances(variances)
    if isinstance(n_parties, bool) or not isinstance(n_parties, (int, np.integer)) or n_parties < 1:
        raise ValueError(f"n_parties must be an integer >= 1, got {n_parties!r}")
    return v, int(n_parties), noise_rng(seed, party_index, row_ids)


def add_noise_to_cells(
    hist: np.ndarray, cells: np.ndarray, variances: np.ndarray, *, n_parties: int, rng: np.random.Generator
) -> np.ndarray:
    """``hist`` with this party's Skellam share added on ``cells`` (a new array).

    Parameters
    ----------
    hist : ndarray of shape (n_nodes, n_features, n_bins, 3), int64   # IN
    cells : ndarray of shape (n_features, n_bins), bool
    variances : ndarray of shape (3,)
        Variance of the summed noise per field (grad, hess, count).
    n_parties : int
        Parties adding a share.
    rng : numpy Generator

    Returns
    -------
    noisy : ndarray like ``hist``
    """
    from fedmine.privacy.dp import add_noise_share

    out = hist.copy()
    out[:, cells] = add_noise_share(hist[:, cells], variances, n_parties=n_parties, rng=rng)
    return out


def clamp_histograms(hist: np.ndarray) -> np.ndarray:
    """Clamp the hessian and count fields of noisy summed histograms at 0, in place.

    Parameters
    ----------
    hist : ndarray of shape (..., 3), int64   # IN / OUT

    Returns
    -------
    hist : the same array
    """
    for field in (HESS, COUNT):
        view = hist[..., field]
        np.maximum(view, 0, out=view)
    return hist
