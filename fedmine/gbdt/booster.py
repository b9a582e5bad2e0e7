"""The boosting loop: one code path for pooled and federated training.

This module owns :func:`train`, which drives a *party-like* object (one
:class:`~fedmine.gbdt.state.EngineState` holding every row, an in-process
:class:`~fedmine.gbdt.state.EngineGroup`, or a remote federation implementing
the same calls) through binning, the initial score and the rounds::

    describe, feature_ranges -> grids; grid_counts -> BinMapper; set_bins
    label_stats -> initial scores; configure
    for each round:
        begin_round(it, last trees) -> gradient bounds -> fixed-point scales
        start_trees(it, scales)      (parties quantise and bag)
        TreeGrower(...).grow()       (histograms / apply_split)
        metric_stats(metric)         (early stopping, from summed statistics)

Every quantity the coordinator uses is an integer sum, a max, or an exact
float sum, so the trees are the same bits whatever the partition of the rows.

With ``dp=DPConfig(...)`` the :class:`Trainer` runs the same loop for
differential privacy (:mod:`fedmine.privacy.noise`): fixed scales from
``dp_scale``, clipped gradients, unpacked accumulators, noise shares added by
the parties after :meth:`Trainer.set_noise`, clamped sums, and a count of the
releases.
:func:`train_pooled` and :func:`train_partitioned` are the two in-process
entry points.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmine.errors import DataError
from fedmine.gbdt import binning
from fedmine.gbdt.grower import TreeGrower, max_slots
from fedmine.gbdt.model import Model, Tree, tree_arrays, trees_from_arrays
from fedmine.gbdt.objectives import make_objective
from fedmine.gbdt.params import make_params
from fedmine.gbdt.quantize import choose_scale
from fedmine.gbdt.sampling import feature_mask
from fedmine.gbdt.state import EngineGroup, EngineState
from fedmine.privacy.noise import DPConfig, check_variances, dp_bounds, max_exchanges_per_round

#: Packing needs at least this hessian scale (2**16 levels per unit hessian),
#: else two accumulators are used.
MIN_PACKED_HESS_SCALE = 2.0**16

HIGHER_IS_BETTER = {"auc"}


def canonical_feature_names(n_features: int, names=None) -> list:
    """``names`` made LightGBM-safe (no spaces or special characters), or ``Column_i``."""
    if names is None:
        return [f"Column_{i}" for i in range(n_features)]
    names = [str(n) for n in names]
    if len(names) != n_features:
        raise DataError(f"feature_names has {len(names)} names for {n_features} features")
    out = []
    for n in names:
        clean = "".join(ch if (ch.isalnum() or ch == "_") else "_" for ch in n) or "_"
        out.append(clean)
    if len(set(out)) != len(out):
        raise DataError(f"feature names are not unique after canonicalisation: {out}")
    return out


def feature_infos(mapper: binning.BinMapper) -> list:
    """LightGBM's ``feature_infos`` of each feature: its categories, its ``[min:max]``, or ``none``."""
    infos = []
    for f in range(mapper.n_features):
        if mapper.categorical[f]:
            k = int(mapper.n_bins[f])
            infos.append(":".join(str(c) for c in range(k)) if k > 0 else "none")
        elif not mapper.feature_min[f] <= mapper.feature_max[f]:
            infos.append("none")
        else:
            infos.append(f"[{float(mapper.feature_min[f])!r}:{float(mapper.feature_max[f])!r}]")
    return infos


def packing_bits(n_total: int, hess_bound: float) -> int:
    """Count bits for packed (grad, hess|count) accumulators, 0 if the bits do not allow.

    ``count_bits = bit_length(n_total)`` keeps any count below ``2**count_bits``;
    the hessian scale is then chosen with ``n_total * bound * s * 2**count_bits
    < 2**62``, which must leave at least :data:`MIN_PACKED_HESS_SCALE`.
    """
    bits = int(n_total).bit_length()
    if choose_scale(hess_bound * 2.0**bits, n_total) < MIN_PACKED_HESS_SCALE:
        return 0
    return bits


class Trainer:
    """The boosting loop one round at a time, so a caller can record every round.

    ``start()`` agrees bins and the initial score; each ``step()`` grows one
    round (``num_class`` trees), applies it and evaluates it; ``finish()``
    returns the :class:`Model`. :func:`train` is ``start`` + ``step`` until
    :attr:`done` + ``finish``.

    Parameters
    ----------
    party : EngineState, EngineGroup, or any object with their calls
    params : dict or Params
    categorical, feature_names, n_grid : see :func:`train`
    ranges : ndarray of shape (n_features, 2), optional
        Declared (min, max) per feature, NaN where none is declared. Parties
        are asked for their ranges only when some feature has none; declared
        ranges win (values outside them fall into the edge cells).
    dp : DPConfig, dict or None
        Differential privacy: clip bounds and fixed-point resolution. Noise is
        off until :meth:`set_noise`. None (default): the exact engine.
    evaluate : bool
        True (default): each :meth:`step` evaluates the validation metric from
        the parties' summed ``metric_stats`` and applies early stopping, as
        :func:`train` needs. False: the trainer only grows rounds; its caller
        (the federation's coordinator, which owns the round loop) evaluates,
        stops early and cuts the model back with :meth:`truncate`.
    prefetch : bool
        True: each :meth:`step` that leaves training unfinished ends by
        starting the next round (``start_trees``) and asking for its roots'
        histograms, so a party that batches calls answers them in the same
        round trip as the last round's trees (and their evaluation). The
        trees are the same; a caller that stops after the step has asked for
        one exchange in vain. Off under DP (every exchange is a release).

    Attributes
    ----------
    trees_ : list of Tree
        Every tree grown so far (``num_class`` per round).
    history_ : list of float
        The validation metric after each round (when there are validation rows).
    done : bool
        No further round will be grown (``num_boost_round`` reached, early
        stopping, or no tree of a round could split).
    releases_ : int
        ``histograms`` exchanges so far (each one DP release under noise).
    sensitivity : Sensitivity or None
        Under DP, after :meth:`start`: what one row can change in one release
        (:func:`fedmine.privacy.dp.histogram_sensitivity`); None otherwise.
    noise_multiplier_ : float or None
        The noise multiplier last set (None: no noise).
    """

    def __init__(
        self,
        party,
        params,
        *,
        categorical=None,
        feature_names=None,
        n_grid: int = binning.DEFAULT_GRID_SIZE,
        ranges=None,
        dp=None,
        evaluate: bool = True,
        prefetch: bool = False,
    ) -> None:
        self.party = party
        self.evaluate = evaluate
        self.prefetch = bool(prefetch)
        self._next: TreeGrower | None = None  # the next round, started and its roots asked for (prefetch)
        self.dp = DPConfig.make(dp)
        self.ranges = ranges
        self.params = make_params(params)
        self.categorical = categorical
        self.feature_names = feature_names
        self.n_grid = n_grid
        self.trees_: list = []
        self.history_: list = []
        self.done = False
        self.grew_ = False
        self.releases_ = 0
        self.sensitivity: Any = None  # fedmine.privacy.dp.Sensitivity under DP
        self.noise_multiplier_: float | None = None
        self._noise_request: tuple[float | None, int | None, int] | None = None  # (z, seed, n_parties) before start()
        self._started = False

    def start(self) -> None:
        """Describe, agree the bins on a shared grid, agree the initial score."""
        params, party = self.params, self.party
        self._obj = obj = make_objective(
            params.objective,
            num_class=params.num_class,
            poisson_max_delta_step=params.poisson_max_delta_step,
            tweedie_variance_power=params.tweedie_variance_power,
        )
        desc = party.describe()
        self._n_total, n_features, self._n_valid = desc["n_rows"], desc["n_features"], desc["n_valid"]
        if self._n_total == 0:
            raise DataError("no training rows")
        self._mask = binning._as_mask(self.categorical, n_features)
        self._names = canonical_feature_names(n_features, self.feature_names)
        agree = getattr(party, "agree_bins", None)
        given = getattr(self, "_given_mapper", None)  # a resumed DP run: its own bins, no second release
        if given is not None:
            self._mapper = given
        elif agree is not None:  # vertical: each feature binned by its owner alone, with the same rule
            self._mapper = agree(self.ranges, categorical=self._mask, max_bin=params.max_bin, n_grid=self.n_grid)
        else:
            ranges = self._agreed_ranges(n_features)
            grids = self._grids(ranges)
            counts = self._grid_counts(grids)
            self._mapper = binning.edges_from_grid_counts(
                counts, grids, max_bin=params.max_bin, categorical=self._mask, ranges=ranges
            )
        party.set_bins(self._mapper)
        init = obj.init_scores(self._label_stats(), self._n_total)
        if not np.all(np.isfinite(init)):
            raise DataError(
                f"objective {params.objective!r} needs labels with a positive mean, got initial score {init}"
            )
        self._init = init
        self._count_bits = 0
        if self.dp is None:
            party.configure(params, init)
            if params.packed == "auto" and obj.hess_bound is not None:
                self._count_bits = packing_bits(self._n_total, obj.hess_bound)
        else:
            self._start_dp(n_features, init)
        self._best_score, self._best_round = None, -1
        self._sign = 1.0 if params.metric in HIGHER_IS_BETTER else -1.0
        self._bounds = party.begin_round(0, None)
        self._it = 0
        self._started = True
        if self._noise_request is not None:
            self.set_noise(*self._noise_request[:2], n_parties=self._noise_request[2])

    def _label_stats(self) -> np.ndarray:
        """The parties' summed label statistics for the initial score (a DP trainer asks for noisy ones)."""
        return self.party.label_stats(self.params)

    def _grids(self, ranges: np.ndarray) -> np.ndarray:
        """The shared fine grid over the agreed ranges (a DP trainer uses a coarser one)."""
        return binning.make_grids(ranges, n_grid=self.n_grid)

    def _grid_counts(self, grids: np.ndarray) -> np.ndarray:
        """The parties' summed counts on the shared grid (a DP trainer asks for noisy ones)."""
        return self.party.grid_counts(grids, self._mask)

    def _variances(self, noise_multiplier: float) -> np.ndarray:
        """Variances (grad, hess, count) of the summed noise of one release at ``noise_multiplier``."""
        return self.sensitivity.variances(noise_multiplier)

    def _start_dp(self, n_features: int, init: np.ndarray) -> None:
        """DP: clip bounds, fixed scales, the sensitivity of one release; parties clip."""
        from fedmine.privacy.dp import dp_scale, histogram_sensitivity

        dp = self.dp
        assert dp is not None  # called under DP only
        g, h = dp_bounds(dp, self._obj)
        self._dp_bounds = (g, h)
        self._dp_scales = (
            dp_scale(g, n_total=self._n_total, row_bits=dp.row_bits),
            dp_scale(h, n_total=self._n_total, row_bits=dp.row_bits),
        )
        self.sensitivity = histogram_sensitivity(
            n_features,
            grad_bound=g,
            hess_bound=h,
            grad_scale=self._dp_scales[0],
            hess_scale=self._dp_scales[1],
            nodes_per_row=self._obj.n_trees,
        )
        self.party.configure(self.params, init, grad_clip=g, hess_clip=h)

    @property
    def max_releases_per_round(self) -> int:
        """Upper bound on ``histograms`` exchanges (releases) in one round, for budget checks."""
        return max_exchanges_per_round(self.params.num_leaves)

    def set_noise(self, noise_multiplier, seed=None, *, n_parties=None) -> None:
        """Make every party add its Skellam share to each later histograms answer.

        Parameters
        ----------
        noise_multiplier : float > 0, inf or None
            ``z``: the summed noise of field ``f`` has variance
            ``sensitivity.variances(z)[f]``. None or inf: no noise.
        seed : int or None
            None: each party draws from fresh OS entropy. An integer: each
            party seeds from ``(seed, its index, a hash of its row ids)``, so
            a run is reproducible (and its noise known to whoever knows them).
        n_parties : int, optional
            Parties sharing the noise; the party group's size by default (1
            for a single party). Pass ``K - t`` to keep the full noise against
            ``t`` parties colluding with the coordinator.

        Before :meth:`start` the request is kept and sent once the
        sensitivity is known (before any histogram).
        """
        if self.dp is None:
            raise RuntimeError("set_noise needs a differentially private training: Trainer(..., dp=DPConfig(...))")
        z = None if noise_multiplier is None else float(noise_multiplier)
        if z is not None and not (z > 0.0):
            raise ValueError(f"noise multiplier must be positive, inf or None, got {noise_multiplier!r}")
        if z == np.inf:
            z = None
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"noise seed must be an integer >= 0 or None, got {seed!r}")
        if n_parties is None:
            n_parties = len(self.party.parties) if hasattr(self.party, "parties") else 1
        if not self._started:
            self._noise_request = (z, None if seed is None else int(seed), int(n_parties))
            return
        self._noise_request = None
        variances = None if z is None else check_variances(self._variances(z))
        self.party.set_noise(variances, n_parties=int(n_parties), seed=seed)
        self.noise_multiplier_ = z

    def _agreed_ranges(self, n_features: int) -> np.ndarray:
        """Declared ranges where given, the parties' merged min/max elsewhere."""
        if self.ranges is None:
            return self.party.feature_ranges()
        declared = np.asarray(self.ranges, dtype=np.float64).reshape(n_features, 2)
        if np.isfinite(declared).all():
            return declared.copy()
        merged = np.asarray(self.party.feature_ranges(), dtype=np.float64)
        return np.where(np.isfinite(declared), declared, merged)

    @property
    def rounds_done(self) -> int:
        return len(self.trees_) // self._obj.n_trees

    def step(self) -> float | None:
        """Grow, apply and evaluate one round; return its validation metric (None without validation rows)."""
        if self.done:
            raise RuntimeError("training is done; call finish()")
        snapshot = (len(self.trees_), len(self.history_), self._it, self._best_score, self._best_round, self.releases_)
        try:
            return self._step()
        except Exception:
            # the round did not happen: forget what it added (recover() then realigns the parties)
            self._next = None
            n, h, self._it, self._best_score, self._best_round, self.releases_ = snapshot
            del self.trees_[n:]
            del self.history_[h:]
            self.done = False
            raise

    def _open_round(self) -> TreeGrower:
        """Round ``self._it`` started at the parties (fixed-point scales, ``start_trees``): its grower."""
        params, party, obj, it = self.params, self.party, self._obj, self._it
        n_trees, n_features = obj.n_trees, self._mapper.n_features
        gs = np.empty(n_trees)
        hs = np.empty(n_trees)
        for k in range(n_trees):
            if self.dp is not None:
                gs[k], hs[k] = self._dp_scales
                continue
            gb = obj.grad_bound if obj.grad_bound is not None else self._bounds[k, 0]
            hb = obj.hess_bound if obj.hess_bound is not None else self._bounds[k, 1]
            gs[k] = choose_scale(gb, self._n_total)
            hs[k] = choose_scale(hb * 2.0**self._count_bits, self._n_total)
        party.start_trees(
            it, gs, hs, count_bits=self._count_bits, max_nodes=max_slots(params.num_leaves, params.lookahead)
        )
        masks = np.stack(
            [
                feature_mask(n_features, seed=params.seed, iteration=it, tree=k, fraction=params.feature_fraction)
                for k in range(n_trees)
            ]
        )
        return TreeGrower(
            party,
            mapper=self._mapper,
            rules=params.rules,
            num_leaves=params.num_leaves,
            max_depth=params.max_depth,
            learning_rate=params.learning_rate,
            grad_scales=gs,
            hess_scales=hs,
            feature_masks=masks,
            lookahead=params.lookahead,
            clamp=self.dp is not None,
        )

    def _step(self) -> float | None:
        params, party, obj, it = self.params, self.party, self._obj, self._it
        grower, self._next = self._next or self._open_round(), None
        new = grower.grow()
        self.releases_ += grower.exchanges_
        self._it = it + 1
        self.grew_ = not all(t.n_leaves == 1 for t in new)
        if not self.grew_:
            # LightGBM stops when no tree of the round can split; keep a
            # constant round only if it is the first (it carries the init score).
            if not self.trees_:
                self.trees_.extend(
                    Tree.single_leaf(0.0, int(t.nodes[0]["count"]), float(t.nodes[0]["hess"])) for t in new
                )
            party.finish(None)
            self.done = True
            return None
        self.trees_.extend(new)
        last_round = self._it >= params.num_boost_round
        if last_round:
            party.finish(new)
        else:
            self._bounds = party.begin_round(self._it, new)
        value = None
        if self.evaluate and self._n_valid > 0:
            value = obj.metric_value(params.metric, party.metric_stats(params.metric), self._n_valid)
            self.history_.append(value)
            if self._best_score is None or self._sign * value > self._sign * self._best_score:
                self._best_score, self._best_round = value, it
            if params.early_stopping_rounds and it - self._best_round >= params.early_stopping_rounds:
                if not last_round:
                    party.finish(None)
                last_round = True
        self.done = last_round
        if self.prefetch and self.dp is None and not self.done:
            self._next = self._open_round()
            self._next.open()
        return value

    def recover(self) -> None:
        """Bring every party back to the start of the current round after a failure.

        Each party is reset and set up again from what the coordinator holds
        (bins, initial score, the trees so far, replayed round by round), so a
        party that restarted and lost its state rejoins with the same scores as
        the others; the next :meth:`step` grows the round from the start.
        """
        party, n_trees = self.party, self._obj.n_trees
        self._next = None
        party.reset()
        party.set_bins(self._mapper)
        if self.dp is None:
            party.configure(self.params, self._init)
        else:
            g, h = self._dp_bounds
            party.configure(self.params, self._init, grad_clip=g, hess_clip=h)
        bounds = party.begin_round(0, None)
        rounds = [self.trees_[r * n_trees : (r + 1) * n_trees] for r in range(len(self.trees_) // n_trees)]
        self._bounds = party.replay(rounds) if rounds else bounds
        if self.dp is not None and self.noise_multiplier_ is not None:
            self.set_noise(self.noise_multiplier_)

    def checkpoint(self) -> tuple[dict, dict]:
        """The loop's state after the last step: (JSON-able state, named arrays).

        Bins and the initial score are not saved: :meth:`start` agrees them
        again from the same data, deterministically.
        """
        state = {
            "it": self._it,
            "n_trees": len(self.trees_),
            "history": [float(v) for v in self.history_],
            "best_score": self._best_score,
            "best_round": self._best_round,
            "done": self.done,
            "grew": self.grew_,
            "releases": self.releases_,
        }
        arrays = tree_arrays(self.trees_)
        return state, arrays

    def restore(self, state: dict, arrays: dict) -> None:
        """Continue from :meth:`checkpoint` after :meth:`start`: the parties replay the trees round by round."""
        n_trees = self._obj.n_trees
        self._next = None
        self.trees_ = trees_from_arrays(arrays, state["n_trees"])
        self._it = int(state["it"])
        self.history_ = list(state["history"])
        self._best_score, self._best_round = state["best_score"], int(state["best_round"])
        self.grew_ = bool(state["grew"])
        self.releases_ = int(state["releases"])
        if state["done"]:
            self.party.finish(None)
            self.done = True
            return
        rounds = [self.trees_[r * n_trees : (r + 1) * n_trees] for r in range(len(self.trees_) // n_trees)]
        self._bounds = self.party.replay(rounds) if rounds else self._bounds

    def truncate(self, n_trees: int) -> None:
        """Keep the first ``n_trees`` trees (whole rounds) and grow no further round: the caller's early stopping."""
        n = int(n_trees) - int(n_trees) % self._obj.n_trees
        del self.trees_[n:]
        self.stop()

    def stop(self) -> None:
        """Grow no further round (a privacy budget, a caller's limit); the parties' scores stay as they are."""
        self._next = None
        if not self.done:
            self.party.finish(None)
            self.done = True

    def finish(self) -> Model:
        """The model (cut back to the best round under early stopping)."""
        params, obj = self.params, self._obj
        trees = self.trees_
        n_rounds = len(trees) // obj.n_trees
        if params.early_stopping_rounds and self._n_valid > 0 and self._best_round >= 0:
            n_rounds = self._best_round + 1
            trees = trees[: n_rounds * obj.n_trees]
        return Model(
            trees=list(trees),
            init_scores=np.asarray(self._init, dtype=np.float64),
            objective=params.objective,
            objective_line=obj.lightgbm_line(),
            n_trees_per_round=obj.n_trees,
            n_features=self._mapper.n_features,
            feature_names=self._names,
            categorical=self._mask,
            feature_infos=feature_infos(self._mapper),
            params=params.as_dict(),
            best_iteration=n_rounds,
            history=list(self.history_),
        )


def train(
    party,
    params,
    *,
    categorical=None,
    feature_names=None,
    n_grid: int = binning.DEFAULT_GRID_SIZE,
    callback=None,
    ranges=None,
    dp=None,
    noise_multiplier=None,
    noise_seed=None,
) -> Model:
    """Train a model through a party-like object.

    Parameters
    ----------
    party : EngineState, EngineGroup, or any object with their calls
    params : dict or Params
        LightGBM-style parameters (see :mod:`fedmine.gbdt.params`).
    categorical : bool mask or index list, optional
        Categorical features (integer codes, NaN missing).
    feature_names : list of str, optional
    n_grid : int
        Cells of the fine shared grid used to agree bins.
    callback : callable, optional
        ``callback(iteration, metric_value_or_None)`` after each round.
    ranges : ndarray of shape (n_features, 2), optional
        Declared ranges (see :class:`Trainer`).
    dp : DPConfig, dict or None
        Differential privacy (see :class:`Trainer`).
    noise_multiplier, noise_seed : optional
        Under ``dp``: :meth:`Trainer.set_noise` before the first round.

    Returns
    -------
    Model
    """
    trainer = Trainer(
        party, params, categorical=categorical, feature_names=feature_names, n_grid=n_grid, ranges=ranges, dp=dp
    )
    if dp is not None:
        trainer.set_noise(noise_multiplier, noise_seed)
    trainer.start()
    while not trainer.done:
        value = trainer.step()
        if callback and trainer.grew_:
            callback(trainer.rounds_done - 1, value)
    return trainer.finish()


def train_pooled(
    X,
    y,
    params,
    *,
    categorical=None,
    feature_names=None,
    X_valid=None,
    y_valid=None,
    n_grid: int = binning.DEFAULT_GRID_SIZE,
    **dp_args,
) -> Model:
    """Train on rows held in one place: one EngineState, the same code path.

    ``dp_args``: ``dp``, ``noise_multiplier``, ``noise_seed`` of :func:`train`.
    """
    party = EngineState(X, y, X_valid=X_valid, y_valid=y_valid)
    return train(party, params, categorical=categorical, feature_names=feature_names, n_grid=n_grid, **dp_args)


def train_partitioned(
    parts,
    params,
    *,
    categorical=None,
    feature_names=None,
    row_ids=None,
    valid_parts=None,
    n_grid: int = binning.DEFAULT_GRID_SIZE,
    return_group: bool = False,
    **dp_args,
):
    """Train over K in-process parties, summing their integer histograms.

    Parameters
    ----------
    parts : list of (X_k, y_k)
    row_ids : list of ndarray, optional
        Global ids of each party's rows (bagging); by default the parties'
        rows are numbered in order, as if concatenated.
    valid_parts : list of (X_k, y_k) or None, optional
    return_group : bool
        Also return the EngineGroup (its ``source`` counts exchanges and bytes).
    dp_args
        ``dp``, ``noise_multiplier``, ``noise_seed`` of :func:`train`.
    """
    if row_ids is None:
        offsets = np.cumsum([0] + [len(y) for _, y in parts])
        row_ids = [np.arange(offsets[i], offsets[i + 1], dtype=np.uint64) for i in range(len(parts))]
    valid_parts = valid_parts or [None] * len(parts)
    parties = [
        EngineState(X, y, row_ids=rid, X_valid=None if v is None else v[0], y_valid=None if v is None else v[1])
        for (X, y), rid, v in zip(parts, row_ids, valid_parts)
    ]
    group = EngineGroup(parties)
    model = train(group, params, categorical=categorical, feature_names=feature_names, n_grid=n_grid, **dp_args)
    return (model, group) if return_group else model
