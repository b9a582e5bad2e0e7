"""The coordinator of a vertical federation: it aligns the customers and carries the label holder's requests.

This module owns :class:`VerticalCoordinator`. Organisations share customers,
not columns (``partition: vertical``); the label holder grows the trees
(:mod:`fedmine.party.label_holder`), and the coordinator only relays:

* :meth:`intersect`: every organisation blinds its ids, every other applies its
  key in turn, each gets back its own set under every key and the others'
  (sorted), and keeps its shared rows in the common order. The coordinator
  sees blinded values only, and learns each set's size and the intersection's;
* :meth:`start`, :meth:`run_round`, :meth:`model_text`: conversations with the
  label holder (:class:`~fedmine.party.relay.Relay`): each answer is either the
  result or requests for owners, which the coordinator carries (only the calls
  :data:`fedmine.protocol.OWNER_CALLS` allows, only to owners) and whose answers
  it brings back. What it sees on the way is listed in docs/privacy.md:
  ciphertexts, bin counts, node row sets and which rows go left.

A party at an endpoint that fails and comes back (it was restarted with the
same command) is taken up again as in horizontal (its rows' fingerprint
checked, ``transport.rejoin_seconds``): in the intersection every
organisation runs it again; after it, ``vertical_rejoin`` has the party read
its own saved state (its shared rows and bins; the label holder its loop,
trees and scores), and the interrupted call (the label holder's start, a
round, the model) is made again from its start.
:meth:`resume` does the same for every organisation when a coordinator that
stopped is resumed (``fedmine run --resume``).

It offers what the flow, the tracker and the report use of the horizontal
:class:`~fedmine.coordinator.training.Coordinator`: ``descriptions``,
``history`` of :class:`~fedmine.coordinator.training.RoundResult`,
``receipt()``, ``checkpoint()``, bytes, ``local_baselines()``.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedmine import metrics, protocol
from fedmine.config import FederationConfig
from fedmine.coordinator.link import Link
from fedmine.coordinator.training import RoundResult, declared_ranges, same_rows, wait_for_party
from fedmine.errors import ConfigError, DataError, PartyError

#: Times a round may be taken up again after parties failed and came back, before the training fails.
MAX_REJOINS_PER_ROUND = 5


def check_resume(cfg: FederationConfig, state: dict[str, Any]) -> None:
    """A checkpoint fits the config it is resumed with: the same partition, organisations and label holder.

    Raises
    ------
    ConfigError
        One line saying what the run trained with and what the config says.
    """
    was = state.get("partition", "horizontal")
    if was != cfg.partition:
        raise ConfigError(
            f"--resume: the run trained with partition: {was}, the config says partition: {cfg.partition}"
        )
    if cfg.partition != "vertical":
        return
    orgs = list(state.get("organisations") or [])
    if sorted(orgs) != sorted(cfg.organisations):
        raise ConfigError(
            f"--resume: the run trained organisations {', '.join(orgs)}; the config has {', '.join(cfg.organisations)}"
        )
    if state.get("label_holder") != cfg.label_holder:
        raise ConfigError(
            f"--resume: the run's label holder was {state.get('label_holder')}; the config says {cfg.label_holder}"
        )
    local = [o for o, spec in cfg.organisations.items() if not spec.endpoint]
    if local:
        raise ConfigError(
            f"--resume: a vertical training resumes over the organisations' party servers, which keep its state on "
            f"their own disk; organisations.{local[0]}.endpoint is not set"
        )


def sorted_points(points: np.ndarray) -> np.ndarray:
    """Blinded points sorted by value: a fully blinded set travels without its holder's row order."""
    points = np.ascontiguousarray(points, dtype=np.uint8).reshape(-1, 32)
    order = np.argsort(points.view("S32").ravel(), kind="stable")
    return points[order]


@dataclass
class VerticalCoordinator:
    """Drives a vertical training over ``parties`` (one per organisation, the label holder among them)."""

    cfg: FederationConfig
    parties: list[Any]
    history: list[RoundResult] = field(init=False, default_factory=list)
    descriptions: dict[str, dict[str, Any]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.links = {p.name: Link(p) for p in self.parties}
        self.lead = self.cfg.label_holder
        if self.lead not in self.links:
            raise ConfigError(f"the label holder {self.lead} has no party")
        self.owners = [o for o in self.links if o != self.lead]
        self.training_id = uuid.uuid4().hex
        self.dropped: list[dict[str, Any]] = []
        self.notices: list[str] = []
        self.stopped = False
        self.last_round = 0
        self.shared_rows = 0
        self.id_counts: dict[str, int] = {}
        self.fingerprints: dict[str, str | None] = {}  # each organisation's rows, when the training started
        self.psi_seconds = 0.0
        self._alone: dict[str, float] = {}
        self._trees = 0
        self._text: str | None = None
        self._model_done = False
        self.n_rows = self.n_valid = 0  # shared training and validation rows (after the intersection)

    @property
    def objective(self) -> str:
        return self.cfg.objective

    def bytes_sent(self) -> int:
        return sum(link.bytes_sent for link in self.links.values())

    def bytes_received(self) -> int:
        return sum(link.bytes_received for link in self.links.values())

    def _each(self, fn, names: list[str]) -> list:
        with ThreadPoolExecutor(max(1, len(names))) as pool:
            return list(pool.map(fn, names))

    # -- the intersection ----------------------------------------------------
    def intersect(self) -> int:
        """Private set intersection of every organisation's ids; the number of shared customers.

        A party at an endpoint that fails and comes back makes every
        organisation run the intersection again from its start.

        Raises
        ------
        DataError
            No shared customer, or fewer than ``vertical.min_shared_rows``.
        """
        return self._with_rejoin("in the intersection", self._intersect, take_up=False)

    def _intersect(self) -> int:
        t0 = time.perf_counter()
        names = list(self.links)
        for name in names:
            link = self.links[name]
            link.call("begin_training", self.training_id)
            d = link.call("describe")
            self.id_counts[name] = int(d["n_ids"])
            self.fingerprints.setdefault(name, d.get("fingerprint"))
            same_rows(name, self.fingerprints[name], d)
        blinded = dict(zip(names, self._each(lambda o: self.links[o].call("psi_blind"), names)))

        def full(o: str) -> np.ndarray:
            points = blinded[o]
            for other in names:
                if other != o:
                    points = self.links[other].call("psi_reblind", points)
            return points

        done = dict(zip(names, self._each(full, names)))
        shown = {o: sorted_points(p) for o, p in done.items()}
        counts = self._each(
            lambda o: int(self.links[o].call("psi_align", done[o], [shown[p] for p in names if p != o])), names
        )
        if len(set(counts)) != 1:
            raise PartyError(f"the organisations found different intersections: {dict(zip(names, counts))}")
        n = counts[0]
        sizes = ", ".join(f"{o} {self.id_counts[o]}" for o in names)
        if n == 0:
            raise DataError(
                f"the organisations share no customer (ids: {sizes}); check each organisation's id column "
                f"(organisations.*.id: trim, case) and that vertical.salt is the same everywhere"
            )
        minimum = self.cfg.vertical.min_shared_rows
        if n < minimum:
            raise DataError(
                f"the organisations share {n} customers (ids: {sizes}); vertical.min_shared_rows is {minimum}"
            )
        self.shared_rows = n
        self.psi_seconds = time.perf_counter() - t0
        return n

    def intersection_metrics(self) -> dict[str, float]:
        """MLflow metrics of the intersection (step 0): shared rows, seconds, ids per second, ids per organisation."""
        return {
            "intersection/shared_rows": float(self.shared_rows),
            "intersection/seconds": self.psi_seconds,
            "intersection/ids_per_second": sum(self.id_counts.values()) / max(self.psi_seconds, 1e-9),
            **{f"intersection/{org}/ids": float(n) for org, n in self.id_counts.items()},
        }

    # -- conversations with the label holder ---------------------------------
    def _converse(self, call: str, *args: Any) -> Any:
        """One conversation: the label holder's requests carried to the owners until it answers."""
        lead = self.links[self.lead]
        message = lead.call(call, *args)
        while "requests" in message:
            requests = message["requests"]
            for org, name, _, _ in requests:
                if org not in self.owners or name not in protocol.OWNER_CALLS | protocol.PREDICT_CALLS:
                    raise PartyError(
                        f"party {self.lead}: asked to carry {name!r} to {org!r}; a label holder may ask the "
                        f"feature owners ({', '.join(self.owners)}) for {', '.join(sorted(protocol.OWNER_CALLS))}"
                    )
            answers = self._each(self._carry, requests)
            message = lead.call("vertical_resume", answers)
        return message["result"]

    def _carry(self, request: list) -> Any:
        org, name, args, kwargs = request
        return self.links[org].call(name, *args, **kwargs)

    def start(self) -> None:
        """The intersection, then the label holder's key, the joined bins and the initial score."""
        if not self.shared_rows:
            self.intersect()
        d = self.links[self.lead].call("describe")
        self.descriptions = {self.lead: d}
        self.n_rows, self.n_valid = int(d["n_rows"]), int(d["n_valid"])
        begin = (self._params(), declared_ranges(self.cfg))
        self._with_rejoin("at the start", lambda: self._converse("vertical_begin", *begin))

    def _params(self) -> dict[str, Any]:
        return self.cfg.training.engine_params(self.objective, self.cfg.num_class, metrics.primary(self.objective))

    # -- parties that restarted, a coordinator that resumes ------------------
    def _with_rejoin(self, when: str, work, *, take_up: bool = True):
        """``work()``; a party at an endpoint that fails meanwhile and comes back is taken up, and work runs again.

        ``when`` says where in the training (for the notice); ``take_up=False``:
        the parties that came back are not asked to rejoin (the work starts over).
        """
        back: dict[str, str] = {}  # organisations that came back -> why they failed
        for attempt in range(MAX_REJOINS_PER_ROUND + 1):
            try:
                if back:
                    if take_up:
                        self._take_up(list(back), self.last_round)
                    self.notices += [f"party {o} failed {when} ({why}) and rejoined" for o, why in back.items()]
                    back = {}
                return work()
            except PartyError as exc:
                failed = [link for link in self.links.values() if link.failed]
                if (
                    not failed
                    or attempt == MAX_REJOINS_PER_ROUND
                    or any(not self.cfg.organisations[link.name].endpoint for link in failed)
                ):
                    raise
                for link in failed:
                    if not wait_for_party(link, seconds=self.cfg.transport.rejoin_seconds):
                        raise
                    same_rows(link.name, self.fingerprints.get(link.name), link.call("describe"))
                    back.setdefault(link.name, str(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_up(self, names: list[str], rounds: int) -> dict[str, Any] | None:
        """Organisations ``names`` take the training up again after ``rounds`` rounds from their own disks.

        Owners first (they answer the label holder's bin requests); the label
        holder's answer (its progress) if it is among them.
        """
        args = (self.training_id, int(rounds), self._params(), declared_ranges(self.cfg))
        for name in [n for n in names if n != self.lead]:
            shared = int(self.links[name].call("vertical_rejoin", *args)["result"]["shared_rows"])
            if self.shared_rows and shared != self.shared_rows:
                raise PartyError(
                    f"party {name}: rejoined with {shared} shared rows; the training has {self.shared_rows}"
                )
        if self.lead not in names:
            return None
        result = self._converse("vertical_rejoin", *args)
        if self.shared_rows and int(result["shared_rows"]) != self.shared_rows:
            raise PartyError(
                f"party {self.lead}: rejoined with {result['shared_rows']} shared rows; "
                f"the training has {self.shared_rows}"
            )
        self._trees, self._alone = int(result["trees"]), dict(result["alone"])
        self.stopped, self._model_done = bool(result["done"]), False
        return result

    def resume(self, state: dict[str, Any]) -> int:
        """Continue the training of a checkpoint (:meth:`checkpoint`) over the same party servers; the next round.

        Every organisation takes the training up from its own disk (no new
        intersection); its rows must be those it started with.
        """
        check_resume(self.cfg, state)
        self.training_id = str(state["training_id"])
        self.shared_rows = int(state["shared_rows"])
        self.last_round = int(state["round"])
        was = state.get("fingerprints") or {}
        for name, link in self.links.items():
            d = link.call("describe")
            same_rows(name, was.get(name), d)
            self.fingerprints[name] = d.get("fingerprint")
            self.id_counts[name] = int(d["n_ids"])
        result = self._take_up(list(self.links), self.last_round)
        assert result is not None  # the label holder is among the links
        d = self.links[self.lead].call("describe")
        self.descriptions = {self.lead: d}
        self.n_rows, self.n_valid = int(d["n_rows"]), int(d["n_valid"])
        self.history.append(  # the round the checkpoint recorded, as the label holder restored it
            RoundResult(
                round_id=self.last_round,
                global_metrics=dict(result["metrics"]),
                org_metrics={self.lead: dict(result["metrics"])},
                seconds=0.0,
                bytes_sent=0,
                bytes_received=0,
                trees=self._trees,
                stopped=self.stopped,
            )
        )
        return self.last_round + 1

    def run_round(self, round_id: int) -> RoundResult:
        """One round grown by the label holder; the vertical model's and the label holder's own validation metrics."""
        if self.stopped:
            raise RuntimeError("training has stopped; no further round")
        t0 = time.perf_counter()
        sent0, recv0 = self.bytes_sent(), self.bytes_received()
        org_sent0 = {o: link.bytes_sent for o, link in self.links.items()}
        result = self._with_rejoin(f"in round {round_id}", lambda: self._converse("vertical_round"))
        self._trees = int(result["trees"])
        self._alone = dict(result["alone"])
        self.stopped = bool(result["done"])
        self._model_done = False
        stats = {f"eval/alone/{k}": float(v) for k, v in result["alone"].items()}
        key = metrics.primary(self.objective)
        if key in result["metrics"] and key in result["alone"]:
            sign = 1.0 if metrics.higher_is_better(key) else -1.0
            stats[f"gain/round/{key}"] = sign * (float(result["metrics"][key]) - float(result["alone"][key]))
        stats["train/shared_rows"] = float(self.shared_rows)
        out = RoundResult(
            round_id=round_id,
            global_metrics=dict(result["metrics"]),
            org_metrics={self.lead: dict(result["metrics"])},
            seconds=time.perf_counter() - t0,
            bytes_sent=self.bytes_sent() - sent0,
            bytes_received=self.bytes_received() - recv0,
            trees=self._trees,
            org_bytes_sent={o: link.bytes_sent - org_sent0[o] for o, link in self.links.items()},
            stats=stats,
            stopped=self.stopped,
        )
        self.history.append(out)
        self.last_round = round_id
        return out

    def model_text(self) -> str | None:
        """LightGBM model text when every organisation publishes its thresholds; None while they keep them."""
        if not self._model_done:
            publish = bool(self.cfg.vertical.publish_thresholds)

            def collect() -> dict[str, Any]:
                return self._converse("vertical_model", publish)

            self._text = self._with_rejoin("while the model was collected", collect)["text"]
            self._model_done = True
        return self._text

    def predict_raw(self, ids: list[Any]) -> np.ndarray:
        """Raw scores of customers named by id, shape (n, n_trees_per_round): the label holder walks the trees.

        Its model is the training's in its memory, else the latest finished
        training's on its disk (a party server started again after training).
        """
        return np.asarray(self._converse("vertical_predict", list(ids)), dtype=np.float64)

    # -- what the flow, the tracker and the report read ---------------------
    def local_baselines(self) -> dict[str, dict[str, Any]]:
        """The label holder alone: the engine on its own columns of the same shared rows, round for round."""
        return {
            self.lead: {"metrics": dict(self._alone), "curve": {}, "rows_train": self.descriptions[self.lead]["n_rows"]}
        }

    def receipt(self):
        """What each organisation and the coordinator learned (docs/privacy.md)."""
        from fedmine.privacy.receipt import PrivacyReceipt, disclosed_fields

        learned = {
            "partition": "vertical",
            "shared_rows": int(self.shared_rows),
            "learned.coordinator": (
                "every organisation's id count and the intersection size; blinded ids; ciphertexts; bin counts "
                "of the owners' features; each requested node's rows and the rows going left at every split"
            ),
            f"learned.{self.lead}": (
                "its shared rows; the exact histogram sums of every owner's features over every node it asked "
                "for; the rows going left at every split"
                + ("; the owners' thresholds and feature ranges" if self.cfg.vertical.publish_thresholds else "")
            ),
        }
        for o in self.owners:
            learned[f"learned.{o}"] = "its shared rows; the rows of every node asked of it; the rows going left"
        answered = set().union(*(link.answered for link in self.links.values()))
        return PrivacyReceipt(
            secure_aggregation=False,
            n_parties=len(self.links),
            parameters=learned,
            disclosed=tuple(disclosed_fields(answered)),
        )

    def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The coordinator holds no model in vertical federation: its state is the round reached and who trained.

        The label holder keeps the loop, trees and scores of every round on its
        own disk (the last two), so :meth:`resume` takes it up from the round
        recorded here.
        """
        return {
            "round": self.last_round,
            "partition": "vertical",
            "training_id": self.training_id,
            "organisations": list(self.links),
            "label_holder": self.lead,
            "shared_rows": int(self.shared_rows),
            "fingerprints": dict(self.fingerprints),
            "stopped": self.stopped,
        }, {}
