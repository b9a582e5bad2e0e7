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
from fedmine.coordinator.link import BatchedGroup, EngineProxy, Link, party_threads
from fedmine.gbdt.model import Tree, tree_arrays, trees_from_arrays


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
    label_stats: Any = None  # DP: the engine's label statistics from the noisy label totals (no second release)
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

    def plan_privacy(self, cfg: Any, *, n_parties: int) -> dict[str, Any]:
        """Under ``privacy.epsilon``: plan the training's releases; the noise request of its label totals."""
        from fedmine.errors import ConfigError

        raise ConfigError(f"privacy.epsilon: not accounted for the {self.name} strategy (allowed with: histogram)")

    def start(self, ctx: RoundContext) -> None:
        """Once, after the parties have started."""

    def evaluation(self, ctx: RoundContext) -> tuple[Any, dict[str, Any]] | None:
        """(summed ``evaluate``, {organisation: ``own_metrics``}) if the round's calls brought them, else None."""
        return None

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


def check_declared(ranges: Any, names: list[str]) -> None:
    """Under ``privacy.epsilon`` bins come from declared ranges: a ConfigError naming the features without one."""
    import numpy as np

    from fedmine.errors import ConfigError

    r = np.full((len(names), 2), np.nan) if ranges is None else np.asarray(ranges, dtype=np.float64)
    undeclared = [n for n, ok in zip(names, np.isfinite(r).all(axis=1)) if not ok]
    if undeclared:
        raise ConfigError(
            f"features.{undeclared[0]}.min and .max: required with privacy.epsilon (bins come from declared "
            f"ranges, never from the rows); undeclared: {', '.join(undeclared)}"
        )


class FederationGroup(BatchedGroup):
    """The organisations as one engine party; its row counts are the federation's summed ``label_totals``.

    No organisation's own counts are asked for: the engine needs only the
    totals. Calls travel batched (:class:`~fedmine.coordinator.link.BatchedGroup`).
    """

    def __init__(
        self,
        parties: list[Any],
        *,
        totals: dict[str, int],
        n_threads: int | None = None,
        label_stats: Any = None,
        evaluate: tuple[str, ...] = (),
    ) -> None:
        super().__init__(parties, n_threads=n_threads, evaluate=evaluate)
        self.totals = dict(totals)
        self._label_stats = label_stats

    @classmethod
    def of(
        cls, links: list[Link], *, objective: str, n_threads: int | None = None, evaluate: tuple[str, ...] = ()
    ) -> FederationGroup:
        """The group of ``links``, its totals from their summed ``label_totals`` (tests, tools)."""
        from fedmine import protocol
        from fedmine.coordinator.training import label_totals_values

        summed = protocol.merge("label_totals", [link.call("label_totals") for link in links])
        n_rows, n_valid, _ = label_totals_values(objective, summed)
        n_features = links[0].call("describe")["n_features"]
        totals = {"n_rows": n_rows, "n_valid": n_valid, "n_features": n_features}
        proxies = [EngineProxy(link) for link in links]
        return cls(proxies, totals=totals, n_threads=n_threads or len(links), evaluate=evaluate)

    def describe(self) -> dict:
        return dict(self.totals)

    def label_stats(self, params: Any, **noise: Any) -> Any:
        """The engine's label statistics; under DP those of the noisy label totals (post-processing, no release)."""
        import numpy as np

        if self._label_stats is not None:
            return np.array(self._label_stats, dtype=np.int64)
        return BatchedGroup.__getattr__(self, "label_stats")(params, **noise)


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

    budget: Any = None  # the DP budget (fedmine.privacy.budget.Budget), planned before any release

    def plan_privacy(self, cfg: Any, *, n_parties: int) -> dict[str, Any]:
        """Under ``privacy.epsilon``: plan every release of the training (one calibration) before any is made.

        Returns the noise request of the first release, ``label_totals``
        (its keyword arguments). The rest of the plan is used by :meth:`start`.
        """
        from fedmine import metrics
        from fedmine.coordinator.training import declared_ranges
        from fedmine.gbdt import DPConfig
        from fedmine.privacy import budget
        from fedmine.privacy.dp import COUNTED_LABELS

        privacy = cfg.privacy
        names = list(cfg.features)
        check_declared(declared_ranges(cfg), names)
        self._dp = DPConfig(grad_bound=privacy.gradient_bound, hess_bound=privacy.hessian_bound)
        self.budget = budget.plan(
            privacy,
            method=privacy.dp_method or budget.LEAF,
            engine_params=cfg.training.engine_params(cfg.objective, cfg.num_class, metrics.primary(cfg.objective)),
            user_params=frozenset(cfg.training.model_fields_set),
            n_features=len(names),
            dp=self._dp,
        )
        real = cfg.objective not in COUNTED_LABELS
        return {
            "variances": self.budget.variances("label_totals"),
            "n_parties": int(n_parties),
            "label_range": privacy.label_range if real else None,
        }

    def start(self, ctx: RoundContext) -> None:
        from fedmine.gbdt.booster import Trainer

        privacy = ctx.privacy
        self.epsilon = privacy.epsilon if privacy is not None else None
        shares = privacy is not None and privacy.shares_organisation_metrics
        # the round's evaluation rides its last round trip (under DP, or without validation rows, there are no
        # validation sums to ask for)
        none = self.epsilon is not None or ctx.n_valid == 0
        evaluate = () if none else ("evaluate", "own_metrics") if shares else ("evaluate",)
        self.group = FederationGroup(
            [EngineProxy(link) for link in ctx.links],
            totals={"n_rows": ctx.n_rows, "n_valid": ctx.n_valid, "n_features": len(ctx.feature_names)},
            n_threads=party_threads(ctx.links, ctx.n_rows),
            label_stats=ctx.label_stats,
            evaluate=evaluate,
        )
        self._model = None
        self.accountant = None
        self.dp_method = None
        if self.epsilon is not None:
            self._start_dp(ctx)
            return
        self.trainer = Trainer(
            self.group,
            ctx.engine_params,
            categorical=ctx.categorical,
            feature_names=ctx.feature_names,
            ranges=ctx.declared_ranges,
            evaluate=False,
            prefetch=True,  # the next round's first request leaves with this round's evaluation
        )
        self.trainer.start()

    def evaluation(self, ctx: RoundContext) -> tuple[Any, dict[str, Any]] | None:
        """The parties' evaluation of the model, answered with the round's last round trip."""
        return self.group.take_evaluation()

    def _start_dp(self, ctx: RoundContext) -> None:
        """Start under the planned budget: the label totals are spent, then the bins (leaf), then every round.

        Each party draws its noise shares from its own entropy (no seed from
        the coordinator, which could otherwise subtract the noise). A resumed
        run reuses its bins and label totals (nothing released again) and
        continues its accountant (:meth:`restore`).
        """
        from fedmine.privacy import leaf
        from fedmine.privacy.accountant import PrivacyAccountant
        from fedmine.privacy.budget import LEAF, DeclaredBinsTrainer

        if self.budget is None:
            raise RuntimeError("plan_privacy must come before start under privacy.epsilon")
        b, p = self.budget, ctx.privacy
        self.dp_method, self.dp_defaults = b.method, dict(b.dp_defaults)
        self.noise_multiplier = b.noise_multiplier
        common = dict(
            categorical=ctx.categorical,
            feature_names=ctx.feature_names,
            ranges=ctx.declared_ranges,
            dp=self._dp,
            evaluate=False,
        )
        saved = (ctx.resume or {}).get("leaf")
        if b.method == LEAF:
            self.trainer = leaf.LeafTrainer(
                self.group,
                b.params,
                seed=int(b.params.get("seed", 0)),
                trees=ctx.privacy.leaf_trees,
                bin_variance=float(b.variances("bins")[0]),
                **common,
            )
            if saved is not None:  # a resumed run: its own bins (no second release) and structure generator
                self.trainer.use_leaf_state(saved)
        else:
            self.trainer = DeclaredBinsTrainer(self.group, b.params, **common)
        self.trainer.start()
        if self.trainer.sensitivity != b.main.sensitivity:
            raise RuntimeError(f"the trainer's sensitivity {self.trainer.sensitivity} is not the budget's")
        self.accountant = PrivacyAccountant(p.delta, mechanism="skellam", sensitivity=b.main.sensitivity)
        if ctx.resume is None:  # a resumed run's accountant comes from its checkpoint (restore)
            for r in b.releases[:-1]:
                self.accountant.spend(b.noise(r.kind), r.count, sensitivity=r.sensitivity)
        self.trainer.set_noise(b.noise_multiplier, seed=None)

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
        before = (src.exchanges_, src.party_seconds_, src.aggregate_seconds_, src.nodes_, src.bytes_to_coordinator_)
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
            "train/histogram_nodes": float(src.nodes_ - before[3]),  # node answers, all parties
            "train/histogram_bytes": float(src.bytes_to_coordinator_ - before[4]),
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
        """The privacy receipt with the accountant's figures, every kind of release listed (None without DP)."""
        from fedmine.privacy.receipt import PrivacyReceipt

        if self.accountant is None:
            return None
        receipt = PrivacyReceipt.from_budget(
            self.budget,
            self.accountant,
            secure_aggregation=secure_aggregation,
            n_parties=n_parties,
            releases_per_round=self.trainer.max_releases_per_round,
        )
        if self.dp_method == "leaf":
            receipt = dataclasses.replace(
                receipt, parameters={**receipt.parameters, "leaf_trees": self.trainer.tree_kind}
            )
        return receipt

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
