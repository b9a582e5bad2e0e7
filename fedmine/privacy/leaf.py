"""Differentially private boosting that spends the budget on leaves only (``privacy.dp_method: leaf``).

This module owns the ``leaf`` method: trees whose structure costs no budget,
noise only on the leaf sums, Newton leaf values, and the training's budget
split into its releases (Maddock et al., CCS 2022: split candidates that cost
no budget, Newton leaves from jointly noised sums, loss-derived bounds;
Nori et al. 2021, DP-EBM: one feature per round, in a cycle)::

    coordinator                                    party k
    -----------                                    -------
    bins:   grid_counts(grid, variance=v_b)  <---  counts + Skellam share   (one release, DP quantiles)
    round:  structure = feature_tree(f, bins)      (no data: free; f = round mod features)
            leaf_sums(structure, scales)     <---  sum g, sum h per leaf + Skellam share
            value_j = -lr * G_j / (H_j + lambda)   (post-processing)
            begin_round(it + 1, trees)             scores += tree

One round is one release: each row is in one leaf per tree, so it changes one
gradient and one hessian coordinate per class, by at most ``|g| <= G`` and
``h <= H`` (the objective's bounds: 1 and 1/4 for logistic loss, no clipping
needed; ``privacy.gradient_bound`` for regression). The hessian needs far less
of the budget than the gradient (its signal, ``n_leaf * h``, is larger), so a
release gives the hessian :data:`HESS_SHARE` of its privacy loss
(:class:`~fedmine.privacy.accountant.Sensitivity` ``shares``).

Trees (``privacy.leaf_trees``): ``cyclic`` (the default) grows one-feature
trees, feature ``round mod n_features`` in turn, whose ``num_leaves`` leaves
are runs of about equal mass of that feature's bins, the masses read from the
bin release's noisy counts (a categorical feature: one leaf per category), so
the model is an additive one with interactions left out, and each release's
noise falls on few, well-filled leaves.
``random`` grows full binary trees of ``max_depth`` levels; every node splits
on a feature drawn uniformly and a bin threshold drawn uniformly among that
feature's bins (categorical features: one category against the rest),
missing values going left or right at random. The bins are the split
candidates: DP quantiles from one noisy count release (:data:`BIN_SHARE` of
the budget) on a coarse grid over the declared ranges, so no candidate looks
at the rows beyond that release; cells whose noisy count is below
:data:`CELL_FLOOR` standard deviations of its noise count as empty. Under DP every feature needs a declared range.
"""

from __future__ import annotations

import math

import numpy as np

from fedmine.errors import ConfigError
from fedmine.gbdt.binning import BinMapper
from fedmine.gbdt.booster import Trainer
from fedmine.gbdt.dtypes import CAT_BITSET_DTYPE, CAT_WORDS, NODE_DTYPE
from fedmine.gbdt.model import Tree
from fedmine.privacy.accountant import Sensitivity

#: Privacy-loss share of the hessian field in one leaf release (the gradient gets the rest).
HESS_SHARE = 0.15
#: Share of the budget spent on the noisy bin counts (DP quantiles of every feature).
BIN_SHARE = 0.1
#: Cells of the coarse grid the DP quantiles are read from (fewer cells, less accumulated noise).
DP_GRID_SIZE = 128
#: Ranges wider than this many units get an asinh-spaced grid (:func:`dp_grids`).
WIDE_RANGE = 1000.0
#: Largest |leaf value| before shrinkage (a leaf whose noisy hessian is tiny cannot explode).
MAX_LEAF_VALUE = 4.0

#: Tree structures of the leaf method: one feature per round in a cycle, leaves its bins; or random depth-d trees.
TREES = ("cyclic", "random")

#: Grid cells whose noisy count is below this many standard deviations of its noise count as empty (post-processing:
#: without it the noise of the empty cells between a coded feature's values draws bin edges into them).
CELL_FLOOR = 2.0

#: Defaults of the leaf method when ``privacy.epsilon`` is set, per ``privacy.leaf_trees`` (stated in the
#: receipt); the config overrides them. One-feature trees: 8 leaves of about equal mass over 32 DP-quantile bins.
DEFAULTS = {
    "cyclic": {"num_leaves": 8, "max_bin": 32, "learning_rate": 0.4, "lambda_l2": 300.0},
    "random": {"max_depth": 3, "max_bin": 32, "learning_rate": 0.4, "lambda_l2": 100.0},
}


def random_tree(rng: np.random.Generator, mapper: BinMapper, *, depth: int, features: np.ndarray) -> Tree:
    """A full binary tree of ``depth`` levels with random splits; leaf ``j`` (left to right) has value ``j``.

    Parameters
    ----------
    rng : numpy Generator (the coordinator's: the structure depends on no row)
    mapper : the federation's bins
    depth : int >= 1
    features : ndarray of int
        Features a split may use (those with two bins or more).

    Returns
    -------
    Tree with ``2**depth - 1`` internal nodes (heap order) then ``2**depth`` leaves.
    """
    n_inner, n_leaves = 2**depth - 1, 2**depth
    nodes = np.zeros(n_inner + n_leaves, dtype=NODE_DTYPE)
    bitsets: list[np.ndarray] = []
    for i in range(n_inner + n_leaves):
        rec = nodes[i]
        rec["parent"] = -1 if i == 0 else (i - 1) // 2
        rec["depth"] = (i + 1).bit_length() - 1
        rec["slot"] = i
        rec["cat_index"] = -1
        if i >= n_inner:
            rec["is_leaf"], rec["feature"], rec["left"], rec["right"], rec["split_order"] = 1, -1, -1, -1, -1
            rec["value"] = float(i - n_inner)
            continue
        f = int(rng.choice(features))
        k = int(mapper.n_bins[f])
        rec["feature"], rec["left"], rec["right"], rec["split_order"] = f, 2 * i + 1, 2 * i + 2, i
        rec["default_left"] = int(rng.integers(2))
        if mapper.categorical[f]:
            code = int(rng.integers(k))
            bits = np.zeros(CAT_WORDS, dtype=CAT_BITSET_DTYPE)
            bits[code >> 5] = np.uint32(1) << np.uint32(code & 31)
            rec["is_categorical"], rec["cat_index"], rec["threshold"] = 1, len(bitsets), float(len(bitsets))
            rec["default_left"] = 0
            bitsets.append(bits)
        else:
            t = int(rng.integers(k - 1))  # rows with bin <= t go left: both sides can hold rows
            rec["bin_threshold"] = t
            rec["threshold"] = mapper.threshold(f, t)
    cats = np.stack(bitsets) if bitsets else np.zeros((0, CAT_WORDS), dtype=CAT_BITSET_DTYPE)
    return Tree(nodes, cats)


def feature_tree(mapper: BinMapper, feature: int, *, thresholds: np.ndarray | None = None) -> Tree:
    """A one-feature tree whose leaves are ``feature``'s bins; leaf ``j`` (left to right) has value ``j``.

    Numeric features: a balanced tree over the bin thresholds ``t`` (rows with
    bin ``<= t`` go left), so leaf ``j`` holds the bins between the ``j``-th and
    the ``j + 1``-th threshold; missing values go right (the last leaf).
    Categorical features: a chain, category ``c`` alone in leaf ``c``, the last
    leaf holding the last category, missing and unseen codes. Each row is in
    one leaf, as in any tree, so a release of its leaf sums costs what a
    release of a random tree's costs.

    Parameters
    ----------
    mapper : the federation's bins
    feature : int
        A feature with two bins or more.
    thresholds : ndarray of int, optional
        Numeric features: the bin thresholds to split at, each in ``[0, n_bins - 2]``
        (default: all, one leaf per bin).

    Returns
    -------
    Tree with ``len(thresholds)`` internal nodes (``n_bins - 1`` for categorical features) and one leaf more.
    """
    f, k = int(feature), int(mapper.n_bins[feature])
    categorical = bool(mapper.categorical[f])
    if categorical or thresholds is None:
        cuts = np.arange(k - 1, dtype=np.int64)
    else:
        cuts = np.unique(np.asarray(thresholds, dtype=np.int64))
    n_inner = int(cuts.size)
    nodes = np.zeros(2 * n_inner + 1, dtype=NODE_DTYPE)
    bitsets: list[np.ndarray] = []
    counter = {"node": 0, "leaf": 0}

    def make(parent: int, depth: int) -> int:
        i = counter["node"]
        counter["node"] += 1
        rec = nodes[i]
        rec["parent"], rec["depth"], rec["slot"], rec["cat_index"] = parent, depth, i, -1
        rec["is_leaf"], rec["feature"], rec["left"], rec["right"], rec["split_order"] = 1, -1, -1, -1, -1
        return i

    def grow(i: int, lo: int, hi: int) -> None:
        """Node ``i`` splits at the middle of ``cuts[lo:hi]`` (a chain for categorical features)."""
        rec = nodes[i]
        if lo >= hi:
            rec["value"] = float(counter["leaf"])
            counter["leaf"] += 1
            return
        mid = lo if categorical else (lo + hi) // 2
        rec["is_leaf"], rec["feature"], rec["split_order"] = 0, f, i
        if categorical:
            code = int(cuts[mid])
            bits = np.zeros(CAT_WORDS, dtype=CAT_BITSET_DTYPE)
            bits[code >> 5] = np.uint32(1) << np.uint32(code & 31)
            rec["is_categorical"], rec["cat_index"], rec["threshold"] = 1, len(bitsets), float(len(bitsets))
            bitsets.append(bits)
        else:
            rec["bin_threshold"] = int(cuts[mid])
            rec["threshold"] = mapper.threshold(f, int(cuts[mid]))
        depth = int(rec["depth"])
        left = make(i, depth + 1)
        nodes[i]["left"] = left
        grow(left, lo, mid)
        right = make(i, depth + 1)
        nodes[i]["right"] = right
        grow(right, mid + 1, hi)

    grow(make(-1, 0), 0, n_inner)
    cats = np.stack(bitsets) if bitsets else np.zeros((0, CAT_WORDS), dtype=CAT_BITSET_DTYPE)
    return Tree(nodes, cats)


def mass_thresholds(mass: np.ndarray, n_leaves: int) -> np.ndarray | None:
    """Bin thresholds cutting bins of the given (noisy) masses into at most ``n_leaves`` runs of about equal mass.

    Bins without mass (noise alone) join a neighbour. When at most ``n_leaves``
    bins hold mass, each is its own run. None: every bin its own leaf.

    Parameters
    ----------
    mass : ndarray of shape (n_bins,), float64, >= 0
    """
    mass = np.maximum(np.asarray(mass, dtype=np.float64), 0.0)
    k = mass.size
    full = np.flatnonzero(mass > 0)
    if k <= n_leaves and full.size == k:
        return None
    if full.size <= 1:
        return None
    if full.size <= n_leaves:  # a cut after each bin with mass but the last
        return full[:-1].astype(np.int64)
    cum = np.cumsum(mass)[:-1]
    targets = mass.sum() * np.arange(1, n_leaves) / n_leaves
    cuts = np.unique([int(np.argmin(np.abs(cum - t))) for t in targets])
    return cuts.astype(np.int64)


def newton_values(
    grad: np.ndarray, hess: np.ndarray, *, lambda_l2: float, learning_rate: float, max_value: float = MAX_LEAF_VALUE
) -> np.ndarray:
    """Shrunk Newton leaf values ``-lr * G / (max(H, 0) + lambda)`` from noisy sums, clipped to ``+-max_value * lr``.

    Parameters
    ----------
    grad, hess : ndarray of shape (n_leaves,), float64
        Noisy gradient and hessian sums (in units of g and h).
    """
    h = np.maximum(np.asarray(hess, dtype=np.float64), 0.0)
    raw = -np.asarray(grad, dtype=np.float64) / (h + float(lambda_l2))
    return float(learning_rate) * np.clip(raw, -max_value, max_value)


def leaf_sensitivity(
    n_trees: int, *, grad_bound: float, hess_bound: float, grad_scale: float, hess_scale: float
) -> Sensitivity:
    """What one row changes in one ``leaf_sums`` release: one leaf per tree, ``|g| <= G``, ``0 <= h <= H``."""
    return Sensitivity(
        fields=("grad", "hess"),
        coords=(int(n_trees), int(n_trees)),
        bounds=(max(math.ceil(grad_bound * grad_scale), 1), max(math.ceil(hess_bound * hess_scale), 1)),
        shares=(1.0 - HESS_SHARE, HESS_SHARE),
    )


def bin_sensitivity(n_features: int) -> Sensitivity:
    """What one row changes in the grid counts: one cell of every feature, by 1."""
    return Sensitivity(fields=("count",), coords=(int(n_features),), bounds=(1,))


def label_sensitivity() -> Sensitivity:
    """What one row changes in the class counts: one count, by 1."""
    return Sensitivity(fields=("count",), coords=(1,), bounds=(1,))


def bin_factor(rounds: int, share: float = BIN_SHARE, *, leaf_share: float | None = None) -> float:
    """Noise multiplier of a one-off release relative to a leaf release's, so that it costs ``share`` of the budget.

    Under Gaussian RDP a release at ``c * z`` costs ``1 / c**2`` releases at ``z``;
    ``rounds`` leaf releases (``leaf_share`` of the budget, default ``1 - share``)
    and one release at ``c = sqrt(leaf_share / (share * rounds))``.
    """
    rest = 1.0 - share if leaf_share is None else leaf_share
    return math.sqrt(rest / (share * max(int(rounds), 1)))


class LeafTrainer(Trainer):
    """The boosting loop of the ``leaf`` method (see the module docstring); the :class:`Trainer` interface.

    Parameters
    ----------
    party, params, categorical, feature_names, ranges, dp, evaluate : as for :class:`Trainer`
        ``ranges`` must declare every feature; ``params.max_depth`` is the trees' depth.
    seed : int or None
        The coordinator's generator of tree structures (they depend on no row).
    bin_variance : float or None
        Variance of the summed noise of each grid count (None: exact counts, no DP bins).

    Attributes
    ----------
    sensitivity : Sensitivity
        Of one leaf release (after :meth:`start`).
    """

    def __init__(
        self,
        party,
        params,
        *,
        seed: int | None = 0,
        trees: str = "cyclic",
        bin_variance: float | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("n_grid", DP_GRID_SIZE)
        super().__init__(party, params, **kwargs)
        self._rng = np.random.default_rng(seed)
        if trees not in TREES:
            raise ConfigError(f"privacy.leaf_trees: {trees!r} is not allowed; allowed: {', '.join(TREES)}")
        self.tree_kind = trees
        self.bin_variance = bin_variance
        if self.dp is None:
            raise ConfigError("privacy.dp_method leaf needs privacy.epsilon")
        if trees == "random" and self.params.max_depth < 1:
            raise ConfigError(
                f"privacy.dp_method leaf needs a tree depth >= 1 (max_depth), got {self.params.max_depth}"
            )
        if ranges_missing(self.ranges):
            raise ConfigError(
                "privacy.dp_method leaf: features "
                f"{ranges_missing(self.ranges, names=self.feature_names)} need declared min and max (features.<name>)"
            )

    def leaf_state(self) -> dict:
        """JSON-able: the bins and the structure generator (a checkpoint; a resume reuses both)."""
        m = self._mapper
        return {
            "bins": {
                "edges": m.edges.tolist(),
                "n_bins": m.n_bins.tolist(),
                "categorical": m.categorical.astype(int).tolist(),
                "max_bin": int(m.max_bin),
                "feature_min": m.feature_min.tolist(),
                "feature_max": m.feature_max.tolist(),
            },
            "rng": self._rng.bit_generator.state,
            "label_stats": self.label_stats_.tolist(),
            "bin_mass": self._masses().tolist(),
        }

    def use_leaf_state(self, state: dict) -> None:
        """Start with a checkpoint's bins (no bin release) and continue its structure generator."""
        b = state["bins"]
        self._given_mapper = BinMapper(
            edges=np.asarray(b["edges"], dtype=np.float64),
            n_bins=np.asarray(b["n_bins"], dtype=np.int32),
            categorical=np.asarray(b["categorical"], dtype=bool),
            max_bin=int(b["max_bin"]),
            feature_min=np.asarray(b["feature_min"], dtype=np.float64),
            feature_max=np.asarray(b["feature_max"], dtype=np.float64),
        )
        self._rng_state = state["rng"]
        self._given_label_stats = np.asarray(state["label_stats"], dtype=np.int64)
        if "bin_mass" in state:
            self._bin_mass = np.asarray(state["bin_mass"], dtype=np.float64)

    def restore(self, state: dict, arrays: dict) -> None:
        super().restore(state, arrays)
        if getattr(self, "_rng_state", None) is not None:
            self._rng.bit_generator.state = self._rng_state

    def _label_stats(self) -> np.ndarray:
        """The initial score's label statistics (post-processing of the noisy label totals); a resumed run's own."""
        given = getattr(self, "_given_label_stats", None)
        self.label_stats_ = given if given is not None else np.asarray(super()._label_stats(), dtype=np.int64)
        return self.label_stats_

    def _grids(self, ranges: np.ndarray) -> np.ndarray:
        """A coarse public grid: uniform over narrow ranges, asinh-spaced over wide ones (amounts, balances)."""
        return dp_grids(ranges, n_grid=self.n_grid)

    def _grid_counts(self, grids: np.ndarray) -> np.ndarray:
        if self.bin_variance is None:
            return super()._grid_counts(grids)
        n_parties = len(self.party.parties) if hasattr(self.party, "parties") else 1
        counts = self.party.grid_counts(grids, self._mask, variance=float(self.bin_variance), n_parties=n_parties)
        counts = np.asarray(counts, dtype=np.int64)
        floor = CELL_FLOOR * math.sqrt(float(self.bin_variance))
        numeric = ~self._mask
        counts[numeric] = np.where(counts[numeric] < floor, 0, counts[numeric])  # cells of noise alone: empty
        counts = np.maximum(counts, 0)
        self._cell_counts = counts.copy()
        ranges = np.asarray(self.ranges, dtype=np.float64)
        for f in np.flatnonzero(self._mask):  # the declared vocabulary, every category a bin (noise fills any cell)
            k = int(ranges[f, 1]) + 1
            counts[f, :k] = np.maximum(counts[f, :k], 1)
            counts[f, k:-1] = 0
        return counts

    def _start_dp(self, n_features: int, init: np.ndarray) -> None:
        super()._start_dp(n_features, init)
        g, h = self._dp_bounds
        self.sensitivity = leaf_sensitivity(
            self._obj.n_trees, grad_bound=g, hess_bound=h, grad_scale=self._dp_scales[0], hess_scale=self._dp_scales[1]
        )
        self._features = np.flatnonzero(self._mapper.n_bins >= 2)
        if self._features.size == 0:
            raise ConfigError("privacy.dp_method leaf: no feature has two bins to split on")

    def _thresholds(self, feature: int) -> np.ndarray | None:
        """The split thresholds of a one-feature tree: at most ``num_leaves`` leaves of about equal mass.

        The masses are the noisy grid counts of the bin release summed per bin
        (post-processing: no row is read again). None: every bin its own leaf.
        """
        k = int(self._mapper.n_bins[feature])
        return mass_thresholds(self._masses()[feature, :k], int(self.params.num_leaves))

    def _masses(self) -> np.ndarray:
        """Noisy rows per bin, shape (n_features, max_bin): the released grid counts summed per bin (post-processing).

        Uniform when the counts were not released under DP (nothing is known of the rows' spread).
        """
        mass = getattr(self, "_bin_mass", None)
        if mass is not None:
            return mass
        m = self._mapper
        mass = np.zeros((m.n_bins.size, m.max_bin), dtype=np.float64)
        counts = getattr(self, "_cell_counts", None)
        for f in range(m.n_bins.size):
            k = int(m.n_bins[f])
            if counts is None or m.lut is None or m.categorical[f]:
                mass[f, :k] = 1.0
            else:
                mass[f, :k] = np.bincount(m.lut[f].astype(np.int64), weights=counts[f, :-1], minlength=k)[:k]
        self._bin_mass = mass
        return mass

    def _variances(self, noise_multiplier: float) -> np.ndarray:
        v = self.sensitivity.variances(noise_multiplier)  # (grad, hess); the count field is not released
        return np.array([v[0], v[1], v[1]])

    @property
    def max_releases_per_round(self) -> int:
        return 1

    def _step(self) -> float | None:
        params, party, obj = self.params, self.party, self._obj
        n_trees = obj.n_trees
        if self.tree_kind == "cyclic":
            f = int(self._features[self._it % self._features.size])
            structures = [feature_tree(self._mapper, f, thresholds=self._thresholds(f))] * n_trees
        else:
            structures = [
                random_tree(self._rng, self._mapper, depth=params.max_depth, features=self._features)
                for _ in range(n_trees)
            ]
        gs = np.full(n_trees, self._dp_scales[0])
        hs = np.full(n_trees, self._dp_scales[1])
        sums = np.asarray(party.leaf_sums(structures, gs, hs), dtype=np.float64)
        self.releases_ += 1
        new = []
        for k, tree in enumerate(structures):
            nodes = tree.nodes.copy()
            leaves = tree.leaf_ids()
            j = nodes["value"][leaves].astype(np.int64)
            G, H = sums[k, j, 0] / gs[k], sums[k, j, 1] / hs[k]
            nodes["value"][leaves] = newton_values(G, H, lambda_l2=params.lambda_l2, learning_rate=params.learning_rate)
            nodes["hess"][leaves] = np.maximum(H, 0.0)
            new.append(Tree(nodes, tree.cat_bitsets))
        self._it += 1
        self.grew_ = True
        self.trees_.extend(new)
        last_round = self._it >= params.num_boost_round
        if last_round:
            party.finish(new)
        else:
            self._bounds = party.begin_round(self._it, new)
        self.done = last_round
        return None


def dp_grids(ranges, *, n_grid: int = DP_GRID_SIZE, wide: float = WIDE_RANGE) -> np.ndarray:
    """Grid points per feature from declared ranges alone (no row is read).

    A range spanning at most ``wide`` units gets ``n_grid`` uniform cells (small
    integer codes keep one cell per value); a wider one is spaced uniformly in
    ``asinh(x / s)`` with ``s = (max - min) / wide``: fine cells near zero,
    coarse far out, as amounts and balances need.

    Returns
    -------
    grids : ndarray of shape (n_features, n_grid), float64, increasing, last point the max
    """
    ranges = np.asarray(ranges, dtype=np.float64)
    lo, hi = ranges[:, 0], ranges[:, 1]
    out = np.empty((ranges.shape[0], n_grid))
    frac = np.arange(1, n_grid + 1, dtype=np.float64) / n_grid
    for f in range(ranges.shape[0]):
        a, b = float(lo[f]), float(hi[f])
        if not b > a:
            out[f] = b
            continue
        if b - a <= wide:
            out[f] = a + (b - a) * frac
            continue
        s = (b - a) / wide
        u = np.arcsinh(a / s) + (np.arcsinh(b / s) - np.arcsinh(a / s)) * frac
        out[f] = np.maximum.accumulate(np.sinh(u) * s)
        out[f, -1] = b
    return out


def ranges_missing(ranges, *, names=None) -> list:
    """Features (names, or indices) without a finite declared (min, max)."""
    if ranges is None:
        return ["all"]
    r = np.asarray(ranges, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(r).all(axis=1))
    return [names[i] if names else int(i) for i in bad]
