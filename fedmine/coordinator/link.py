"""The coordinator's end of the conversation with each organisation.

This module owns :class:`Link`, through which every call of the protocol table
reaches one party (in process or behind a Flight server, both answer
``call(name, *args, **kwargs)``), and :class:`EngineProxy`, the party as the
engine's booster sees it, and :class:`BatchedGroup`, all of them as one engine
party in as few round trips as the data allows. A :class:`Link` counts bytes,
round trips and seconds and is the one place where a party's failure becomes a
:class:`~fedmine.errors.PartyError`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numba
import numpy as np

from fedmine import protocol
from fedmine.errors import PartyError
from fedmine.gbdt.state import EngineGroup


def payload_bytes(value: Any) -> int:
    """Bytes a value takes on the wire (arrays by buffer size, text as UTF-8, scalars 8).

    Containers count their items (a dict its keys and values), records (bin
    mapper, trees, parameters) their fields. One pass over an explicit stack:
    it runs for every call, split messages of a tree included.
    """
    total = 0
    stack = [value]
    pop, push = stack.pop, stack.extend
    while stack:
        v = pop()
        t = type(v)
        if t is int or t is float or t is bool:
            total += 8
        elif v is None:
            continue
        elif t is tuple or t is list:
            push(v)
        elif isinstance(v, np.ndarray):
            total += int(v.nbytes)
        elif isinstance(v, (bytes, bytearray)):
            total += len(v)
        elif isinstance(v, str):
            total += len(v.encode())
        elif isinstance(v, dict):
            push(v.keys())
            push(v.values())
        elif isinstance(v, (list, tuple)):
            push(v)
        elif hasattr(v, "__dict__"):
            stack.append(vars(v))
        else:
            total += 8
    return total


#: Organisations in the coordinator's process with fewer training rows each answer in turn, in the
#: caller's thread: their numba kernels already use every core, and a thread per organisation only
#: contends for the interpreter lock (26k rows over 4: train_seconds 2.0-2.7 s in turn, 4.8-5.8 s on
#: 4 threads; 250k rows: 1.0-1.1 s against 1.5-1.6 s; 1M rows: 2 threads are best).
IN_TURN_ROWS = 1 << 17


def party_threads(links: list[Link], n_rows: int) -> int:
    """How many of ``links``' parties to ask at once, ``n_rows`` being the federation's training rows.

    All of them when any is not in this process (a server's or a cluster's round trips overlap);
    for parties in this process, one (in turn) below :data:`IN_TURN_ROWS` rows each on average,
    else one per core numba's kernels use (``numba.get_num_threads()``, as for an :class:`EngineGroup`).
    """
    if not links:
        return 1
    if not all(getattr(link.party, "in_process", False) for link in links):
        return len(links)
    if n_rows < IN_TURN_ROWS * len(links):
        return 1
    return min(len(links), numba.get_num_threads())  # the cores the engine's kernels use (EngineGroup's default)


class Link:
    """The coordinator's end of the conversation with one party.

    Counts bytes both ways, round trips (:attr:`calls`: a ``batch`` of
    several calls is one) and the seconds spent waiting for answers; it is
    the one place where a party's failure becomes a :class:`PartyError`.
    Safe to use from several threads.
    """

    def __init__(self, party: Any) -> None:
        self.party = party
        self.name = party.name
        self.bytes_sent = 0  # party -> coordinator
        self.bytes_received = 0  # coordinator -> party
        self.calls = 0
        self.seconds = 0.0
        self.failed = False  # the party failed to answer (transport or party error)
        self.answered: set[str] = set()  # calls this party answered (the privacy receipt lists what they disclose)
        self._lock = threading.Lock()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One call of the protocol table to this party; its answer (bytes and seconds counted)."""
        t0 = time.perf_counter()
        sent = payload_bytes(list(args)) + payload_bytes(kwargs)
        try:
            answer = self.party.call(method, *args, **kwargs)
        except PartyError:
            self.failed = True
            raise
        except Exception as exc:  # the one conversion point for party failures
            from fedmine.errors import FedmineError

            if isinstance(exc, FedmineError):  # bad input found by the party: keep its message
                raise
            self.failed = True
            raise PartyError(f"party {self.name}: {method} failed: {type(exc).__name__}: {exc}") from exc
        size = payload_bytes(answer)
        with self._lock:
            self.calls += 1  # one round trip, a batch included
            if method == "batch":  # what the receipt lists is what each part answered (the party checked them)
                self.answered.update(part[0] for part in (args[0] if args else kwargs["parts"]))
            else:
                self.answered.add(method)
            self.bytes_received += sent
            self.bytes_sent += size
            self.seconds += time.perf_counter() - t0
        return answer


class EngineProxy:
    """A party as the engine sees it: each engine call of the protocol table goes through the party's :class:`Link`."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def __getattr__(self, name: str):
        entry = protocol.CALLS.get(name)
        if name.startswith("_") or entry is None or entry.side != protocol.ENGINE:
            raise AttributeError(name)
        return lambda *args, **kwargs: self.link.call(name, *args, **kwargs)

    def describe(self) -> dict[str, Any]:
        return self.link.call("describe")


class BatchedGroup(EngineGroup):
    """The organisations behind their links as one engine party, in as few round trips as the data allows.

    A call whose answer the engine does not need yet waits in a queue and
    travels with the next call that has one, in one ``batch`` per
    organisation (the protocol table's ``batch``: each part checked and
    masked as if sent alone)::

        apply_split ...                 queued (the splits a histogram does not wait for)
        begin_round(it, trees)          queued when the objective bounds its gradients a priori
        start_trees(it, scales, ...)    queued
        histograms(node_ids)            one round trip: the queue, the histograms, and (after the
                                        model changed) the evaluation calls, answered together

    so a tree costs one round trip per histogram exchange and nothing else
    when the trainer asks for the next round's roots as soon as a round ends
    (:class:`~fedmine.gbdt.booster.Trainer` with ``prefetch=True``). Every
    organisation's round trip is in flight at once (one thread each), unless
    ``n_threads`` says otherwise (:func:`party_threads`). The
    parties' state and answers are those of the calls sent one by one, in
    order, so the trees are the same bits.

    Parameters
    ----------
    parties : list of EngineProxy
    n_threads : int, optional
        Organisations asked at once (all of them by default).
    evaluate : sequence of str
        Organisation calls that evaluate the parties' model (``evaluate``,
        ``own_metrics``): sent with the first round trip after the model
        changed; :meth:`take_evaluation` gives their answers.
    """

    def __init__(self, parties: list[Any], *, n_threads: int | None = None, evaluate: tuple[str, ...] = ()) -> None:
        super().__init__(parties, n_threads=n_threads if n_threads is not None else max(len(parties), 1))
        self.evaluate_calls = tuple(evaluate)
        self._queue: list[tuple[str, tuple, dict]] = []
        self._fixed_bounds: np.ndarray | None = None  # a priori gradient bounds: begin_round needs no answer
        self._due = False  # the parties' model changed since the last evaluation
        self._evaluation: tuple[Any, dict[str, Any]] | None = None

    def __getattr__(self, name: str):
        """Engine calls of the protocol table without a method here: sent with the queue, answers merged."""
        entry = protocol.CALLS.get(name)
        if name.startswith("_") or entry is None or entry.side != protocol.ENGINE:
            raise AttributeError(f"{type(self).__name__} has no call {name!r}")
        return lambda *args, **kwargs: self._send([(name, args, kwargs)])[-1]

    # -- the round trip ------------------------------------------------------
    def _send(self, parts: list[tuple[str, tuple, dict]], *, evaluate: bool = False) -> list[Any]:
        """The queue and ``parts`` in one round trip per organisation (all at once); the merged answers of ``parts``."""
        parts = self._queue + parts
        self._queue = []
        n_eval = 0
        if evaluate or self._due:
            parts += [(name, (), {}) for name in self.evaluate_calls]
            n_eval = len(self.evaluate_calls)
        if not parts:
            return []
        if len(parts) == 1:
            name, args, kwargs = parts[0]
            answers = [[a] for a in self.source.map(lambda p: p.link.call(name, *args, **kwargs))]
        else:
            answers = self.source.map(lambda p: p.link.call("batch", parts))
        names = [name for name, _, _ in parts]
        src = self.source
        for j, name in enumerate(names):
            if name == "histograms":  # what crossed the boundary, as SumOfSources counts it
                src.nodes_ += int(np.asarray(parts[j][1][0]).size) * len(answers)
                src.bytes_to_coordinator_ += sum(int(np.asarray(a[j]).nbytes) for a in answers)
        if n_eval:
            links = [p.link for p in self.source.sources]
            got = dict(zip(names[-n_eval:], zip(*[a[-n_eval:] for a in answers])))
            summed = protocol.merge("evaluate", got["evaluate"]) if "evaluate" in got else None
            own = {link.name: a for link, a in zip(links, got.get("own_metrics", ()))}
            self._evaluation = (summed, own)
            self._due = False
            names, answers = names[:-n_eval], [a[:-n_eval] for a in answers]
        if "finish" in names:  # the training's last call: its threads end
            self.source.close()
        return protocol.merge_parts(names, answers) if names else []

    def take_evaluation(self) -> tuple[Any, dict[str, Any]] | None:
        """(summed ``evaluate``, {organisation: ``own_metrics``}) of the parties' current model; None without them.

        Answered by the last round trip if the model has not changed since,
        else asked for now (with whatever is queued).
        """
        if not self.evaluate_calls:
            return None
        if self._due or self._evaluation is None or self._queue:
            self._send([], evaluate=True)
        out, self._evaluation = self._evaluation, None
        return out

    # -- the engine's calls --------------------------------------------------
    def configure(self, params, init_scores, **clips) -> None:
        from fedmine.gbdt.objectives import make_objective

        self._send([("configure", (params, init_scores), clips)])
        obj = make_objective(
            params.objective,
            num_class=params.num_class,
            poisson_max_delta_step=params.poisson_max_delta_step,
            tweedie_variance_power=params.tweedie_variance_power,
        )
        known = not clips and obj.grad_bound is not None and obj.hess_bound is not None
        self._fixed_bounds = np.tile([obj.grad_bound, obj.hess_bound], (obj.n_trees, 1)) if known else None

    def begin_round(self, iteration, trees):
        self._due = self._due or bool(trees)
        if self._fixed_bounds is not None:  # its answer is known: it travels with the next request
            self._queue.append(("begin_round", (iteration, trees), {}))
            return self._fixed_bounds.copy()
        return self._send([("begin_round", (iteration, trees), {})])[-1]

    def replay(self, rounds):
        self._due = self._due or bool(rounds)
        return self._send([("replay", (rounds,), {})])[-1]

    def start_trees(self, iteration, grad_scales, hess_scales, *, count_bits, max_nodes):
        self._count_bits = int(count_bits)
        kwargs = {"count_bits": count_bits, "max_nodes": max_nodes}
        self._queue.append(("start_trees", (iteration, grad_scales, hess_scales), kwargs))

    def apply_split(self, *args):
        self._queue.append(("apply_split", tuple(args), {}))

    def histograms(self, node_ids):
        """The summed histograms, in the full layout; the queue travels with the request."""
        from fedmine.gbdt.histogram import expand_fields

        node_ids = np.asarray(node_ids, dtype=np.int64).ravel()
        src = self.source
        t0 = time.perf_counter()
        total = self._send([("histograms", (node_ids,), {})])[-1]
        src.party_seconds_ += time.perf_counter() - t0  # their compute, the transport and the sum
        src.exchanges_ += 1
        src.bytes_to_parties_ += int(node_ids.nbytes) * len(src.sources)
        if total.ndim == 3:  # compact; two fields: (grad, hess << count_bits | count), exact in the sum
            bits = self._count_bits if total.shape[-1] == 2 else 0
            return expand_fields(total, self._cell_index, self._cells.shape, bits)
        return total

    def finish(self, trees):
        """Apply the final trees: with the evaluation that follows (trees), or now (a training that stops)."""
        self._queue.append(("finish", (trees,), {}))
        if trees:
            self._due = True
            if self.evaluate_calls:
                return
        self._send([])

    def reset(self):
        self._queue, self._due, self._evaluation = [], False, None
        super().reset()

    def set_noise(self, variances, *, n_parties, seed=None):
        if self._queue:
            self._send([])
        super().set_noise(variances, n_parties=n_parties, seed=seed)
