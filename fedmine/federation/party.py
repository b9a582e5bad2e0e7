"""The Party interface and the in-process party that holds one organisation's rows.

The coordinator talks to every organisation through :class:`Party`: a handful
of calls whose arguments and answers are model text, numbers and numpy arrays,
never rows. :class:`LocalParty` implements it over an organisation's
harmonised, split data; it keeps the raw scores of the model it currently
follows (the global model, or its own under the ``local`` strategy) so that
each round costs only the new trees. :class:`Link` is the coordinator's end of
the conversation: it calls a party and counts the bytes that cross.

Stages (a party rejects calls out of order)::

    NEW --start--> READY --begin_round(step)--> READY ...
    train_local / evaluate / local_baseline are allowed in READY
"""

from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np

from fedmine import metrics
from fedmine.errors import PartyError
from fedmine.federation.ensemble import tree_blocks
from fedmine.gbdt.party import CALLS as ENGINE_CALLS
from fedmine.gbdt.party import PartyState
from fedmine.schema import HarmonisedFrame

# Party stages (STYLE: explicit protocol state).
STAGE_NEW = "new"
STAGE_READY = "ready"

# The metrics LightGBM records for each objective (same names as fedmine.metrics).
LGB_METRICS = {
    "binary": ["auc", "binary_logloss", "binary_error"],
    "multiclass": ["multi_logloss", "multi_error"],
    "regression": ["rmse", "l1"],
    "poisson": ["rmse", "l1"],
    "tweedie": ["rmse", "l1"],
}


class Party(Protocol):
    """What the coordinator may ask of an organisation."""

    name: str

    def describe(self) -> dict[str, Any]: ...
    def start(self, base_score: np.ndarray) -> None: ...
    def begin_round(self, step: int, model_delta: str | None) -> None: ...
    def train_local(self, params: dict[str, Any], num_boost_round: int) -> list[str]: ...
    def evaluate(self) -> dict[str, Any]: ...
    def local_baseline(self, params: dict[str, Any], num_boost_round: int) -> dict[str, Any]: ...
    def engine(self, call: str, *args: Any, **kwargs: Any) -> Any: ...
    def secure_setup(self, training_id: str) -> bytes: ...
    def secure_peers(self, peers: dict[str, bytes]) -> None: ...
    def secure_restart(self, remaining: list[str], epoch: int) -> None: ...


#: Engine calls a party answers for the ``histogram`` strategy (the engine's
#: protocol, :data:`fedmine.gbdt.party.CALLS`, and ``finish``).
ENGINE_PROTOCOL = frozenset(ENGINE_CALLS) | {"finish"}
#: Engine answers that are summed over parties, so secure aggregation masks them.
MASKED_CALLS = frozenset({"grid_counts", "label_stats", "histograms", "split_histograms", "evaluate"})


def global_row_ids(org: str, n_rows: int) -> np.ndarray:
    """Row ids unique across the federation: ``crc32(org) << 32 | local index``.

    The engine samples rows for bagging from a hash of the row id, so the same
    ids give the same sample pooled or federated.
    """
    return (np.uint64(zlib.crc32(org.encode())) << np.uint64(32)) | np.arange(n_rows, dtype=np.uint64)


@dataclass
class Split:
    """One organisation's rows split into train and validation (stays in the party)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray


def split_rows(data: HarmonisedFrame, *, fraction: float, seed: int, org: str) -> Split:
    """Seeded train/validation split; the organisation's name enters the seed.

    Each organisation draws its own permutation from ``(seed, crc32(org))`` so
    the split does not depend on the order in which organisations are listed.
    """
    n = data.rows
    rng = np.random.default_rng([seed, zlib.crc32(org.encode())])
    order = rng.permutation(n)
    n_valid = int(round(n * fraction))
    if fraction > 0 and n_valid == 0 and n > 1:
        n_valid = 1
    valid, train = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    return Split(data.X[train], data.y[train], data.X[valid], data.y[valid])


class LocalParty:
    """An organisation's party in this process.

    Parameters
    ----------
    name : the organisation's name.
    split : its train and validation rows (canonical features, encoded label).
    objective : ``binary``, ``multiclass`` or ``regression``.
    num_class : trees per iteration (1 unless multiclass).
    feature_names : canonical feature names, in column order.
    categorical : indices of categorical columns.
    report : the harmonisation report (rows, missing rates).
    """

    def __init__(
        self,
        name: str,
        split: Split,
        *,
        objective: str,
        num_class: int,
        feature_names: list[str],
        categorical: list[int],
        report: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.objective = objective
        self.num_class = num_class
        self.feature_names = feature_names
        self.categorical = categorical
        self.report = report or {}
        self._data = split
        self._stage = STAGE_NEW
        self._step = 0
        self._train_raw: np.ndarray | None = None
        self._valid_raw: np.ndarray | None = None
        self._engine: PartyState | None = None
        self._keypair = None
        self._training_id: str | None = None
        self._masker = None
        self._masked = 0  # masked messages sent: the next message id

    # -- helpers ---------------------------------------------------------
    def _require(self, stage: str, call: str) -> None:
        if self._stage != stage:
            raise PartyError(f"party {self.name}: {call} is not allowed in stage {self._stage!r} (needs {stage!r})")

    def _shape(self, n: int) -> tuple[int, ...]:
        return (n,) if self.num_class == 1 else (n, self.num_class)

    def _dataset(self, init_score: np.ndarray | None) -> lgb.Dataset:
        d = self._data
        return lgb.Dataset(
            d.X_train,
            label=d.y_train,
            init_score=init_score,
            feature_name=self.feature_names,
            categorical_feature=self.categorical,
            free_raw_data=False,
            params={"verbosity": -1},
        )

    # -- protocol --------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Row counts and label sums: what the coordinator needs for the base score."""
        y = self._data.y_train
        if self.objective == "multiclass":
            label_sums = np.bincount(y.astype(np.int64), minlength=self.num_class).astype(np.float64)
        else:
            label_sums = np.array([float(y.sum())])
        return {
            "rows_train": int(len(y)),
            "rows_valid": int(len(self._data.y_valid)),
            "label_sums": label_sums,
            "features": list(self.feature_names),
            "report": self.report,
        }

    def start(self, base_score: np.ndarray) -> None:
        """Begin following a model whose raw score starts at ``base_score``."""
        base = np.asarray(base_score, dtype=np.float64)
        self._train_raw = np.broadcast_to(base, self._shape(len(self._data.y_train))).astype(np.float64).copy()
        self._valid_raw = np.broadcast_to(base, self._shape(len(self._data.y_valid))).astype(np.float64).copy()
        self._step = 0
        self._stage = STAGE_READY

    def begin_round(self, step: int, model_delta: str | None) -> None:
        """Add the trees of ``step`` to the scores (idempotent: a repeated step is skipped)."""
        self._require(STAGE_READY, "begin_round")
        if step <= self._step:
            return  # a retried call: already applied
        if step != self._step + 1:
            raise PartyError(f"party {self.name}: step {step} out of order (last applied {self._step})")
        if model_delta:
            booster = lgb.Booster(model_str=model_delta)
            self._train_raw += booster.predict(self._data.X_train, raw_score=True).reshape(self._train_raw.shape)
            if len(self._data.y_valid):
                self._valid_raw += booster.predict(self._data.X_valid, raw_score=True).reshape(self._valid_raw.shape)
        self._step = step

    def train_local(self, params: dict[str, Any], num_boost_round: int) -> list[str]:
        """Trees trained on this party's rows on top of the current scores.

        Returns the tree blocks only (no header, no parameters): ``num_class``
        trees per boosting iteration, in LightGBM's order.
        """
        self._require(STAGE_READY, "train_local")
        booster = lgb.train(params, self._dataset(self._train_raw.copy()), num_boost_round=num_boost_round)
        return tree_blocks(booster.model_to_string())

    def secure_setup(self, training_id: str) -> bytes:
        """Make this training's key pair; answer the public key (the coordinator relays it to the peers)."""
        from fedmine.privacy.secure_agg import generate_keypair

        self._keypair = generate_keypair()
        self._training_id = str(training_id)
        self._masker = None
        self._masked = 0
        return self._keypair.public_bytes

    def secure_peers(self, peers: dict[str, bytes]) -> None:
        """Derive the pairwise masks from every peer's public key, bound to the peers' names."""
        from fedmine.privacy.secure_agg import Masker

        if self._keypair is None:
            raise PartyError(f"party {self.name}: secure_peers before secure_setup")
        if self.name not in peers or peers[self.name] != self._keypair.public_bytes:
            raise PartyError(f"party {self.name}: the relayed keys do not carry this party's own public key")
        self._masker = Masker(self.name, self._keypair, peers, self._training_id)

    def secure_restart(self, remaining: list[str], epoch: int) -> None:
        """Fresh masks among the ``remaining`` parties (a party dropped out)."""
        if self._masker is not None:
            self._masker.restart([p for p in remaining if p != self.name], epoch=epoch)

    def engine(self, call: str, *args: Any, **kwargs: Any) -> Any:
        """Answer one call of the engine's protocol (``histogram`` strategy) from this party's rows.

        Under secure aggregation, the answers that are summed (:data:`MASKED_CALLS`)
        leave masked: each looks uniform on its own; the masks cancel in the sum.
        """
        if call not in ENGINE_PROTOCOL:
            raise PartyError(f"party {self.name}: unknown engine call {call!r}; allowed: {', '.join(sorted(ENGINE_PROTOCOL))}")
        if self._engine is None:
            d = self._data
            self._engine = PartyState(d.X_train, d.y_train, row_ids=global_row_ids(self.name, len(d.y_train)),
                                      X_valid=d.X_valid, y_valid=d.y_valid)
        answer = getattr(self._engine, call)(*args, **kwargs)
        if self._masker is not None and call in MASKED_CALLS:
            plain = np.ascontiguousarray(answer, dtype=np.int64)
            answer = self._masker.mask(plain, f"{call}:{self._masked}").view(np.int64).reshape(plain.shape)
            self._masked += 1
        return answer

    def _current_valid_raw(self) -> np.ndarray:
        """Raw validation scores of the model this party follows."""
        scores = getattr(self._engine, "scores_valid_", None)
        if scores is not None:  # the engine's model (histogram strategy): (K, n) -> (n,) or (n, K)
            return scores[0] if self.num_class == 1 else scores.T
        return self._valid_raw

    def evaluate(self) -> dict[str, Any]:
        """Validation sums (mergeable) and this party's exact metrics of the current model."""
        self._require(STAGE_READY, "evaluate")
        y, raw = self._data.y_valid, self._current_valid_raw()
        if len(y) == 0:
            return {"sums": {}, "metrics": {}}
        return {"sums": metrics.sums(y, raw, self.objective), "metrics": metrics.exact(y, raw, self.objective)}

    def local_baseline(self, params: dict[str, Any], num_boost_round: int) -> dict[str, Any]:
        """Train on this party's rows alone: its final metrics and learning curve (no model leaves)."""
        d = self._data
        curve: dict[str, Any] = {}
        train_set = self._dataset(None)
        valid_sets, callbacks = [], []
        if len(d.y_valid):
            valid_sets = [lgb.Dataset(d.X_valid, label=d.y_valid, reference=train_set)]
            callbacks = [lgb.record_evaluation(curve)]
        p = dict(params, metric=LGB_METRICS[self.objective])
        booster = lgb.train(p, train_set, num_boost_round=num_boost_round, valid_sets=valid_sets, callbacks=callbacks)
        final = {}
        if len(d.y_valid):
            raw = booster.predict(d.X_valid, raw_score=True)
            final = metrics.exact(d.y_valid, raw, self.objective)
        history = {k: [float(v) for v in vals] for k, vals in curve.get("valid_0", {}).items()}
        return {"metrics": final, "curve": history, "rows_train": int(len(d.y_train))}


def payload_bytes(value: Any) -> int:
    """Bytes a value takes on the wire (arrays by buffer size, text as UTF-8)."""
    if value is None:
        return 0
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, dict):
        return sum(payload_bytes(k) + payload_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(v) for v in value)
    if hasattr(value, "__dict__"):  # records (bin mapper, trees, parameters): their fields
        return payload_bytes(vars(value))
    return 8


class Link:
    """The coordinator's end of the conversation with one party.

    Counts bytes both ways and the seconds spent waiting for answers; it is
    the one place where a party's failure becomes a :class:`PartyError`.
    Safe to use from several threads.
    """

    def __init__(self, party: Party) -> None:
        self.party = party
        self.name = party.name
        self.bytes_sent = 0  # party -> coordinator
        self.bytes_received = 0  # coordinator -> party
        self.calls = 0
        self.seconds = 0.0
        self.failed = False  # the party failed to answer (transport or party error)
        self._lock = threading.Lock()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        sent = payload_bytes(list(args)) + payload_bytes(kwargs)
        try:
            answer = getattr(self.party, method)(*args, **kwargs)
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
            self.calls += 1
            self.bytes_received += sent
            self.bytes_sent += size
            self.seconds += time.perf_counter() - t0
        return answer


class EngineProxy:
    """A party as the engine sees it: each engine call goes through the party's :class:`Link`."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def __getattr__(self, call: str):
        if call not in ENGINE_PROTOCOL:
            raise AttributeError(call)
        return lambda *args, **kwargs: self.link.call("engine", call, *args, **kwargs)
