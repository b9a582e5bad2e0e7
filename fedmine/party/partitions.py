"""An organisation's rows as partitions on its Dask cluster, and the engine state that fans out to them.

This module owns

* :class:`PartitionPlan`: what a worker needs to build one partition (plain
  data: the source's slice, the federation config, which of its rows are
  validation rows, the position of its first training row);
* :class:`PartitionState`: one partition in a worker's memory, a Dask actor.
  It reads its slice a batch at a time, harmonises each batch with the
  organisation's mapping and holds an :class:`~fedmine.gbdt.state.EngineState`
  of its rows, binned there with the federation's bins, across rounds;
* :class:`PartitionedState`: the party's engine state. It answers the engine
  calls of the protocol table as an ``EngineState`` of all the rows would:
  each call goes to every partition and the answers merge by the table's rule
  (integer sums, maxima, ranges), on the party, before the party masks them.
  A partition's rows are the organisation's rows in order, so row ids,
  bagging and scores are those of the single process; sums of integers do
  not depend on the partition, so the model is the same bits.

Faults: the calls that changed the partitions are kept in a journal. A
partition whose worker is lost is read again from the source on a worker
that is alive, checked against its digest, and the journal replayed; the
call then goes on. If that fails the party fails with one line naming the
partition; it never answers from different rows.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmine import connectors, metrics, protocol
from fedmine.errors import DataError, FedmineError, PartyError
from fedmine.gbdt.state import EngineState
from fedmine.party.organisation import TrainValidRows, fingerprint, global_row_ids
from fedmine.privacy.noise import add_noise_to_cells, noise_cells, noise_share
from fedmine.protocol import CREATED, ProtocolError
from fedmine.schema import harmonise

#: Engine calls that leave the partitions as they were (never journalled, safe to ask again).
READ_ONLY = frozenset({"describe", "feature_ranges", "grid_counts", "label_stats", "histograms", "metric_stats"})


@dataclass(frozen=True)
class PartitionPlan:
    """One partition of an organisation, as the worker that builds it needs it.

    Attributes
    ----------
    org : the organisation.
    source : its source, for messages.
    part : the slice of the source (:class:`fedmine.connectors.Partition`).
    cfg : the federation config (the organisation's mapping, the label, the classes).
    valid : ndarray of shape (part.rows,), bool
        Which of its rows are validation rows (the organisation's seeded split).
    first_row : int
        Index of its first training row among the organisation's training rows.
    """

    org: str
    source: str
    part: Any
    cfg: Any
    valid: np.ndarray
    first_row: int


def dp_label_part(y: np.ndarray, cfg: Any) -> np.ndarray | None:
    """Under ``privacy.epsilon``: the label part of the DP label totals (:func:`fedmine.privacy.dp.label_part`)."""
    if cfg.privacy.epsilon is None:
        return None
    from fedmine.privacy.dp import label_part

    return label_part(y, cfg.objective, num_class=cfg.num_class, label_range=cfg.privacy.label_range)


def label_sums(y: np.ndarray, objective: str, num_class: int) -> np.ndarray:
    """What ``describe`` answers of the training labels: class counts (multiclass) or the label sum."""
    if objective == "multiclass":
        return np.bincount(y.astype(np.int64), minlength=num_class).astype(np.float64)
    return np.array([float(y.sum())])


class PartitionState:
    """One partition of an organisation's rows in a Dask worker's memory (created as an actor).

    Parameters
    ----------
    plan : PartitionPlan

    Attributes
    ----------
    state_ : EngineState or None
        The partition's engine state, once :meth:`load` has run.
    """

    def __init__(self, plan: PartitionPlan) -> None:
        self.plan = plan
        self.state_: EngineState | None = None
        self.seconds_: dict[str, float] = {}  # engine call -> seconds spent in it here
        self.cpu_seconds_: dict[str, float] = {}  # engine call -> CPU seconds of this worker process in it
        self.calls_: dict[str, int] = {}

    def load(self) -> dict[str, Any]:
        """Read, harmonise and split the partition's rows, a batch at a time, into its engine state.

        Returns
        -------
        dict
            ``n_train``, ``n_valid``, ``label_sums``, ``dp_label_part`` (under
            ``privacy.epsilon``: its part of the DP label totals), ``y_valid`` (its
            validation labels), ``report`` (harmonisation counts), ``digest``
            (of its rows) and ``worker`` (process id).
        """
        p = self.plan
        cfg, n = p.cfg, p.part.rows
        valid = np.asarray(p.valid, dtype=bool)
        n_valid = int(valid.sum())
        n_features = len(cfg.features)
        X_train = np.empty((n - n_valid, n_features), dtype=np.float64)
        X_valid = np.empty((n_valid, n_features), dtype=np.float64)
        y_train = np.empty(n - n_valid, dtype=np.float64)
        y_valid = np.empty(n_valid, dtype=np.float64)
        reports = []
        at = it = iv = 0
        for frame in connectors.read_partition(p.part, source=p.source, org=p.org):
            if len(frame) == 0:
                continue
            if at + len(frame) > n:
                raise DataError(self._changed(f"it has more than the {n} rows it had when the training was planned"))
            h = harmonise(frame, cfg, p.org)
            del frame
            m = valid[at : at + h.rows]
            k = int(m.sum())
            X_valid[iv : iv + k], y_valid[iv : iv + k] = h.X[m], h.y[m]
            X_train[it : it + h.rows - k], y_train[it : it + h.rows - k] = h.X[~m], h.y[~m]
            at, it, iv = at + h.rows, it + h.rows - k, iv + k
            reports.append(h.report)
        if at != n:
            raise DataError(self._changed(f"it has {at} rows, {n} when the training was planned"))
        rows = TrainValidRows(X_train, y_train, X_valid, y_valid)
        self.state_ = EngineState(
            X_train,
            y_train,
            row_ids=global_row_ids(p.org, X_train.shape[0], start=p.first_row),
            X_valid=X_valid,
            y_valid=y_valid,
        )
        from fedmine.schema import merge_reports

        return {
            "n_train": int(X_train.shape[0]),
            "n_valid": n_valid,
            "label_sums": label_sums(y_train, cfg.objective, cfg.num_class),
            "label_sum_vector": metrics.exact_sum_vector(y_train),
            "dp_label_part": dp_label_part(y_train, cfg),
            "y_valid": y_valid,
            "report": merge_reports(reports),
            "digest": fingerprint(rows),
            "worker": os.getpid(),
        }

    def _changed(self, what: str) -> str:
        p = self.plan
        return f"organisation {p.org}: partition {p.part.index} ({p.part.label}) of {p.source} changed: {what}"

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        """One engine call of the protocol table on this partition's rows."""
        t0, c0 = time.perf_counter(), time.process_time()
        answer = getattr(self.state_, name)(*args, **kwargs)
        self.seconds_[name] = self.seconds_.get(name, 0.0) + time.perf_counter() - t0
        self.cpu_seconds_[name] = self.cpu_seconds_.get(name, 0.0) + time.process_time() - c0
        self.calls_[name] = self.calls_.get(name, 0) + 1
        return answer

    def stats(self) -> dict[str, Any]:
        """Rows held here and, per engine call, how often it came, its wall and CPU seconds (benchmarks, docs)."""
        n = 0 if self.state_ is None else int(self.state_.X.shape[0])
        return {"rows": n, "calls": dict(self.calls_), "seconds": dict(self.seconds_), "cpu": dict(self.cpu_seconds_)}

    def run(self, journal: list[tuple[str, tuple, dict]]) -> None:
        """Replay calls in order (a partition rebuilt after its worker was lost)."""
        for name, args, kwargs in journal:
            getattr(self.state_, name)(*args, **kwargs)

    def scores_valid(self) -> np.ndarray | None:
        """Raw scores of the partition's validation rows, shape (n_trees, n_valid), once configured."""
        return getattr(self.state_, "scores_valid_", None)

    def pid(self) -> int:
        """The worker process holding this partition."""
        return os.getpid()


def _lost(exc: BaseException) -> bool:
    """Whether an exception says a partition's worker is gone (not that the engine refused the call)."""
    if isinstance(exc, (FedmineError, ProtocolError, TypeError, ValueError, KeyError, IndexError)):
        return False
    return isinstance(exc, (OSError, TimeoutError, RuntimeError)) or type(exc).__name__ == "CancelledError"


class PartitionedState:
    """The engine state of an organisation whose rows are partitions on a Dask cluster.

    Parameters
    ----------
    client : distributed.Client
        The organisation's cluster.
    plans : list of PartitionPlan
        Its partitions, in the order of its rows.
    org : str

    Attributes
    ----------
    n_features, max_bin : as an :class:`EngineState`'s (``max_bin`` once the bins are set).
    bins : ndarray or None
        The bins per feature once :meth:`set_bins` has run (None before, as an
        ``EngineState``'s binned rows).
    stage_ : str
        The engine stage (the partitions are in the same one).
    rebuilt_ : list of int
        Partitions rebuilt after their worker was lost, in order.
    """

    def __init__(self, client: Any, plans: list[PartitionPlan], *, org: str) -> None:
        if not plans:
            raise DataError(f"organisation {org}: its source has no rows")
        self.client = client
        self.plans = list(plans)
        self.org = org
        self.n_features = len(plans[0].cfg.features)
        self.max_bin = 0
        self.bins: np.ndarray | None = None
        self.stage_ = CREATED
        self.rebuilt_: list[int] = []
        self._actors: list[Any] = [None] * len(self.plans)
        self._digests: list[str] = []
        self._journal: list[tuple[str, tuple, dict]] = []
        self._noise: tuple[np.ndarray, int, Any] | None = None
        self._noise_cells: np.ndarray | None = None
        self._count_bits = 0
        self.n_rows = 0

    # --- the partitions -------------------------------------------------
    def place(self) -> list[Any]:
        """An actor for every partition, spread over the workers in turn (nothing read yet); the actors."""
        workers = sorted(self.client.scheduler_info(n_workers=-1)["workers"])
        if not workers:
            raise PartyError(f"party {self.org}: its Dask cluster has no workers")
        futures = [self._submit(i, workers[i % len(workers)]) for i in range(len(self.plans))]
        self._actors = [f.result() for f in futures]
        return list(self._actors)

    def _submit(self, i: int, worker: str | None = None) -> Any:
        kwargs: dict[str, Any] = {"workers": [worker]} if worker is not None else {}
        key = f"fedmine-{self.org}-partition-{i}-{os.urandom(4).hex()}"
        return self.client.submit(PartitionState, self.plans[i], actor=True, pure=False, key=key, **kwargs)

    def loaded(self, infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record what the partitions' loads answered (their digests, their rows); ``infos`` back."""
        self._digests = [info["digest"] for info in infos]
        self.n_rows = sum(info["n_train"] for info in infos)
        return infos

    def load(self) -> list[dict[str, Any]]:
        """Build every partition on the workers (:meth:`place`, then each partition's load); what each load said."""
        actors = self.place()
        return self.loaded([f.result() for f in [a.load() for a in actors]])

    def digest(self) -> str:
        """A digest of the organisation's rows: of its partitions' digests, in order."""
        h = hashlib.sha256(b"fedmine partitioned rows v1")
        for d in self._digests:
            h.update(d.encode())
        return h.hexdigest()[:32]

    def _label(self, i: int) -> str:
        part = self.plans[i].part
        return f"partition {i} ({part.label})"

    def _rebuild(self, lost: list[int], why: BaseException) -> None:
        """Partitions ``lost`` read again from the source on live workers, checked, the journal replayed."""
        for attempt in range(2):
            try:
                actors = {i: f.result() for i, f in {i: self._submit(i) for i in lost}.items()}
                infos = {i: a.load() for i, a in actors.items()}
                for i, future in infos.items():
                    digest = future.result()["digest"]
                    if digest != self._digests[i]:
                        raise PartyError(
                            f"party {self.org}: {self._label(i)} was lost with its worker and its source has "
                            f"changed since the training started; it cannot be rebuilt with the same rows"
                        )
                for f in [a.run(self._journal) for a in actors.values()]:
                    f.result()
            except PartyError:
                raise
            except Exception as exc:
                if attempt == 1 or not _lost(exc):  # a source that cannot be read again fails here too
                    names = ", ".join(self._label(i) for i in lost)
                    raise PartyError(
                        f"party {self.org}: {names} lost with its worker ({type(why).__name__}: {why}) "
                        f"could not be rebuilt: {type(exc).__name__}: {' '.join(str(exc).split())}"
                    ) from exc
                continue
            for i, a in actors.items():
                self._actors[i] = a
            self.rebuilt_ += lost
            return

    def _ask(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` of every partition's actor, in partition order; lost partitions rebuilt, asked again."""
        futures = [getattr(a, method)(*args) for a in self._actors]
        answers: list[Any] = [None] * len(futures)
        lost, why = [], None
        for i, f in enumerate(futures):
            try:
                answers[i] = f.result()
            except Exception as exc:
                if not _lost(exc):
                    raise
                lost.append(i)
                why = exc
        if lost:
            self._rebuild(lost, why)  # type: ignore[arg-type]
            for i in lost:
                answers[i] = getattr(self._actors[i], method)(*args).result()
        return answers

    def _fan(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        """One engine call on every partition (the stage checked here first); journalled if it changes them."""
        self._enter(name)
        answers = self._ask("call", name, args, kwargs)
        if name == "split_histograms":  # a rebuilt partition needs the splits, not the histograms
            self._journal += [("apply_split", tuple(split), {}) for split in args[0]]
        elif name not in READ_ONLY:
            self._journal.append((name, args, kwargs))
        return answers

    def _enter(self, name: str) -> None:
        entry = protocol.call(name)
        if not entry.accepts(self.stage_):
            raise ProtocolError(f"{name} is not accepted in stage {self.stage_!r}; it needs one of {list(entry.needs)}")
        if entry.leads_to is not None:
            self.stage_ = entry.leads_to

    def actors(self) -> list[Any]:
        """The partitions' actors, in order (after :meth:`place`)."""
        return list(self._actors)

    def stats(self) -> list[dict[str, Any]]:
        """Each partition's :meth:`PartitionState.stats`, in order."""
        return self._ask("stats")

    def workers(self) -> list[int]:
        """The process id of the worker holding each partition."""
        return self._ask("pid")

    def close(self) -> None:
        """Let the partitions go (the workers free their memory)."""
        self._actors = []

    # --- the engine calls -----------------------------------------------
    def describe(self) -> dict:
        """Rows, validation rows and features, as an ``EngineState`` of all the rows answers."""
        ds = self._ask("call", "describe", (), {})
        return {
            "n_rows": sum(d["n_rows"] for d in ds),
            "n_valid": sum(d["n_valid"] for d in ds),
            "n_features": self.n_features,
        }

    def feature_ranges(self) -> np.ndarray:
        return protocol.merge("feature_ranges", self._fan("feature_ranges"))  # type: ignore[no-any-return]

    def grid_counts(self, grids: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        return protocol.merge("grid_counts", self._fan("grid_counts", grids, categorical))  # type: ignore[no-any-return]

    def set_bins(self, mapper: Any, *, parallel: bool = True) -> None:
        self._fan("set_bins", mapper, parallel=parallel)
        self.bins = np.asarray(mapper.n_bins)
        self.max_bin = int(mapper.max_bin)
        self._noise_cells = noise_cells(mapper.n_bins, mapper.max_bin)

    def configure(self, params: Any, init_scores: np.ndarray, **clips: Any) -> None:
        self._fan("configure", params, init_scores, **clips)
        self._noise = None

    def label_stats(self, params: Any) -> np.ndarray:
        return protocol.merge("label_stats", self._fan("label_stats", params))  # type: ignore[no-any-return]

    def begin_round(self, iteration: int, trees: Any) -> np.ndarray:
        return protocol.merge("begin_round", self._fan("begin_round", iteration, trees))  # type: ignore[no-any-return]

    def replay(self, rounds: Any) -> np.ndarray:
        return protocol.merge("replay", self._fan("replay", rounds))  # type: ignore[no-any-return]

    def start_trees(self, iteration: int, grad_scales: Any, hess_scales: Any, *, count_bits: int, max_nodes: int):
        self._fan("start_trees", iteration, grad_scales, hess_scales, count_bits=count_bits, max_nodes=max_nodes)
        self._count_bits = int(count_bits)

    def _noised(self, total: np.ndarray) -> np.ndarray:
        if self._noise is None:
            return total
        variances, n_parties, rng = self._noise
        return add_noise_to_cells(total, self._noise_cells, variances, n_parties=n_parties, rng=rng)

    def histograms(self, node_ids: np.ndarray) -> np.ndarray:
        """The nodes' histograms summed over the partitions (int64, exact), plus this party's noise share if on."""
        return self._noised(protocol.merge("histograms", self._fan("histograms", node_ids)))

    def split_histograms(self, splits: Any, node_ids: np.ndarray) -> np.ndarray:
        self._enter("histograms")  # as EngineState: the answer is a histograms answer
        return self._noised(protocol.merge("split_histograms", self._fan("split_histograms", splits, node_ids)))

    def apply_split(self, *split: Any) -> None:
        self._fan("apply_split", *split)

    def finish(self, trees: Any) -> None:
        self._fan("finish", trees)

    def metric_stats(self, metric: str) -> np.ndarray:
        return protocol.merge("metric_stats", self._fan("metric_stats", metric))  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._fan("reset")
        self._journal = []  # a partition rebuilt now starts where a reset one is
        self.bins = None

    def set_noise(self, variances: Any, *, n_parties: int, seed: int | None = None, party_index: int = 0) -> None:
        """This party's noise share, added once to the summed histograms (as :meth:`EngineState.set_noise`)."""
        self._enter("set_noise")
        row_ids = global_row_ids(self.org, self.n_rows)
        self._noise = noise_share(variances, n_parties=n_parties, seed=seed, party_index=party_index, row_ids=row_ids)

    @property
    def scores_valid_(self) -> np.ndarray | None:
        """Raw scores of the organisation's validation rows, shape (n_trees, n_valid), in its rows' order."""
        parts = self._ask("scores_valid")
        if any(p is None for p in parts):
            return None
        return np.concatenate(parts, axis=1)
