"""The budget of a differentially private training: every kind of release, its noise and its share of epsilon.

This module owns :class:`Budget`, the plan made once before anything leaves
an organisation under ``privacy.epsilon``. Everything the coordinator learns
of the rows is one of these releases, each carrying every party's Skellam
share and counted by the training's one accountant:

::

    kind          call                                 releases                     share of the budget
    label_totals  label_totals                         1                            dp.LABEL_TOTALS_SHARE (2 %)
    bins          grid_counts (leaf method)            1                            leaf.BIN_SHARE (10 %)
    leaf_sums     leaf_sums (leaf method)              one a round                  the rest
    histograms    histograms, split_histograms         up to num_leaves - 1 a       the rest
                  (histogram method)                   round

The ``histogram`` method's bins come from the declared ranges alone
(:class:`DeclaredBinsTrainer`: no release); the engine's label statistics
are post-processing of the noisy label totals (no ``label_stats`` release);
validation sums are not released. One calibration
(:func:`fedmine.privacy.dp.calibrate` with ``extra``) finds the noise
multiplier ``z`` at which all releases fit epsilon together: the repeated
kind at ``z``, each one-off kind at ``factor * z`` chosen for its share
(:func:`fedmine.privacy.dp.one_off_factor`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedmine.errors import ConfigError
from fedmine.gbdt.booster import Trainer
from fedmine.privacy.accountant import Sensitivity
from fedmine.privacy.dp import (
    COUNTED_LABELS,
    LABEL_TOTALS_SHARE,
    calibrate,
    dp_scale,
    histogram_sensitivity,
    label_totals_sensitivity,
    one_off_factor,
)

LEAF, HISTOGRAM = "leaf", "histogram"


@dataclass(frozen=True)
class Release:
    """One kind of release of a DP training.

    Attributes
    ----------
    kind : str, the receipt's name (``label_totals``, ``bins``, ``leaf_sums``, ``histograms``)
    call : str, the protocol table's call that carries it
    factor : float, its noise multiplier relative to the budget's ``z``
    count : int, releases planned
    sensitivity : Sensitivity, of one release
    """

    kind: str
    call: str
    factor: float
    count: int
    sensitivity: Sensitivity


@dataclass
class Budget:
    """A DP training's releases and the one noise multiplier that fits them into ``epsilon`` at ``delta``.

    Attributes
    ----------
    method : ``leaf`` or ``histogram`` (``privacy.dp_method``)
    noise_multiplier : ``z`` of the repeated kind (every other kind: ``factor * z``)
    releases : every kind, the repeated one (:attr:`main`) last
    params : the engine parameters, with the method's DP defaults where the config sets none
    dp_defaults : the defaults used (the receipt states them)
    """

    epsilon: float
    delta: float
    method: str
    noise_multiplier: float
    releases: list[Release]
    params: dict[str, Any]
    dp_defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> Release:
        """The repeated kind: leaf sums or histograms, one or more a round."""
        return self.releases[-1]

    def release(self, kind: str) -> Release:
        for r in self.releases:
            if r.kind == kind:
                return r
        raise KeyError(f"no {kind} release in this budget; kinds: {[r.kind for r in self.releases]}")

    def noise(self, kind: str) -> float:
        """Noise multiplier of one ``kind`` release."""
        return self.release(kind).factor * self.noise_multiplier

    def variances(self, kind: str) -> np.ndarray:
        """Per-field variances of the summed noise of one ``kind`` release."""
        r = self.release(kind)
        return r.sensitivity.variances(r.factor * self.noise_multiplier)

    def kind_of(self, noise_multiplier: float, sensitivity: Sensitivity | None) -> str:
        """The kind of an accountant's ledger entry (``sensitivity`` None: the accountant's own, the main kind)."""
        for r in self.releases:
            same = sensitivity is None if r is self.main else sensitivity == r.sensitivity
            if same and np.isclose(r.factor * self.noise_multiplier, noise_multiplier, rtol=1e-12, atol=0.0):
                return r.kind
        raise ValueError(f"a ledger entry at z={noise_multiplier!r} is no release of this budget")

    def counts(self, ledger) -> dict[str, int]:
        """Releases spent per kind, read from an accountant's ledger (every kind listed, 0 when none)."""
        out = {r.kind: 0 for r in self.releases}
        for z, count, sens in ledger:
            out[self.kind_of(z, sens)] += int(count)
        return out


def _objective(params: dict[str, Any]):
    from fedmine.gbdt.objectives import make_objective
    from fedmine.gbdt.params import make_params

    p = make_params(params)
    return p, make_objective(
        p.objective,
        num_class=p.num_class,
        poisson_max_delta_step=p.poisson_max_delta_step,
        tweedie_variance_power=p.tweedie_variance_power,
    )


def _scales(g: float, h: float, row_bits: int) -> tuple[float, float]:
    """The DP fixed-point scales. The row total only caps them past 2**50 rows, so it is not needed here."""
    return dp_scale(g, n_total=1, row_bits=row_bits), dp_scale(h, n_total=1, row_bits=row_bits)


def plan(
    privacy: Any,
    *,
    method: str,
    engine_params: dict[str, Any],
    user_params: frozenset = frozenset(),
    n_features: int,
    dp: Any,
) -> Budget:
    """The budget of a DP training: every release of the ``method``, calibrated once to ``privacy.epsilon``.

    Parameters
    ----------
    privacy : the config's PrivacySpec (``epsilon``, ``delta``, ``label_range``)
    method : ``leaf`` or ``histogram``
    engine_params : the engine's parameters (``num_boost_round``, ``num_leaves``, the objective, ...)
    user_params : training keys the config sets (the leaf method's DP defaults fill the others)
    n_features : int
    dp : DPConfig (clip bounds, fixed-point resolution)
    """
    from fedmine.privacy import leaf
    from fedmine.privacy.noise import dp_bounds, max_exchanges_per_round

    params, defaults = dict(engine_params), {}
    if method == LEAF:
        trees = getattr(privacy, "leaf_trees", leaf.TREES[0])
        defaults = {k: v for k, v in leaf.DEFAULTS[trees].items() if k not in user_params}
        params.update(defaults)
    elif method != HISTOGRAM:
        raise ConfigError(f"privacy.dp_method: {method!r} is not allowed; allowed: leaf, histogram")
    p, obj = _objective(params)
    g, h = dp_bounds(dp, obj)
    sg, sh = _scales(g, h, dp.row_bits)
    rounds = int(p.num_boost_round)
    labels = label_totals_sensitivity(
        p.objective, label_range=None if p.objective in COUNTED_LABELS else privacy.label_range, row_bits=dp.row_bits
    )
    if method == LEAF:
        main = leaf.leaf_sensitivity(obj.n_trees, grad_bound=g, hess_bound=h, grad_scale=sg, hess_scale=sh)
        count, shares = rounds, {"label_totals": LABEL_TOTALS_SHARE, "bins": leaf.BIN_SHARE}
        kind, call = "leaf_sums", "leaf_sums"
    else:
        main = histogram_sensitivity(
            n_features, grad_bound=g, hess_bound=h, grad_scale=sg, hess_scale=sh, nodes_per_row=obj.n_trees
        )
        count, shares = rounds * max_exchanges_per_round(p.num_leaves), {"label_totals": LABEL_TOTALS_SHARE}
        kind, call = "histograms", "histograms"
    rest = 1.0 - sum(shares.values())
    one_offs = [Release("label_totals", "label_totals", 0.0, 1, labels)]
    if "bins" in shares:
        one_offs.append(Release("bins", "grid_counts", 0.0, 1, leaf.bin_sensitivity(n_features)))
    one_offs = [
        Release(r.kind, r.call, one_off_factor(shares[r.kind], repeated=count, repeated_share=rest), 1, r.sensitivity)
        for r in one_offs
    ]
    z = calibrate(
        privacy.epsilon, privacy.delta, count, main, extra=tuple((r.factor, r.count, r.sensitivity) for r in one_offs)
    )
    releases = [*one_offs, Release(kind, call, 1.0, count, main)]
    return Budget(float(privacy.epsilon), float(privacy.delta), method, z, releases, params, defaults)


class DeclaredBinsTrainer(Trainer):
    """The ``histogram`` method's trainer under DP: bins from the declared ranges alone, no grid counts asked for.

    The grid is :func:`fedmine.privacy.leaf.dp_grids` over the declared
    ranges (uniform over narrow ranges, asinh-spaced over wide ones), cut
    into ``max_bin`` bins as if every cell held one row; categories get a
    bin each. Nothing of the rows is read, so the bins cost no budget.
    """

    def _grids(self, ranges: np.ndarray) -> np.ndarray:
        from fedmine.privacy.leaf import DP_GRID_SIZE, dp_grids

        return dp_grids(ranges, n_grid=DP_GRID_SIZE)

    def _grid_counts(self, grids: np.ndarray) -> np.ndarray:
        return public_grid_counts(self.ranges, grids, self._mask)


def public_grid_counts(ranges, grids: np.ndarray, categorical: np.ndarray) -> np.ndarray:
    """Counts that read no row: 1 in every grid cell, and in every declared category's cell; 0 for missing.

    Returns
    -------
    counts : ndarray of shape (n_features, n_grid + 1), int64 (last column: missing)
    """
    grids = np.asarray(grids, dtype=np.float64)
    counts = np.ones((grids.shape[0], grids.shape[1] + 1), dtype=np.int64)
    counts[:, -1] = 0
    r = np.asarray(ranges, dtype=np.float64)
    for f in np.flatnonzero(np.asarray(categorical, dtype=bool)):
        k = int(r[f, 1]) + 1
        counts[f, k:-1] = 0
    return counts
