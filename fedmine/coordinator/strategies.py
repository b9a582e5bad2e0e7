"""How a round is made. A strategy is a small class with a few hooks:
``start`` (once), ``run_round`` (every round) and ``model_text`` (the end).

- ``histogram``: lossless. Parties send integer gradient histograms; the
  coordinator grows every tree with fedmine's engine (:mod:`fedmine.gbdt`).
  The model equals the one the engine trains on the pooled rows, bit for bit.
- ``local``: no federation. Every organisation boosts its own model on its own
  rows; the baseline every federated model must beat.
- ``bagging``: every organisation adds ``local_rounds`` iterations of trees
  trained on its rows on top of the global model; the coordinator scales each
  organisation's trees by ``beta * n_k / N`` (its share of the training rows
  times the server learning rate) and appends them all. The global update is
  theta_global = theta_agg + beta * delta, with delta the row-weighted average
  of the organisations' trees.
- ``cyclic``: the global model visits the organisations in turn, one per
  round (round r visits organisation (r - 1) mod K, in config order); the
  visitor adds ``local_rounds`` iterations on top of the model as the previous
  one left it (scaled by beta).

Every strategy's trees are engine tree records (:class:`~fedmine.gbdt.model.Tree`);
the maths of scaling lives in :mod:`fedmine.coordinator.ensemble`; strategies
only decide who trains on what and how the trees combine.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from fedmine.coordinator.ensemble import Ensemble, scale_tree
from fedmine.coordinator.link import EngineProxy, Link
from fedmine.gbdt.model import Tree, tree_arrays, trees_from_arrays
from fedmine.gbdt.state import EngineGroup


@dataclass
class RoundContext:
    """What a strategy may use in a round.

    ``broadcast`` sends new trees to every party as the next step. Steps
    number every score update, so a retried call is recognised and skipped by
    the party.
    """

    round_id: int
    links: list[Link]
    ensemble: Ensemble
    params: dict[str, Any]
    local_rounds: int
    server_learning_rate: float
    train_rows: dict[str, int]
    engine_params: dict[str, Any] = field(default_factory=dict)
    categorical: list[int] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    declared_ranges: Any = None  # (n_features, 2) from the canonical schema, NaN where undeclared
    privacy: Any = None  # the config's PrivacySpec (histogram: differential privacy)
    notices: list[str] = field(default_factory=list)  # for the user and the MLflow run
    n_rows: int = 0  # the federation's training rows (summed label_totals)
    n_valid: int = 0  # and validation rows
    user_params: frozenset = frozenset()  # training parameters the config sets (DP defaults fill the others)
    resume: dict | None = None  # the strategy state of the checkpoint a resumed run starts from
    step: int = 0
    stats: dict[str, float] = field(default_factory=dict)  # what the last round measured, by MLflow name
    stopped: bool = False  # the strategy grows no further round
    broadcasts: list[int] = field(default_factory=list)  # trees per broadcast, in order (for replay)

    def next_step(self) -> int:
        self.step += 1
        return self.step

    def broadcast(self, trees: list[Tree]) -> None:
        step = self.next_step()
        for link in self.links:
            link.call("add_trees", step, trees or None)
        self.broadcasts.append(len(trees))


def bagging_weights(train_rows: dict[str, int], beta: float) -> dict[str, float]:
    """beta * n_k / N for each organisation."""
    total = sum(train_rows.values())
    return {name: beta * n / total for name, n in train_rows.items()}


class Strategy:
    """A round-making policy. ``federated`` strategies grow one global model."""

    name = ""
    federated = True
    can_drop = True  # the strategy can continue without a party that failed
    can_recover = True  # the strategy can bring a restarted party back (replay)

    def recover(self, ctx: RoundContext, link: Link) -> None:
        """A party restarted and lost its state: replay the global model to it, in the original groups."""
        start = 0
        link.call("start", ctx.ensemble.base_score)
        for step, n in enumerate(ctx.broadcasts, 1):
            link.call("add_trees", step, ctx.ensemble.trees[start : start + n] or None)
            start += n

    def drop(self, ctx: RoundContext, link: Link) -> None:
        """Forget a party that failed (its trees stay in the model)."""

    def start(self, ctx: RoundContext) -> None:
        """Once, after the parties have started."""

    def run_round(self, ctx: RoundContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def model_text(self, ctx: RoundContext) -> str | None:
        """The global model as LightGBM model text."""
        return ctx.ensemble.to_text() if ctx.ensemble.trees else None

    def num_trees(self, ctx: RoundContext) -> int:
        return ctx.ensemble.num_trees

    def truncate(self, ctx: RoundContext, n_trees: int) -> None:
        """Keep the first ``n_trees`` trees (early stopping)."""
        ctx.ensemble.truncate(n_trees)
        kept, total = [], 0
        for n in ctx.broadcasts:
            if total + n > n_trees:
                break
            kept.append(n)
            total += n
        ctx.broadcasts[:] = kept

    def checkpoint(self, ctx: RoundContext) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the coordinator needs to continue after a crash: (JSON-able state, arrays)."""
        return {"n_trees": ctx.ensemble.num_trees, "broadcasts": list(ctx.broadcasts)}, tree_arrays(ctx.ensemble.trees)

    def restore(self, ctx: RoundContext, state: dict[str, Any], arrays: dict[str, Any]) -> None:
        """Continue from :meth:`checkpoint`: the same trees, replayed to the parties in the same groups.

        Parties add each group's trees to their scores as they did the first
        time, so their scores, and every later tree, are the same bits.
        """
        trees, groups = trees_from_arrays(arrays, state["n_trees"]), state["broadcasts"]
        ctx.ensemble.trees[:] = trees
        ctx.broadcasts.clear()
        start = 0
        for n in groups:
            ctx.broadcast(trees[start : start + n])
            start += n


def dp_method(ctx: RoundContext) -> str:
    """``privacy.dp_method`` resolved: leaf when every feature declares its range (the leaf method needs it)."""
    import numpy as np

    method = getattr(ctx.privacy, "dp_method", None)
    declared = ctx.declared_ranges is not None and bool(np.isfinite(np.asarray(ctx.declared_ranges)).all())
    if method is None:
        method = "leaf" if declared else "histogram"
        if not declared:
            ctx.notices.append(
                "privacy.dp_method: histogram, because some features declare no min and max; declare them "
                "for the leaf method (noise on leaf sums only, far more accurate at the same epsilon)"
            )
    return method


def _leaf_sensitivity(engine_params: dict[str, Any], dp: Any, n_rows: int):
    """The leaf release's sensitivity from the objective's bounds and the DP scales for ``n_rows`` rows."""
    from fedmine.gbdt.objectives import make_objective
    from fedmine.gbdt.params import make_params
    from fedmine.privacy import leaf
    from fedmine.privacy.dp import dp_scale
    from fedmine.privacy.noise import dp_bounds

    params = make_params(engine_params)
    obj = make_objective(
        params.objective,
        num_class=params.num_class,
        poisson_max_delta_step=params.poisson_max_delta_step,
        tweedie_variance_power=params.tweedie_variance_power,
    )
    g, h = dp_bounds(dp, obj)
    rb = dp.row_bits
    return leaf.leaf_sensitivity(
        obj.n_trees,
        grad_bound=g,
        hess_bound=h,
        grad_scale=dp_scale(g, n_total=n_rows, row_bits=rb),
        hess_scale=dp_scale(h, n_total=n_rows, row_bits=rb),
    )


class FederationGroup(EngineGroup):
    """The organisations as one engine party; its row counts are the federation's summed ``label_totals``.

    No organisation's own counts are asked for: the engine needs only the totals.
    """

    def __init__(self, parties: list[Any], *, totals: dict[str, int], n_threads: int | None = None) -> None:
        super().__init__(parties, n_threads=n_threads)
        self.totals = dict(totals)

    @classmethod
    def of(cls, links: list[Link], *, objective: str, n_threads: int | None = None) -> FederationGroup:
        """The group of ``links``, its totals from their summed ``label_totals`` (tests, tools)."""
        from fedmine import protocol
        from fedmine.coordinator.training import label_totals_values

        summed = protocol.merge("label_totals", [link.call("label_totals") for link in links])
        n_rows, n_valid, _ = label_totals_values(objective, summed)
        n_features = links[0].call("describe")["n_features"]
        totals = {"n_rows": n_rows, "n_valid": n_valid, "n_features": n_features}
        return cls([EngineProxy(link) for link in links], totals=totals, n_threads=n_threads or len(links))

    def describe(self) -> dict:
        return dict(self.totals)


class HistogramStrategy(Strategy):
    """Trees grown by the coordinator from summed integer histograms (lossless).

    Its round is one hook: the engine's :class:`~fedmine.gbdt.booster.Trainer`
    grows one round of trees through an :class:`~fedmine.gbdt.state.EngineGroup`
    whose members are :class:`EngineProxy` objects (every call crosses a
    :class:`Link`). The coordinator owns the loop around it: it evaluates,
    stops early and cuts the model back (:meth:`truncate`), as for every
    strategy.
    """

    name = "histogram"

    def drop(self, ctx: RoundContext, link: Link) -> None:
        """Continue without ``link``: the rest start the round over (bins and trees so far are kept)."""
        keep = [p for p in self.group.parties if p.link is not link]
        self.group.parties[:] = keep
        self.group.source.sources[:] = keep
        self.trainer.recover()

    def recover(self, ctx: RoundContext, link: Link) -> None:
        """Every party back to the start of the round: reset, bins, initial score, past trees replayed."""
        link.call("start", ctx.ensemble.base_score)
        self.trainer.recover()

    def start(self, ctx: RoundContext) -> None:
        from fedmine.gbdt import DPConfig
        from fedmine.gbdt.booster import Trainer

        privacy = ctx.privacy
        self.epsilon = privacy.epsilon if privacy is not None else None
        self.dp_method = dp_method(ctx) if self.epsilon is not None else None
        dp = None
        if self.epsilon is not None:
            dp = DPConfig(grad_bound=privacy.gradient_bound, hess_bound=privacy.hessian_bound)
        self.group = FederationGroup(
            [EngineProxy(link) for link in ctx.links],
            totals={"n_rows": ctx.n_rows, "n_valid": ctx.n_valid, "n_features": len(ctx.feature_names)},
            n_threads=len(ctx.links),
        )
        self._model = None
        self.accountant = None
        self.extra_releases: list[tuple[str, float, int, Any]] = []  # (kind, z, count, sensitivity) beside the rounds
        if self.dp_method == "leaf":
            self._start_leaf(ctx, dp)
            return
        self.trainer = Trainer(
            self.group,
            ctx.engine_params,
            categorical=ctx.categorical,
            feature_names=ctx.feature_names,
            ranges=ctx.declared_ranges,
            dp=dp,
            evaluate=False,
        )
        self.trainer.start()
        if dp is not None:
            self._start_dp(ctx)

    def _start_dp(self, ctx: RoundContext) -> None:
        """Calibrate Skellam noise so that every round's histogram releases fit the budget; start the accountant.

        Each party draws its share from its own entropy (no seed from the
        coordinator, which could otherwise subtract the noise).
        """
        from fedmine.privacy.accountant import PrivacyAccountant
        from fedmine.privacy.dp import calibrate

        t, p = self.trainer, ctx.privacy
        releases = ctx.engine_params["num_boost_round"] * t.max_releases_per_round
        self.noise_multiplier = calibrate(p.epsilon, p.delta, releases, t.sensitivity)
        self.accountant = PrivacyAccountant(p.delta, mechanism="skellam", sensitivity=t.sensitivity)
        t.set_noise(self.noise_multiplier, seed=None)

    def _start_leaf(self, ctx: RoundContext, dp: Any) -> None:
        """The leaf method: one calibration for the bins' noisy counts and every round's leaf sums; then start."""
        from fedmine.privacy import leaf
        from fedmine.privacy.accountant import PrivacyAccountant
        from fedmine.privacy.dp import calibrate

        p, params = ctx.privacy, dict(ctx.engine_params)
        self.dp_defaults = {k: v for k, v in leaf.DEFAULTS.items() if k not in ctx.user_params}
        params.update(self.dp_defaults)
        rounds = int(params["num_boost_round"])
        # the leaf sensitivity needs the fixed-point scales, which need the row total: known before any release
        sens = _leaf_sensitivity(params, dp, ctx.n_rows)
        bins = leaf.bin_sensitivity(len(ctx.feature_names))
        counted = params.get("objective") in leaf.COUNTED_LABELS
        label_share = leaf.LABEL_SHARE if counted else 0.0
        rest = 1.0 - leaf.BIN_SHARE - label_share
        factor = leaf.bin_factor(rounds, leaf.BIN_SHARE, leaf_share=rest)
        extra = [(factor, 1, bins)]
        if counted:
            label_factor = leaf.bin_factor(rounds, label_share, leaf_share=rest)
            extra.append((label_factor, 1, leaf.label_sensitivity()))
        z = calibrate(p.epsilon, p.delta, rounds, sens, extra=tuple(extra))
        self.noise_multiplier = z
        bin_variance = float(bins.variances(factor * z)[0])
        label_variance = float(leaf.label_sensitivity().variances(label_factor * z)[0]) if counted else None
        self.trainer = leaf.LeafTrainer(
            self.group,
            params,
            categorical=ctx.categorical,
            feature_names=ctx.feature_names,
            ranges=ctx.declared_ranges,
            dp=dp,
            evaluate=False,
            seed=int(params.get("seed", 0)),
            bin_variance=bin_variance,
            label_variance=label_variance,
        )
        self.accountant = PrivacyAccountant(p.delta, mechanism="skellam", sensitivity=sens)
        saved = (ctx.resume or {}).get("leaf")
        if saved is not None:  # a resumed run: its own bins (no second release) and structure generator
            self.trainer.use_leaf_state(saved)
        self.trainer.start()
        self.extra_releases.append(("bins", factor * z, 1, bins))
        if counted:
            self.extra_releases.append(("label_stats", label_factor * z, 1, leaf.label_sensitivity()))
        if saved is None:  # a resumed run reuses its bins and initial counts: nothing released again
            for _, zk, count, sk in self.extra_releases:
                self.accountant.spend(zk, count, sensitivity=sk)
        self.trainer.set_noise(z, seed=None)

    def run_round(self, ctx: RoundContext) -> None:
        src = self.group.source
        if self.accountant is not None and self.accountant.would_exceed(
            self.epsilon, self.noise_multiplier, self.trainer.max_releases_per_round
        ):
            ctx.notices.append(
                f"privacy budget: stopped before round {ctx.round_id}: epsilon spent "
                f"{self.accountant.epsilon():.4g} of {self.epsilon:g} (delta {ctx.privacy.delta:g}); "
                f"another round could exceed it"
            )
            self.trainer.stop()
            ctx.stopped = True
            return
        before = (src.exchanges_, src.party_seconds_, src.aggregate_seconds_)
        releases0 = self.trainer.releases_
        t0 = time.perf_counter()
        self.trainer.step()
        total = time.perf_counter() - t0
        if self.accountant is not None:
            self.accountant.spend(self.noise_multiplier, self.trainer.releases_ - releases0)
        party = src.party_seconds_ - before[1]
        aggregation = src.aggregate_seconds_ - before[2]
        ctx.stats = {
            "train/histogram_exchanges": float(src.exchanges_ - before[0]),
            "seconds/party": party,
            "seconds/aggregation": aggregation,
            "seconds/split_finding": max(total - party - aggregation, 0.0),
        }
        ctx.stopped = self.trainer.done

    def model_text(self, ctx: RoundContext) -> str | None:
        from fedmine.gbdt import to_lightgbm_text

        if self._model is None:
            self._model = self.trainer.finish()
        return to_lightgbm_text(self._model, ctx.feature_names) if self._model.trees else None

    def num_trees(self, ctx: RoundContext) -> int:
        return len(self.trainer.trees_)

    def checkpoint(self, ctx: RoundContext) -> tuple[dict[str, Any], dict[str, Any]]:
        """The engine's loop; under DP also the accountant's ledger (and the leaf method's bins and generator)."""
        state, arrays = self.trainer.checkpoint()
        if self.accountant is not None:
            state["accountant"] = self.accountant.state()
        if self.dp_method == "leaf":
            state["leaf"] = self.trainer.leaf_state()
        return state, arrays

    def restore(self, ctx: RoundContext, state: dict[str, Any], arrays: dict[str, Any]) -> None:
        """Continue the engine's loop: the parties replay the trees; the accountant continues its ledger.

        Without noise the resumed model is the same bits as an uninterrupted
        one. With differential privacy the accountant is the run's own (every
        release before the resume stays spent, the budget covers the whole
        run) and the rounds after the resume draw fresh noise from each
        party's own entropy: no noise is drawn twice, so no two releases can
        be differenced to cancel it. The leaf method resumes with the run's
        own bins (started with them: no second bin release) and the same
        generator of tree structures.
        """
        self.trainer.restore(state, arrays)
        if self.accountant is not None:
            if "accountant" in state:
                self.accountant.restore(state["accountant"])
            elif self.trainer.releases_:  # a checkpoint written before the ledger was kept
                self.accountant.spend(self.noise_multiplier, self.trainer.releases_)
        ctx.stopped = self.trainer.done

    def receipt(self, *, secure_aggregation: bool, n_parties: int):
        """The privacy receipt with the accountant's figures (None without differential privacy)."""
        from fedmine.privacy.receipt import PrivacyReceipt

        if self.accountant is None:
            return None
        receipt = PrivacyReceipt.from_accountant(
            self.accountant,
            secure_aggregation=secure_aggregation,
            n_parties=n_parties,
            noise_multiplier=self.noise_multiplier,
            releases_per_round=self.trainer.max_releases_per_round,
        )
        kind = "leaf_sums" if self.dp_method == "leaf" else "histograms"
        rounds_spent = self.accountant.releases_ - sum(c for _, _, c, _ in self.extra_releases)
        kinds = [(k, z, c, sens) for k, z, c, sens in self.extra_releases]
        kinds.append((kind, self.noise_multiplier, rounds_spent, None))
        params = dict(receipt.parameters, dp_method=self.dp_method)
        params.update({f"default.{k}": v for k, v in getattr(self, "dp_defaults", {}).items()})
        cost = {k: c / (z * z) for k, z, c, _ in kinds}  # Gaussian RDP: a release at z costs 1 / z**2
        total = sum(cost.values()) or 1.0
        for k, z, c, sens in kinds:
            params[f"release.{k}.count"] = int(c)
            params[f"release.{k}.noise_multiplier"] = float(z)
            params[f"release.{k}.budget_share"] = cost[k] / total
            params[f"release.{k}.epsilon_alone"] = self.accountant.epsilon_of(z, c, sensitivity=sens) if c else 0.0
        covers = ", ".join(f"{k} ({c})" for k, _, c, _ in kinds)
        noised = {k for k, *_ in kinds}
        plain = ["label totals"] + ([] if "label_stats" in noised else ["label statistics"]) + ["validation sums"]
        return dataclasses.replace(receipt, parameters=params, covers=f"{covers}; not noised: {', '.join(plain)}")

    def truncate(self, ctx: RoundContext, n_trees: int) -> None:
        """Keep the first ``n_trees`` trees: the coordinator's early stopping, or a round grown again."""
        if n_trees < len(self.trainer.trees_):
            self.trainer.truncate(n_trees)
            self._model = None


class LocalStrategy(Strategy):
    name = "local"
    federated = False
    can_recover = False  # each organisation's own trees stay with it

    def checkpoint(self, ctx: RoundContext) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {}  # every organisation's own model stays with it: nothing to resume from

    def restore(self, ctx: RoundContext, state: dict[str, Any], arrays: dict[str, Any]) -> None:
        from fedmine.errors import ConfigError

        raise ConfigError(
            "--resume: the local strategy keeps each organisation's model at the organisation; "
            "run it again instead (allowed with: histogram, bagging, cyclic)"
        )

    def run_round(self, ctx: RoundContext) -> None:
        step = ctx.next_step()
        for link in ctx.links:
            trees = link.call("train_local", ctx.params, 1)
            # The party follows its own model: only it sees its trees.
            link.call("add_trees", step, trees or None)


class BaggingStrategy(Strategy):
    name = "bagging"

    def run_round(self, ctx: RoundContext) -> None:
        weights = bagging_weights(ctx.train_rows, ctx.server_learning_rate)
        new: list[Tree] = []
        for link in ctx.links:
            trees = link.call("train_local", ctx.params, ctx.local_rounds)
            new.extend(scale_tree(t, weights[link.name]) for t in trees)
        ctx.ensemble.append(new)
        ctx.broadcast(new)


class CyclicStrategy(Strategy):
    name = "cyclic"

    def run_round(self, ctx: RoundContext) -> None:
        # Round r visits organisation (r - 1) mod K; every party then applies
        # the visitor's trees, so the next visitor trains on top of them.
        visitor = ctx.links[(ctx.round_id - 1) % len(ctx.links)]
        trees = visitor.call("train_local", ctx.params, ctx.local_rounds)
        new = [scale_tree(t, ctx.server_learning_rate) for t in trees]
        ctx.ensemble.append(new)
        ctx.broadcast(new)


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (HistogramStrategy, BaggingStrategy, CyclicStrategy, LocalStrategy)
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        from fedmine.errors import ConfigError

        raise ConfigError(f"training.strategy: {name!r} is not allowed; allowed: {', '.join(STRATEGIES)}") from None
