"""The coordinator: drives rounds over the parties and owns the global model.

It sees only what parties answer: summed row counts, label sums and
validation sums (masked under secure aggregation), trees, and each
organisation's own figures only where the protocol table marks them
disclosed and the config shares them. It never holds a row. One :class:`Coordinator` serves one
training; the Prefect flow calls :meth:`start`, :meth:`run_round` for each
round, :meth:`local_baselines` and :meth:`model_text`.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedmine import metrics, protocol
from fedmine.config import FederationConfig
from fedmine.coordinator.ensemble import Ensemble
from fedmine.coordinator.link import Link
from fedmine.coordinator.strategies import RoundContext, get_strategy
from fedmine.errors import DataError, PartyError


def base_score(objective: str, label_sums: np.ndarray, rows: int) -> np.ndarray:
    """The initial raw score from federation-wide label sums (LightGBM's boost_from_average).

    binary: log-odds of the positive rate; multiclass: log of each class's
    share (LightGBM's softmax init); regression: the mean label.
    """
    if rows == 0:
        return np.zeros(max(len(label_sums), 1))
    if objective == "binary":
        p = float(np.clip(label_sums[0] / rows, 1e-15, 1 - 1e-15))
        return np.array([np.log(p / (1 - p))])
    if objective == "multiclass":
        share = np.clip(label_sums / rows, 1e-15, 1.0)
        return np.log(share)
    return np.array([label_sums[0] / rows])


def label_totals_values(objective: str, totals) -> tuple[int, int, np.ndarray]:
    """``(n_rows, n_valid, label_sums)`` from the summed ``label_totals`` answers of the organisations."""
    totals = np.asarray(totals, dtype=np.int64)
    n_rows, n_valid = int(totals[0]), int(totals[1])
    if objective in ("binary", "multiclass"):
        return n_rows, n_valid, totals[2:].astype(np.float64)
    return n_rows, n_valid, np.array([metrics.exact_total_vector(totals[2:])])


def declared_ranges(cfg: FederationConfig) -> np.ndarray:
    """(min, max) per canonical feature as the schema declares it, NaN where it does not.

    Categories span their vocabulary's codes and booleans 0..1, so only
    numeric features without declared bounds make the parties report ranges.
    """
    out = np.full((len(cfg.features), 2), np.nan)
    for i, spec in enumerate(cfg.features.values()):
        if spec.type == "category":
            out[i] = (0, len(spec.categories) - 1)
        elif spec.type == "bool":
            out[i] = (0, 1)
        elif spec.min is not None and spec.max is not None:
            out[i] = (spec.min, spec.max)
    return out


def wait_for_party(link: Link, *, seconds: float) -> bool:
    """Wait up to ``seconds`` for a party that failed to answer ``describe`` again (it restarted); True if it did.

    The link is marked as working again when it answers.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            link.party.call("describe")
            break
        except PartyError:
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)
    link.failed = False
    return True


def same_rows(org: str, before: str | None, description: dict[str, Any]) -> None:
    """The organisation still holds the rows it started the training with (by their fingerprint).

    Raises
    ------
    DataError
        The fingerprint differs: one line naming the organisation and both digests.
    """
    now = description.get("fingerprint")
    if before != now:
        raise DataError(
            f"organisation {org}: source changed since the training started "
            f"(rows fingerprint {str(before)[:12]} then, {str(now)[:12]} now)"
        )


@dataclass
class RoundResult:
    """What one round produced: metrics (global and per organisation), seconds, bytes."""

    round_id: int
    global_metrics: dict[str, float]
    org_metrics: dict[str, dict[str, float]]
    seconds: float
    bytes_sent: int
    bytes_received: int
    trees: int
    org_bytes_sent: dict[str, int] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)  # by MLflow name (privacy/*, seconds/*, train/*)
    stopped: bool = False

    def flat(self) -> dict[str, float]:
        """MLflow metric names, grouped so the MLflow UI shows what matters first (docs/tracking.md).

        ``eval/<m>`` (the federation's validation metrics), ``eval/<org>/<m>``,
        ``privacy/*``, ``seconds/round`` and the strategy's ``seconds/*``,
        ``traffic/bytes_sent``, ``traffic/bytes_received``,
        ``traffic/<org>/bytes_sent``, ``train/trees`` and the strategy's
        ``train/*``.
        """
        out = {f"eval/{k}": v for k, v in self.global_metrics.items()}
        for org, m in self.org_metrics.items():
            out.update({f"eval/{org}/{k}": v for k, v in m.items()})
        out["seconds/round"] = self.seconds
        out["traffic/bytes_sent"] = float(self.bytes_sent)
        out["traffic/bytes_received"] = float(self.bytes_received)
        out.update({f"traffic/{org}/bytes_sent": float(b) for org, b in self.org_bytes_sent.items()})
        out["train/trees"] = float(self.trees)
        out.update(self.stats)
        return {k: float(v) for k, v in out.items() if v == v}  # drop NaN


@dataclass
class Coordinator:
    """Drives a training over ``parties`` with the configured strategy."""

    cfg: FederationConfig
    parties: list[Any]
    links: list[Link] = field(init=False)
    ensemble: Ensemble | None = field(init=False, default=None)
    history: list[RoundResult] = field(init=False, default_factory=list)
    descriptions: dict[str, dict[str, Any]] = field(init=False, default_factory=dict)
    n_rows: int = field(init=False, default=0)  # training rows of the federation (summed)
    n_valid: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.links = [Link(p) for p in self.parties]
        self._all_links = list(self.links)  # for traffic figures, including parties left out later
        self.strategy = get_strategy(self.cfg.training.strategy)
        self.params = self.cfg.training.lightgbm_params(self.cfg.objective, self.cfg.num_class)
        self._ctx: RoundContext | None = None
        self._best: tuple[float, int, int] | None = None  # (metric, round, trees) for early stopping
        self.stopped = False
        self.training_id = uuid.uuid4().hex
        self.epoch = 0  # secure-aggregation restarts
        self.dropped: list[dict[str, Any]] = []  # parties that failed and were left out
        self.notices: list[str] = []  # warnings for the user and the MLflow run
        self.last_round = 0  # rounds done, including those before a resume
        self._key_sessions = 0  # key exchanges so far: each names its own session, no mask is reused

    @property
    def objective(self) -> str:
        return self.cfg.objective

    @property
    def federated(self) -> bool:
        return self.strategy.federated

    def bytes_sent(self) -> int:
        return sum(link.bytes_sent for link in self._all_links)

    def bytes_received(self) -> int:
        return sum(link.bytes_received for link in self._all_links)

    def start(self, *, resume: dict[str, Any] | None = None) -> None:
        """Begin the training at every party, agree the base score from summed label totals, start the parties.

        Row counts and label sums are summed over the organisations (masked
        under secure aggregation); each organisation's own counts are asked
        for (``row_counts``, disclosed) only by the tree strategies, which
        weigh organisations by them, and under ``organisation_metrics: shared``.

        ``resume``: the checkpoint state (:meth:`checkpoint`) a resumed run
        continues, given before anything is released so that a DP run reuses
        what it released before (its bins) instead of releasing it again;
        :meth:`restore` follows.
        """
        for link in self.links:
            link.call("begin_training", self.training_id)
            d = link.call("describe")
            if d["features"] != list(self.cfg.features):
                raise DataError(f"organisation {link.name}: features {d['features']} differ from the canonical schema")
            self.descriptions[link.name] = dict(d)
        if self.cfg.secure_aggregation:
            self._secure_setup()
        label_stats = None
        if self.dp:
            rows, self.n_valid, sums, label_stats = self._dp_label_totals(resume)
        else:
            totals = protocol.merge("label_totals", [link.call("label_totals") for link in self.links])
            rows, self.n_valid, sums = label_totals_values(self.objective, totals)
        self.n_rows = rows
        base = base_score(self.objective, sums, rows)
        self.ensemble = Ensemble.for_config(self.cfg, base)
        if self.shares_rows:
            for link in self.links:
                self.descriptions[link.name].update(link.call("row_counts"))
        # Under `local` every organisation starts from its own average, as LightGBM would.
        for link in self.links:
            d = self.descriptions[link.name]
            own = base if self.federated else base_score(self.objective, d["label_sums"], d["n_rows"])
            link.call("start", own)
        self._ctx = RoundContext(
            round_id=0,
            links=self.links,
            ensemble=self.ensemble,
            params=self.params,
            local_rounds=self.cfg.training.local_rounds,
            server_learning_rate=self.cfg.training.server_learning_rate,
            train_rows={n: d["n_rows"] for n, d in self.descriptions.items() if "n_rows" in d},
            engine_params=self.cfg.training.engine_params(
                self.objective, self.cfg.num_class, metrics.primary(self.objective)
            ),
            categorical=[i for i, f in enumerate(self.cfg.features.values()) if f.type == "category"],
            feature_names=list(self.cfg.features),
            declared_ranges=declared_ranges(self.cfg),
            privacy=self.cfg.privacy,
            notices=self.notices,
            n_rows=self.n_rows,
            n_valid=self.n_valid,
            user_params=frozenset(self.cfg.training.model_fields_set),
            resume=None if resume is None else resume.get("strategy_state"),
            label_stats=label_stats,
        )
        self.strategy.start(self._ctx)

    @property
    def dp(self) -> bool:
        """Whether the training is differentially private (``privacy.epsilon``)."""
        return self.cfg.privacy.epsilon is not None

    def _dp_label_totals(self, resume: dict[str, Any] | None) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Under DP: plan the budget, then the noisy label totals (a resumed run's own: not released again).

        Returns ``(n_rows, n_valid, label sums, the engine's label statistics)``,
        all post-processing of the one noisy release.
        """
        from fedmine.gbdt.quantize import exact_sum_parts
        from fedmine.privacy.dp import COUNTED_LABELS, decode_label_totals

        request = self.strategy.plan_privacy(self.cfg, n_parties=len(self.links))
        saved = (resume or {}).get("label_totals")
        if saved is not None:
            totals = np.asarray(saved, dtype=np.int64)
        else:
            answers = [link.call("label_totals", **request) for link in self.links]
            totals = np.asarray(protocol.merge("label_totals", answers), dtype=np.int64)
        self.label_totals_ = totals
        rows, n_valid, sums = decode_label_totals(totals, self.objective, label_range=request["label_range"])
        if self.objective in COUNTED_LABELS:
            stats = sums.astype(np.int64)
        else:
            stats = exact_sum_parts(sums)  # the engine's layout of a real label's sum
        return rows, n_valid, sums, stats

    def _secure_setup(self) -> None:
        """Key agreement through the coordinator: it relays public keys bound to names, never secrets."""
        from fedmine.privacy.secure_agg import require_min_parties

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            require_min_parties(len(self.links), self.cfg.privacy.min_parties)
        self.notices += [str(w.message) for w in caught]
        self._key_sessions += 1
        session = f"{self.training_id}:{self._key_sessions}"
        keys = {link.name: link.call("secure_setup", session) for link in self.links}
        for link in self.links:
            link.call("secure_peers", keys)

    def receipt(self):
        """The privacy receipt of this training so far (logged every round)."""
        from fedmine.privacy.receipt import PrivacyReceipt, disclosed_fields

        dp = getattr(self.strategy, "receipt", None)
        with_dp = dp(secure_aggregation=self.cfg.secure_aggregation, n_parties=len(self.links)) if dp else None
        receipt = with_dp or PrivacyReceipt(secure_aggregation=self.cfg.secure_aggregation, n_parties=len(self.links))
        answered = set().union(*(link.answered for link in self._all_links))
        return dataclasses.replace(receipt, disclosed=tuple(disclosed_fields(answered)))

    @property
    def shares_metrics(self) -> bool:
        """Organisations send their own metrics (``privacy.organisation_metrics`` resolved)."""
        return self.cfg.privacy.shares_organisation_metrics

    @property
    def shares_rows(self) -> bool:
        """Organisations send their own row counts: shared metrics, or a tree strategy (its weights need them)."""
        return self.shares_metrics or self.strategy.name != "histogram"

    def evaluate(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Federation-wide metrics from the summed (masked) validation sums; each organisation's own if shared.

        Under ``privacy.epsilon`` no validation sums are released: each
        organisation logs its own metrics (``log_metrics``) and the
        coordinator has none. Otherwise the histogram strategy's last round
        trip of a round brings them, or every organisation is asked at once.
        """
        if self.dp:
            for link in self.links:
                link.call("log_metrics")
            return {}, {}
        if self.n_valid == 0:  # no validation rows anywhere: the sums would be zeros (a 1 MB vector per party)
            return {}, ({link.name: {} for link in self.links} if self.shares_metrics else {})  # and no metrics
        answered = self.strategy.evaluation(self._ctx) if self._ctx is not None else None
        if answered is not None:
            total, own = answered
        else:
            from concurrent.futures import ThreadPoolExecutor

            names = ["evaluate"] + (["own_metrics"] if self.shares_metrics else [])

            def ask(link: Link) -> list[Any]:
                return [link.call(name) for name in names]

            with ThreadPoolExecutor(max(len(self.links), 1)) as pool:
                answers = list(pool.map(ask, self.links))
            total = protocol.merge("evaluate", [a[0] for a in answers])
            own = {link.name: a[1] for link, a in zip(self.links, answers)} if self.shares_metrics else {}
        return metrics.from_sum_vector(total, self.objective), own

    def run_round(self, round_id: int) -> RoundResult:
        """One boosting round with the strategy; then evaluate the model every party follows."""
        if self._ctx is None:
            raise RuntimeError("start() must be called before run_round()")
        if self.stopped:
            raise RuntimeError("training has stopped; no further round")
        t0 = time.perf_counter()
        sent0, recv0 = self.bytes_sent(), self.bytes_received()
        org_sent0 = {link.name: link.bytes_sent for link in self.links}
        calls0 = {link.name: link.calls for link in self.links}
        trees0 = self.strategy.num_trees(self._ctx)
        ctx = self._ctx
        ctx.round_id = round_id
        ctx.stats = {}
        self._run_strategy_round(ctx)
        global_m, org_m = self._evaluate_with_rejoin(ctx)
        self.stopped = ctx.stopped or self._early_stop(round_id, global_m)
        privacy = self.receipt()
        ctx.stats.update(
            {
                "privacy/secure_aggregation": float(privacy.secure_aggregation),
                "privacy/parties": float(privacy.n_parties),
            }
        )
        if privacy.epsilon_total is not None:
            ctx.stats["privacy/epsilon"] = float(privacy.epsilon_total)
        # round trips (a batch is one) of the busiest organisation, per tree the round grew
        trips = max((link.calls - calls0.get(link.name, 0) for link in self.links), default=0)
        ctx.stats["traffic/round_trips"] = float(trips)
        ctx.stats["traffic/round_trips_per_tree"] = trips / max(self.strategy.num_trees(ctx) - trees0, 1)
        result = RoundResult(
            round_id=round_id,
            global_metrics=global_m,
            org_metrics=org_m,
            seconds=time.perf_counter() - t0,
            bytes_sent=self.bytes_sent() - sent0,
            bytes_received=self.bytes_received() - recv0,
            trees=self.strategy.num_trees(ctx),
            org_bytes_sent={link.name: link.bytes_sent - org_sent0[link.name] for link in self.links},
            stats=dict(ctx.stats),
            stopped=self.stopped,
        )
        self.history.append(result)
        self.last_round = round_id
        return result

    def _run_strategy_round(self, ctx: RoundContext) -> None:
        """The strategy's round; a party that fails is left out and the round restarts, if the config allows."""
        while True:
            trees0, step0 = self.strategy.num_trees(ctx), ctx.step
            try:
                self.strategy.run_round(ctx)
                return
            except PartyError as exc:
                failed = next((link for link in self.links if link.failed), None)
                if failed is not None and self._rejoin(failed, ctx, exc):
                    self.strategy.truncate(ctx, trees0)
                    ctx.step = step0
                    self.strategy.recover(ctx, failed)
                    continue
                if failed is None or self.cfg.privacy.on_party_failure == "stop":
                    raise
                self._drop(failed, ctx, exc)
                self.strategy.truncate(ctx, trees0)
                ctx.step = step0

    def _evaluate_with_rejoin(self, ctx: RoundContext):
        """Evaluate; a party at an endpoint that failed meanwhile rejoins (the round's trees are replayed to it)."""
        while True:
            try:
                return self.evaluate()
            except PartyError as exc:
                failed = next((link for link in self.links if link.failed), None)
                if failed is None or not self._rejoin(failed, ctx, exc):
                    raise
                self.strategy.recover(ctx, failed)

    def _rejoin(self, failed: Link, ctx: RoundContext, exc: Exception) -> bool:
        """Wait for a party at an endpoint to come back (it restarted and prepared its data again).

        True when it answers within ``transport.rejoin_seconds``; then fresh
        masks are agreed among all parties and the strategy replays what the
        party needs. False for in-process parties and strategies that cannot.
        """
        if not self.cfg.organisations[failed.name].endpoint or not self.strategy.can_recover:
            return False
        if not wait_for_party(failed, seconds=self.cfg.transport.rejoin_seconds):
            return False
        self._same_rows(failed.name, failed.call("describe"))
        failed.call("begin_training", self.training_id)
        self.notices.append(f"party {failed.name} failed in round {ctx.round_id} ({exc}) and rejoined")
        if self.cfg.secure_aggregation:
            self._secure_setup()  # new keys for everyone: no mask is ever reused
        return True

    def _same_rows(self, org: str, description: dict[str, Any], *, was: str | None = None) -> None:
        """The organisation still holds the rows it started the training with (by their fingerprint)."""
        same_rows(org, was if was is not None else self.descriptions[org].get("fingerprint"), description)

    def _drop(self, failed: Link, ctx: RoundContext, exc: Exception) -> None:
        """Leave ``failed`` out: fewer parties, fresh masks among the rest (privacy.on_party_failure: continue)."""
        remaining = [link for link in self.links if link is not failed]
        need = max(self.cfg.privacy.min_parties if self.cfg.secure_aggregation else 1, 1)
        if len(remaining) < need:
            raise PartyError(
                f"party {failed.name} failed in round {ctx.round_id} and {len(remaining)} parties remain; "
                f"privacy.min_parties is {self.cfg.privacy.min_parties}: {exc}"
            ) from exc
        if not self.strategy.can_drop:
            raise PartyError(
                f"party {failed.name} failed in round {ctx.round_id}; the {self.strategy.name} strategy cannot "
                f"continue without it mid-training: {exc}"
            ) from exc
        self.links = remaining
        ctx.links = remaining
        ctx.train_rows.pop(failed.name, None)
        self.dropped.append({"organisation": failed.name, "round": ctx.round_id, "reason": str(exc)})
        self.notices.append(f"party {failed.name} failed in round {ctx.round_id} and was left out: {exc}")
        if self.cfg.secure_aggregation:
            self.epoch += 1
            names = [link.name for link in remaining]
            for link in remaining:
                link.call("secure_restart", names, self.epoch)
        self.strategy.drop(ctx, failed)

    def _early_stop(self, round_id: int, global_m: dict[str, float]) -> bool:
        """Early stopping on the federated validation metric, for strategies that do not stop themselves."""
        patience = self.cfg.training.early_stopping_rounds
        key = metrics.primary(self.objective)
        if not patience or key not in global_m or not self.federated:
            return False
        value = global_m[key]
        if self._best is None or metrics.better(self.objective, value, self._best[0]):
            self._best = (value, round_id, self.strategy.num_trees(self._ctx))
            return False
        if round_id - self._best[1] >= patience:
            self.strategy.truncate(self._ctx, self._best[2])
            return True
        return False

    def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The coordinator's state after the last round: (JSON-able state, named arrays)."""
        state, arrays = self.strategy.checkpoint(self._ctx)
        return {
            "round": self.last_round,
            "strategy": self.strategy.name,
            "training_id": self.training_id,
            "best": list(self._best) if self._best else None,
            "stopped": self.stopped,
            "dropped": self.dropped,
            "fingerprints": {name: d.get("fingerprint") for name, d in self.descriptions.items()},
            "strategy_state": state,
            **({"label_totals": self.label_totals_.tolist()} if self.dp else {}),
        }, arrays

    def restore(self, state: dict[str, Any], arrays: dict[str, Any]) -> int:
        """Continue from :meth:`checkpoint` (after :meth:`start`); return the next round."""
        from fedmine.errors import ConfigError

        if state["strategy"] != self.strategy.name:
            raise ConfigError(
                f"--resume: the run trained with strategy {state['strategy']}, the config says {self.strategy.name}"
            )
        if state["dropped"]:
            names = ", ".join(d["organisation"] for d in state["dropped"])
            raise ConfigError(f"--resume: the run left out {names} after a failure; resuming it is not supported")
        for name, was in (state.get("fingerprints") or {}).items():
            if name in self.descriptions:
                self._same_rows(name, self.descriptions[name], was=was)
        self.strategy.restore(self._ctx, state["strategy_state"], arrays)
        self._best = tuple(state["best"]) if state["best"] else None
        self.stopped = bool(state["stopped"])
        self.last_round = int(state["round"])
        return self.last_round + 1

    def local_baselines(self) -> dict[str, dict[str, Any]]:
        """Each organisation trained alone with the same parameters and rounds (none when metrics stay own)."""
        if not self.shares_metrics:
            return {}
        rounds = self.cfg.training.rounds
        return {link.name: link.call("local_baseline", self.params, rounds) for link in self.links}

    def model_text(self) -> str | None:
        """The global model as LightGBM model text (None under ``local``)."""
        if not self.federated or self._ctx is None:
            return None
        return self.strategy.model_text(self._ctx)
