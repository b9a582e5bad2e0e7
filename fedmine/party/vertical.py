"""An organisation's party in vertical federation: its ids, its columns, its role.

This module owns :class:`VerticalParty`, the :class:`~fedmine.party.organisation.Party`
of an organisation that shares customers (not columns) with the others, and
:func:`vertical_party`, which makes it from the organisation's raw frame. It
answers the vertical calls of the protocol table:

* the private set intersection (``psi_blind``, ``psi_reblind``, ``psi_align``,
  :mod:`fedmine.privacy.psi`): it learns which of its rows are shared with
  every other organisation, in the common order, and nothing about the
  others' ids outside the intersection;
* as the label holder (:class:`~fedmine.party.label_holder.LabelHolder`):
  ``vertical_begin``, ``vertical_round``, ``vertical_model`` and
  ``vertical_predict``, each a conversation (:class:`~fedmine.party.relay.Relay`)
  in which the coordinator carries its requests to the owners
  (``vertical_resume`` brings their answers);
* as a feature owner (:class:`~fedmine.party.feature_owner.FeatureOwner`): the
  ``owner_*`` calls.

After the intersection both sides split the shared rows into training and
validation rows the same way, from a hash of each id (so every organisation
agrees without talking, and the split does not depend on anyone's row order);
row ids for bagging are a hash of the id too.

A party served with an ``--output`` folder keeps what it needs to take a
training up again in ``<output>/vertical/<training id>/`` on its own disk
(:class:`PartyState`): its shared rows (the intersection's result, positions
into its own rows), a feature owner the arguments of its binning, the label
holder the loop's state, trees and scores after each round (the last two).
``vertical_rejoin`` reads them back after the party restarted or the
coordinator resumed: nothing crosses that did not cross before.

It keeps there too what it needs to predict (``predict``): a feature owner
its bin mapper once its bins are made, the label holder its model, its own
bin mapper and the map of who holds each feature once the model is finished.
A party started again with the same folder answers ``vertical_predict``
(the label holder: the latest finished training) and ``owner_predict``,
``owner_thresholds`` (an owner: the training the label holder names) from
it, with the same scores as before the restart. ``vertical_model`` is the
training's end and needs the training in memory (or rejoined).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmine.errors import ConfigError, DataError, PartyError
from fedmine.party.feature_owner import FeatureOwner, pack_mask
from fedmine.party.label_holder import DEFAULT_KEY_BITS, LabelHolder
from fedmine.party.organisation import Party, TrainValidRows
from fedmine.party.policy import PartyPolicy
from fedmine.party.relay import Relay
from fedmine.protocol import ProtocolError
from fedmine.transport.wire import MAX_MESSAGE_BYTES


def _digest64(label: bytes, ids: list[bytes]) -> np.ndarray:
    """The first 8 bytes of ``sha256(label + id)`` per id, as uint64."""
    return np.array([int.from_bytes(hashlib.sha256(label + i).digest()[:8], "little") for i in ids], dtype=np.uint64)


def row_ids(ids: list[bytes]) -> np.ndarray:
    """Bagging ids of shared rows: a hash of the normalised id, the same at every organisation."""
    return _digest64(b"fedmine/vertical/row\x00", ids)


def validation_rows(ids: list[bytes], *, fraction: float, seed: int) -> np.ndarray:
    """Which shared rows are validation rows: those whose seeded hash of the id ranks first.

    Every organisation ranks its shared ids the same way, so all pick the same
    customers; ``round(n * fraction)`` of them (at least one when fraction > 0).
    """
    n = len(ids)
    n_valid = round(n * fraction)
    if fraction > 0 and n_valid == 0 and n > 1:
        n_valid = 1
    rank = np.argsort(_digest64(f"fedmine/vertical/valid/{int(seed)}\x00".encode(), ids), kind="stable")
    out = np.zeros(n, dtype=bool)
    out[rank[:n_valid]] = True
    return out


def rows_fingerprint(ids: list[bytes], X: np.ndarray, y: np.ndarray) -> str:
    """A digest of an organisation's normalised ids, features and label (never the rows themselves).

    The coordinator compares it when a party rejoins or a training resumes:
    a changed id, value or row count changes it.
    """
    h = hashlib.sha256(b"fedmine vertical rows v1")
    h.update(str(len(ids)).encode())
    for i in ids:
        h.update(len(i).to_bytes(4, "little") + i)
    for a in (X, y):
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


#: A training id names a folder of the party's disk: hex digits only (the coordinator's are uuid4 hex).
_TRAINING_ID = re.compile(r"[0-9a-f]{8,64}")

#: Trainings whose state a party keeps (the most recent): a server trains one at a time, and a
#: resume continues one of the last.
KEEP_TRAININGS = 3

#: Round states the label holder keeps on disk: the coordinator records every round before it asks for
#: the next, so its last checkpoint is one of these.
KEEP_ROUNDS = 2


class PartyState:
    """What a vertical party keeps on its own disk to take a training up again (one folder per training).

    Parameters
    ----------
    folder : ``<output>/vertical/<training id>``.

    Files (the wire codec, written whole or not at all): ``rows`` (training
    id, fingerprint, shared row positions), ``bins`` (a feature owner's
    binning arguments), ``round-NNNNN`` (the label holder after round N),
    ``predict`` (what predicting needs: a feature owner's bin mapper, the
    label holder's finished model and maps).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def save(self, name: str, value: Any) -> None:
        from fedmine.transport import wire

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(wire.encode(value))
        os.replace(tmp, self.folder / name)

    def load(self, name: str) -> Any:
        """The value saved as ``name``, or None."""
        from fedmine.transport import wire

        path = self.folder / name
        if not path.is_file():
            return None
        return wire.decode(path.read_bytes(), max_bytes=max(path.stat().st_size, 1 << 20) + 1024)

    def forget_older(self) -> None:
        """Remove the folders of trainings older than the :data:`KEEP_TRAININGS` most recent (this one included),
        except the most recent one with a predict state (the model a restarted party predicts with)."""
        import shutil

        others = [p for p in self.folder.parent.iterdir() if p.is_dir() and _TRAINING_ID.fullmatch(p.name)]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        kept = latest_predict_state(self.folder.parent)
        for old in [p for p in others if p != self.folder][KEEP_TRAININGS - 1 :]:
            if kept is None or old != kept.folder:
                shutil.rmtree(old, ignore_errors=True)

    def save_round(self, n: int, value: Any) -> None:
        """The label holder's state after round ``n``; rounds before ``n - KEEP_ROUNDS + 1`` are removed."""
        self.save(f"round-{n:05d}", value)
        for old in self.folder.glob("round-*"):
            if old.name[6:].isdigit() and int(old.name[6:]) <= n - KEEP_ROUNDS:
                old.unlink(missing_ok=True)


def latest_predict_state(folder: Path) -> PartyState | None:
    """The training under ``folder`` (``<output>/vertical``) whose predict state was written last, or None."""
    if not folder.is_dir():
        return None
    kept = [p for p in folder.iterdir() if p.is_dir() and _TRAINING_ID.fullmatch(p.name) and (p / "predict").is_file()]
    if not kept:
        return None
    return PartyState(max(kept, key=lambda p: ((p / "predict").stat().st_mtime_ns, p.name)))


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and not value.strip()


def read_ids(frame: pd.DataFrame, cfg: Any, org: str) -> tuple[list[bytes], np.ndarray]:
    """The normalised ids of an organisation's rows and which rows have one.

    Raises
    ------
    DataError
        The id column is absent, every id is missing, or an id repeats (with
        the count and an example).
    """
    from fedmine.privacy.psi import normalise_ids

    spec = cfg.organisations[org].id
    source = cfg.organisations[org].source or "its source"
    if spec.column not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:12]))
        raise DataError(
            f"organisation {org}: {source} has no id column {spec.column!r} (organisations.{org}.id); columns: {shown}"
        )
    values = frame[spec.column].tolist()
    present = np.array([not _missing(v) for v in values], dtype=bool)
    if not present.any():
        raise DataError(f"organisation {org}: id column {spec.column!r} has no value in its {len(values)} rows")
    kept = [v for v, p in zip(values, present) if p]
    ids = normalise_ids(kept, trim=spec.trim, case=spec.case, salt=cfg.vertical.salt)
    seen: dict[bytes, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    dups = {i: c for i, c in seen.items() if c > 1}
    if dups:
        example = next(iter(dups)).decode("utf-8", "replace")[len(cfg.vertical.salt) :]
        extra = sum(dups.values()) - len(dups)
        raise DataError(
            f"organisation {org}: id column {spec.column!r} has {extra} duplicate id(s) "
            f"(for example {example!r}); each customer must appear once"
        )
    return ids, present


def harmonise_own(frame: pd.DataFrame, cfg: Any, org: str):
    """The organisation's own canonical features (and the label, if it holds it), mapped as in horizontal."""
    from fedmine.schema import harmonise
    from fedmine.schema.harmonise import _label_source

    view = cfg.organisation_view(org)
    if not cfg.organisations[org].holds_label:
        source = _label_source(cfg, org)
        if source not in frame.columns:
            frame = frame.copy()
            frame[source] = cfg.classes[0] if cfg.classes else 0  # a placeholder the owner never uses
    return harmonise(frame, view, org)


class VerticalParty(Party):
    """One organisation of a vertical federation (see the module docstring).

    Parameters
    ----------
    name : the organisation's name.
    ids : list of n bytes
        Its normalised ids (:func:`fedmine.privacy.psi.normalise_ids`), one per row.
    X : ndarray of shape (n, n_own)
        Its canonical features, in the canonical order.
    y : ndarray of shape (n,)
        The label (the label holder), zeros elsewhere.
    cfg : the federation config as this organisation has it (its own policy comes from it).
    report : the harmonisation report.
    policy : its policy (None: stages only).
    cipher : the homomorphic scheme (default Paillier; tests of growth may pass another).
    message_bytes : the largest message between it and the coordinator (the label holder sends a round's
        encrypted rows in chunks below it).
    """

    def __init__(
        self,
        name: str,
        ids: list[bytes],
        X: np.ndarray,
        y: np.ndarray,
        *,
        cfg: Any,
        report: dict[str, Any] | None = None,
        policy: PartyPolicy | None = None,
        cipher: Any = None,
        message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        names = list(cfg.features)
        held = set(cfg.organisations[name].features or [])
        own = [f for f in names if f in held]  # harmonised columns come in the canonical order
        super().__init__(
            name,
            TrainValidRows(np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64), X[:0], y[:0]),
            objective=cfg.objective,
            num_class=cfg.num_class,
            feature_names=own,
            categorical=[i for i, f in enumerate(own) if cfg.features[f].type == "category"],
            report=report,
            policy=policy,
        )
        self.ids = list(ids)
        self._all = (np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64))
        self.fingerprint_ = rows_fingerprint(self.ids, *self._all)
        self.holds_label = bool(cfg.organisations[name].holds_label)
        self.all_features = names
        self.own = np.array([names.index(f) for f in own], dtype=np.int64)
        holder = cfg.feature_holder()
        self.owners = {
            o: np.array([i for i, f in enumerate(names) if holder[f] == o], dtype=np.int64)
            for o in cfg.organisations
            if o != name
        }
        self.categorical_all = [i for i, f in enumerate(names) if cfg.features[f].type == "category"]
        self.seed = int(cfg.training.seed)
        self.validation_fraction = float(cfg.training.validation_fraction)
        self.publish_thresholds = bool(cfg.vertical.publish_thresholds)
        self.key_bits = int(cfg.vertical.key_bits)
        self.cipher = cipher
        self.message_bytes = int(message_bytes)
        self._id_spec = cfg.organisations[name].id
        self._salt = cfg.vertical.salt
        self.relay = Relay(name)
        self.role_: LabelHolder | FeatureOwner | None = None
        self._psi_key: Any = None
        self._order: np.ndarray | None = None
        self._kept: tuple[str, LabelHolder | FeatureOwner] | None = None  # (training id, role) read for predicting

    # -- the intersection ----------------------------------------------------
    def begin_training(self, training_id: str) -> None:
        super().begin_training(training_id)
        self.relay.abandon()
        self.role_ = None
        self._psi_key = self._order = None
        self._kept = None

    def psi_blind(self) -> np.ndarray:
        """Its ids blinded under a fresh key, in a random order (it keeps the order; no one else learns its rows')."""
        from fedmine.privacy.psi import PsiKey

        self._psi_key = PsiKey.generate()
        self._order = np.random.default_rng().permutation(len(self.ids))
        return self._psi_key.blind([self.ids[i] for i in self._order])

    def psi_reblind(self, points: np.ndarray) -> np.ndarray:
        if self._psi_key is None:
            raise ProtocolError("psi_reblind needs this training's key: psi_blind first")
        return self._psi_key.reblind(np.asarray(points, dtype=np.uint8))

    def psi_align(self, own: np.ndarray, others: list[np.ndarray]) -> int:
        """Keep the rows shared with every other organisation, in the common order; split them; take its role."""
        from fedmine.privacy.psi import shared_positions

        if self._order is None:
            raise ProtocolError("psi_align needs this training's blinded ids: psi_blind first")
        own = np.asarray(own, dtype=np.uint8)
        if own.shape[0] != self._order.shape[0]:
            raise PartyError(f"party {self.name}: psi_align: {own.shape[0]} points for its {self._order.shape[0]} ids")
        rows = self._order[shared_positions(own, [np.asarray(o, dtype=np.uint8) for o in others])]
        self._psi_key = None  # used once
        self._take_rows(rows)
        state = self._state()
        if state is not None:
            state.save("rows", {"training_id": self._training_id, "fingerprint": self.fingerprint_, "rows": rows})
            state.forget_older()
        return int(rows.shape[0])

    def _holder_args(self) -> dict[str, Any]:
        """What a label holder is built from besides its rows: for training, and for predicting after a restart."""
        return {
            "own": self.own,
            "owners": self.owners,
            "feature_names": self.all_features,
            "categorical": self.categorical_all,
            "objective": self.objective,
            "num_class": self.num_class,
            "cipher": self.cipher,
        }

    def _take_rows(self, rows: np.ndarray) -> None:
        """Its shared rows, in the common order: training and validation rows, and its role over them."""
        self.shared_ = rows = np.asarray(rows, dtype=np.int64)
        shared_ids = [self.ids[i] for i in rows]
        valid = validation_rows(shared_ids, fraction=self.validation_fraction, seed=self.seed)
        X, y = self._all
        Xs, ys = X[rows], y[rows]
        self._data = TrainValidRows(Xs[~valid], ys[~valid], Xs[valid], ys[valid])
        self.row_ids_ = row_ids([i for i, v in zip(shared_ids, valid) if not v])
        d = self._data
        if self.holds_label:
            self.role_ = LabelHolder(
                self.name,
                d.X_train,
                d.y_train,
                d.X_valid,
                d.y_valid,
                **self._holder_args(),
                key_bits=self.key_bits,
                row_ids=self.row_ids_,
                message_bytes=self.message_bytes,
            )
        else:
            self.role_ = FeatureOwner(
                self.name, d.X_train, d.X_valid, publish_thresholds=self.publish_thresholds, cipher=self.cipher
            )

    # -- taking a training up again ------------------------------------------
    def _state(self) -> PartyState | None:
        """This training's folder on the party's own disk (None: a party without an output folder keeps nothing)."""
        if self.output_dir is None or self._training_id is None:
            return None
        if not _TRAINING_ID.fullmatch(self._training_id):
            raise self._refuse("vertical", f"training id {self._training_id[:40]!r} is not a folder name (hex digits)")
        return PartyState(Path(self.output_dir) / "vertical" / self._training_id)

    def vertical_rejoin(self, training_id: str, rounds: int, params: dict[str, Any], ranges: Any = None):
        """Take up training ``training_id`` after ``rounds`` rounds from what this party saved on its disk.

        Every organisation gets its shared rows back (the intersection is not
        run again); a feature owner bins its features again with the arguments
        it was given; the label holder (a conversation: the owners are asked
        for their bin counts) makes a fresh key, agrees the bins and restores
        its loop, trees and scores of round ``rounds``.

        Raises
        ------
        ConfigError
            The party keeps no state (no output folder), has none of this
            training, or none of that round (not retried: a restart with
            another folder does not bring it back).
        DataError
            Its rows changed since the training started.
        """
        self.begin_training(training_id)
        state = self._state()
        where = "no --output folder" if state is None else str(state.folder)
        saved = None if state is None else state.load("rows")
        if saved is None or saved.get("training_id") != str(training_id):
            raise ConfigError(
                f"party {self.name}: vertical_rejoin: no saved state of training {training_id} ({where}); "
                f"serve it with the --output folder it trained with, or run the training again"
            )
        if saved["fingerprint"] != self.fingerprint_:
            raise DataError(
                f"organisation {self.name}: source changed since the training started "
                f"(rows fingerprint {str(saved['fingerprint'])[:12]} then, {self.fingerprint_[:12]} now)"
            )
        assert state is not None
        self._take_rows(saved["rows"])
        rounds = int(rounds)
        if isinstance(self.role_, FeatureOwner):
            bins = state.load("bins")
            if bins is not None:
                self.role_.bins(bins["ranges"], bins["categorical"], max_bin=bins["max_bin"], n_grid=bins["n_grid"])
            return {"result": {"shared_rows": int(self.shared_.shape[0]), "rounds": rounds}}
        lead = self._lead("vertical_rejoin")
        kept = state.load(f"round-{rounds:05d}") if rounds > 0 else None
        if rounds > 0 and kept is None:
            raise ConfigError(
                f"party {self.name}: vertical_rejoin: no saved state of round {rounds} in {where}; "
                f"serve it with the --output folder it trained with, or run the training again"
            )

        def work(ask):
            lead.begin(ask, params, ranges=ranges)
            if kept is not None:
                lead.restore(kept)
            return {"shared_rows": int(self.shared_.shape[0]), "rounds": rounds, **lead.progress()}

        return self.relay.start(work)

    def _lead(self, call: str) -> LabelHolder:
        if not isinstance(self.role_, LabelHolder):
            raise self._refuse(call, "this organisation is not the label holder, or the intersection is not done")
        return self.role_

    def _owner(self, call: str) -> FeatureOwner:
        if not isinstance(self.role_, FeatureOwner):
            raise self._refuse(
                call, "this organisation holds no features for a label holder, or the intersection is not done"
            )
        return self.role_

    # -- the label holder's conversations ------------------------------------
    def vertical_begin(self, params: dict[str, Any], ranges: Any = None) -> dict[str, Any]:
        lead = self._lead("vertical_begin")
        return self.relay.start(lambda ask: lead.begin(ask, params, ranges=ranges))

    def vertical_round(self) -> dict[str, Any]:
        lead = self._lead("vertical_round")
        state = self._state()

        def work(ask):
            result = lead.round(ask)
            if state is not None:  # before the answer: the round the coordinator records is on disk
                state.save_round(lead.rounds_, lead.checkpoint())
            return result

        return self.relay.start(work)

    def vertical_resume(self, answers: list) -> dict[str, Any]:
        return self.relay.resume(answers)

    def vertical_model(self, publish: bool) -> dict[str, Any]:
        """The model; published (every owner's thresholds filled in) only if this organisation's config agrees too."""
        from fedmine.gbdt import to_lightgbm_text

        lead = self._lead("vertical_model")
        if publish and not self.publish_thresholds:
            raise self._refuse(
                "vertical_model", "this organisation's config does not set vertical.publish_thresholds: true"
            )

        state, training = self._state(), self._training_id

        def work(ask):
            model = lead.model(ask, publish=publish, training_id=training)
            if state is not None:  # the training's end: what predicting needs, for a restart
                state.save("predict", lead.predict_state())
            text = to_lightgbm_text(model, self.all_features) if publish and model.trees else None
            return {"text": text, "trees": len(model.trees)}

        return self.relay.start(work)

    def vertical_predict(self, ids: list[Any]) -> dict[str, Any]:
        """Raw scores of customers named by id; every split's test answered by its feature's holder.

        The model is this training's if it is in memory, else the latest
        finished training's kept on the party's disk (a restarted server).
        """
        lead, training = self._predicting_lead()
        return self.relay.start(lambda ask: lead.predict(ask, list(ids), self._lookup, training_id=training))

    def _vertical_folder(self) -> Path | None:
        return None if self.output_dir is None else Path(self.output_dir) / "vertical"

    def _no_model(self, where: str) -> PartyError:
        return PartyError(f"party {self.name}: no model to predict with: train first ({where})")

    def _predicting_lead(self) -> tuple[LabelHolder, str | None]:
        """The label holder with a model and the training it is of: in memory, else read from its disk."""
        if not self.holds_label:
            raise self._refuse("vertical_predict", "this organisation is not the label holder")
        role = self.role_
        if isinstance(role, LabelHolder) and (role.model_ is not None or role.trainer_ is not None):
            if role.model_ is None:
                role.model()  # the model of the rounds grown so far, as vertical_model makes it
            return role, self._training_id
        kept_training, kept_role = self._kept or ("", None)
        if isinstance(kept_role, LabelHolder):
            return kept_role, kept_training
        folder = self._vertical_folder()
        state = None if folder is None else latest_predict_state(folder)
        if state is None:
            raise self._no_model("no --output folder" if folder is None else f"no finished training in {folder}")
        lead = LabelHolder.from_predict_state(self.name, state.load("predict"), **self._holder_args())
        self._kept = (state.folder.name, lead)
        return lead, state.folder.name

    def _predicting_owner(self, call: str, training_id: str | None) -> FeatureOwner:
        """The owner's bins of training ``training_id`` (None: the latest): in memory, else read from its disk."""
        if self.holds_label:
            raise self._refuse(call, "this organisation holds no features for a label holder")
        role = self.role_
        if (
            isinstance(role, FeatureOwner)
            and role.mapper_ is not None
            and (training_id is None or str(training_id) == self._training_id)
        ):
            return role
        kept_training, kept_role = self._kept or ("", None)
        if isinstance(kept_role, FeatureOwner) and (training_id is None or kept_training == str(training_id)):
            return kept_role
        folder = self._vertical_folder()
        if training_id is not None and not _TRAINING_ID.fullmatch(str(training_id)):
            raise self._refuse(call, f"training id {str(training_id)[:40]!r} is not a folder name (hex digits)")
        if folder is None:
            raise self._no_model("no --output folder")
        if training_id is None:
            state = latest_predict_state(folder)
            where = f"no predict state in {folder}"
        else:
            state = PartyState(folder / str(training_id))
            where = f"no predict state of training {training_id} in {state.folder}"
        kept = None if state is None else state.load("predict")
        if kept is None:
            raise self._no_model(where)
        assert state is not None
        owner = FeatureOwner.from_predict_state(
            self.name, kept, publish_thresholds=self.publish_thresholds, cipher=self.cipher
        )
        if owner.mapper_ is not None and owner.mapper_.n_features != self.own.size:
            raise PartyError(
                f"party {self.name}: the predict state in {state.folder} has {owner.mapper_.n_features} features, "
                f"this organisation holds {self.own.size}"
            )
        self._kept = (state.folder.name, owner)
        return owner

    def _lookup(self, ids: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Its feature rows of the customers named by id (NaN rows for those it does not know); which it knows."""
        from fedmine.privacy.psi import normalise_ids

        spec = self._id_spec
        wanted = normalise_ids(["" if _missing(i) else i for i in ids], trim=spec.trim, case=spec.case, salt=self._salt)
        index = {i: r for r, i in enumerate(self.ids)}
        rows = np.array([index.get(i, -1) for i in wanted], dtype=np.int64)
        X = np.full((len(ids), self._all[0].shape[1]), np.nan)
        found = rows >= 0
        X[found] = self._all[0][rows[found]]
        return X, found

    # -- a feature owner's answers -------------------------------------------
    def owner_bins(self, ranges, categorical, *, max_bin: int, n_grid: int) -> np.ndarray:
        owner = self._owner("owner_bins")
        n_bins = owner.bins(ranges, categorical, max_bin=max_bin, n_grid=n_grid)
        state = self._state()
        if state is not None:  # to bin again the same way after a restart; its bins to predict with
            state.save("bins", {"ranges": ranges, "categorical": categorical, "max_bin": max_bin, "n_grid": n_grid})
            state.save("predict", owner.predict_state())
        return n_bins

    def owner_gradients(self, public: bytes, rows: list, part=None) -> None:
        self._owner("owner_gradients").gradients(public, rows, part)

    def owner_histograms(self, trees, node_rows: list) -> list:
        return self._owner("owner_histograms").histograms(trees, node_rows)

    def owner_split(self, rows, feature, bin_threshold, default_left, cat_bitset) -> np.ndarray:
        return self._owner("owner_split").split(rows, feature, bin_threshold, default_left, cat_bitset)

    def owner_decisions(self, nodes, bitsets, rows, *, valid: bool) -> np.ndarray:
        return self._owner("owner_decisions").decisions(nodes, bitsets, rows, valid=valid)

    def owner_thresholds(self, features, bin_thresholds, training_id: str | None = None) -> dict[str, Any]:
        return self._predicting_owner("owner_thresholds", training_id).thresholds(features, bin_thresholds)

    def owner_predict(self, ids: list[Any], nodes, bitsets, training_id: str | None = None) -> dict[str, Any]:
        """Its go-left tests for customers named by id, with its bins of training ``training_id`` (the label
        holder's model's; in memory, else kept on its disk)."""
        owner = self._predicting_owner("owner_predict", training_id)
        X, found = self._lookup(ids)
        return {"found": pack_mask(found), "bits": owner.decide_raw(X, nodes, bitsets)}

    def describe(self) -> dict[str, Any]:
        """Feature names, report, fingerprint, its number of ids; after the intersection its shared row counts
        (the coordinator knows the intersection's size). The label holder's label sums stay with it."""
        out = super().describe()
        out["n_ids"] = len(self.ids)
        out["holds_label"] = self.holds_label
        if self.role_ is not None:
            out["n_rows"], out["n_valid"] = len(self._data.y_train), len(self._data.y_valid)
        return out


def vertical_party(
    cfg: Any,
    org: str,
    frame: pd.DataFrame,
    *,
    enforce_policy: bool = True,
    cipher: Any = None,
    message_bytes: int = MAX_MESSAGE_BYTES,
):
    """``org``'s vertical party from its raw frame: ids read and normalised, its own features harmonised."""
    ids, present = read_ids(frame, cfg, org)
    data = harmonise_own(frame, cfg, org)
    X, y = data.X[present], data.y[present]
    report = dict(data.report)
    report["rows_without_id"] = int((~present).sum())
    policy = PartyPolicy.from_config(cfg, org) if enforce_policy else None
    return VerticalParty(
        org, ids, X, y, cfg=cfg, report=report, policy=policy, cipher=cipher, message_bytes=message_bytes
    )


__all__ = ["DEFAULT_KEY_BITS", "VerticalParty", "vertical_party"]
