"""The label holder in vertical federation: it grows the trees over features it mostly never sees.

This module owns :class:`VerticalRows`, the joined table as the label holder
sees it, and :class:`LabelHolder`, the training it runs. The engine's
:class:`~fedmine.gbdt.booster.Trainer` and :class:`~fedmine.gbdt.grower.TreeGrower`
run unchanged on :class:`VerticalRows`, which answers their calls:

* bins: the label holder bins its own features; every owner bins its own with
  the same rule and answers only how many bins each has
  (:meth:`~fedmine.party.feature_owner.FeatureOwner.bins`), so the joined
  mapper equals the joined table's, except that the owners' edges stay with them;
* each round, after the fixed-point gradients are made (as the engine makes
  them), they are encrypted once per tree and sent to every owner;
* ``histograms(nodes)``: its own features' histograms from its rows; each
  owner's from the owner's encrypted answer, decrypted to the exact integer
  sums; the grower's split finder then sees the joined table's histograms;
* ``apply_split`` on an owner's feature: the owner says which rows of the
  node go left; the label holder's partition follows;
* scores of rows outside the partition (validation rows, out-of-bag rows): a
  walk of the tree with every split's test answered by its feature's holder.

Every integer sum is the joined table's, so the trees are the same bits as the
engine's on the inner-joined table. Owners are reached through ``ask``: a
callable that carries a batch of ``(organisation, call, args, kwargs)``
requests to them and returns their answers in order (the coordinator carries
them, :mod:`fedmine.party.relay`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from fedmine import metrics
from fedmine.errors import PartyError
from fedmine.gbdt import binning
from fedmine.gbdt.booster import Trainer
from fedmine.gbdt.dtypes import COUNT, GRAD, HESS, X_BINNED_DTYPE, X_DTYPE
from fedmine.gbdt.model import Model
from fedmine.gbdt.partition import add_leaf_values, goes_left
from fedmine.gbdt.predictor import leaves_from_decisions
from fedmine.gbdt.quantize import SUM_BITS
from fedmine.gbdt.rows import NODE_STRIDE, LocalRows, split_node_id
from fedmine.gbdt.state import EngineState
from fedmine.party.feature_owner import default_cipher, unpack_mask, workers_for
from fedmine.protocol import READY
from fedmine.transport.wire import MAX_MESSAGE_BYTES

Ask = Callable[[list], list]

#: Paillier modulus bits of the label holder's key (2048-bit RSA-equivalent security).
DEFAULT_KEY_BITS = 2048
#: Bytes kept free in each message for everything beside the encrypted rows (the key, the encoding).
MESSAGE_HEADROOM = 64 * 1024


def _no_owners(requests: list) -> list:
    raise PartyError("the label holder needs the feature owners and no one carries its requests")


class VerticalRows(EngineState):
    """The shared rows as the label holder holds them: its features and labels, and bins of the owners'.

    Parameters
    ----------
    X_own : ndarray of shape (n_rows, n_own)
        The label holder's features of the shared training rows (common order).
    y : ndarray of shape (n_rows,)
    own : ndarray of shape (n_own,), int
        Positions of its features in the joined feature order.
    owners : dict of str -> ndarray of int
        Each owner's feature positions in the joined order (its features in that order).
    n_features : int
    X_valid_own, y_valid : the validation rows, likewise.
    keys : HomomorphicKeys
        The label holder's key pair; only the public key leaves.
    cipher : the homomorphic scheme.
    ask : Ask
        Carries requests to the owners.
    message_bytes : int
        The largest message the requests may make: a round's encrypted rows
        for every owner go in one request when they fit, else in chunks.

    The owners' columns are all missing here: their bins never arrive. A
    split on an owner's feature is applied by writing the owner's answer (0:
    left, 1: right) into that feature's column for the node's rows, which the
    partition then splits at bin 0.
    """

    def __init__(
        self,
        X_own,
        y,
        *,
        own,
        owners: dict[str, np.ndarray],
        n_features: int,
        X_valid_own=None,
        y_valid=None,
        keys: Any,
        cipher: Any,
        ask: Ask = _no_owners,
        row_ids=None,
        message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.own = np.asarray(own, dtype=np.int64)
        self.message_bytes = int(message_bytes)
        self.owners = {o: np.asarray(idx, dtype=np.int64) for o, idx in owners.items()}
        self.X_own = np.ascontiguousarray(X_own, dtype=X_DTYPE).reshape(-1, self.own.shape[0])
        self.X_valid_own = (
            None if X_valid_own is None else np.ascontiguousarray(X_valid_own, dtype=X_DTYPE).reshape(-1, self.own.size)
        )
        full = np.full((self.X_own.shape[0], n_features), np.nan)
        full[:, self.own] = self.X_own
        full_valid = None
        if self.X_valid_own is not None:
            full_valid = np.full((self.X_valid_own.shape[0], n_features), np.nan)
            full_valid[:, self.own] = self.X_valid_own
        super().__init__(full, y, row_ids=row_ids, X_valid=full_valid, y_valid=y_valid)
        self.holder = np.full(n_features, "", dtype=object)  # "" = the label holder
        self.local = np.zeros(n_features, dtype=np.int64)  # position in the holder's own features
        self.local[self.own] = np.arange(self.own.size)
        for o, idx in self.owners.items():
            self.holder[idx] = o
            self.local[idx] = np.arange(idx.size)
        self.keys = keys
        self.cipher = cipher
        self.ask = ask
        self._pending: list[tuple] = []  # owners' splits, sent with the next request
        self._kept_scores = False  # scores restored from disk: the next replay walks no tree

    # -- bins -------------------------------------------------------------
    def agree_bins(self, ranges, *, categorical, max_bin: int, n_grid: int) -> binning.BinMapper:
        """Own features binned here, every owner's by the owner (only their bin counts arrive)."""
        mask = np.asarray(categorical, dtype=bool)
        declared = None if ranges is None else np.asarray(ranges, dtype=np.float64).reshape(-1, 2)
        pick = (lambda idx: None) if declared is None else (lambda idx: declared[idx])
        self._own_mapper = binning.fit_bins(
            self.X_own, max_bin=max_bin, categorical=mask[self.own], n_grid=n_grid, ranges=pick(self.own)
        )
        names = list(self.owners)
        answers = self.ask(
            [
                (o, "owner_bins", [pick(self.owners[o]), mask[self.owners[o]]], {"max_bin": max_bin, "n_grid": n_grid})
                for o in names
            ]
        )
        parts = [(self.own, self._own_mapper)]
        for o, n_bins in zip(names, answers):
            idx = self.owners[o]
            n_bins = np.asarray(n_bins, dtype=np.int32).ravel()
            if n_bins.shape != idx.shape or (n_bins < 1).any() or (n_bins > max_bin).any():
                raise PartyError(f"party {o}: owner_bins answered {n_bins.tolist()[:8]}; expected {idx.size} counts")
            parts.append((idx, binning.hidden_mapper(n_bins, mask[idx], max_bin=max_bin)))
        return binning.join_mappers(parts, self.X.shape[1])

    def set_bins(self, mapper: binning.BinMapper, *, parallel: bool = True) -> None:
        """Bin its own rows; owners' features hold the NaN bin until a split writes its answer there."""
        self._enter("set_bins")
        nan = mapper.nan_bin

        def full(X_own):
            out = np.full((self.X.shape[1], X_own.shape[0]), nan, dtype=X_BINNED_DTYPE)
            out[self.own] = binning.bin_columns(X_own, self._own_mapper, parallel=parallel)
            return out

        LocalRows.__init__(self, full(self.X_own), max_bin=mapper.max_bin, parallel=parallel)
        self.bins_valid_ = None if self.X_valid_own is None else full(self.X_valid_own)
        self.mapper_ = mapper
        self._cells = mapper.n_bins.astype(np.int64) + 1

    # -- a round ---------------------------------------------------------
    def begin_round(self, iteration: int, trees) -> np.ndarray:
        self._flush()
        return super().begin_round(iteration, trees)

    def replay(self, rounds) -> np.ndarray:
        self._flush()
        if self._kept_scores:  # a rejoin: the scores come from the label holder's disk, no tree is walked again
            self._kept_scores = False
            self._enter("replay")
            return self._gradients()
        return super().replay(rounds)

    def keep_scores(self, scores: np.ndarray, scores_valid: np.ndarray | None) -> None:
        """Scores saved after a past round (shape (n_trees, n_rows) and (n_trees, n_valid)); the next
        :meth:`replay` keeps them instead of walking the trees (whose owners' tests would be asked again)."""
        self.scores_ = np.array(scores, dtype=np.float64)
        if scores_valid is not None:
            self.scores_valid_ = np.array(scores_valid, dtype=np.float64)
        self._kept_scores = True

    def rewind(self, scores: np.ndarray, scores_valid: np.ndarray | None) -> np.ndarray:
        """Back to the start of a round that did not finish (an owner failed in it): its scores, fresh gradients.

        Returns the gradient bounds, those the round started with.
        """
        self._pending = []
        self.partitions_ = []
        self.scores_ = scores
        if scores_valid is not None:
            self.scores_valid_ = scores_valid
        self.stage_ = READY
        return super().begin_round(0, None)

    def finish(self, trees) -> None:
        self._flush()
        super().finish(trees)
        close = getattr(self.keys, "close", None)
        if close is not None:  # the key's worker pool and any randomisers made ahead: no tree needs them now
            close()

    def start_trees(self, iteration: int, grad_scales, hess_scales, *, count_bits: int, max_nodes: int) -> None:
        """The engine's fixed-point gradients, then each tree's encrypted once and sent to every owner.

        The layout's bounds are a priori (:func:`layout_bounds`), so the
        header the owners read tells them nothing about this round's
        gradients. Once sent, the next round's randomisers are started in the
        key's worker pool while the owners work.
        """
        super().start_trees(iteration, grad_scales, hess_scales, count_bits=count_bits, max_nodes=max_nodes)
        if not self.owners:
            return
        assert self._g is not None and self._h is not None  # set by start_trees
        c, public = self.cipher, self.keys.public  # the keys encrypt fastest (CRT); the public key travels
        h_all = self._h >> count_bits if count_bits else self._h
        n_trees, n = self._g.shape
        grad_bound, hess_bound = layout_bounds(n, count_bits)
        workers = workers_for(n)
        rows = []
        for k in range(n_trees):
            g, h = np.ascontiguousarray(self._g[k]), np.ascontiguousarray(h_all[k])
            enc = c.encrypt_rows(
                self.keys, g, h, grad_bound=grad_bound, hess_bound=hess_bound, max_rows=n, workers=workers
            )
            rows.append(enc.to_array())
        self._send_rows(public.to_bytes(), rows)
        if iteration + 1 < self.params_.num_boost_round and hasattr(self.keys, "prepare"):
            self.keys.prepare(n, workers=workers, batches=n_trees)

    def _send_rows(self, key: bytes, rows: list[np.ndarray]) -> None:
        """The round's row arrays to every owner: in one request if they fit :attr:`message_bytes`, else in chunks.

        A chunk is ``rows[tree][offset : offset + m]`` with ``part = [tree, trees, offset, total]``; every
        owner's copy of it goes in one request batch, so ``m`` rows times the owners fit the limit.
        """
        owners = list(self.owners)
        room = self.message_bytes - MESSAGE_HEADROOM
        if sum(a.nbytes for a in rows) * len(owners) <= room:
            self.ask([(o, "owner_gradients", [key, rows], {}) for o in owners])
            return
        for k, arr in enumerate(rows):
            per = max(1, room // (len(owners) * max(1, arr.strides[0])))
            for offset in range(0, arr.shape[0], per):
                part = [k, len(rows), offset, arr.shape[0]]
                chunk = [arr[offset : offset + per]]
                self.ask([(o, "owner_gradients", [key, chunk, part], {}) for o in owners])

    def histograms(self, node_ids: np.ndarray) -> np.ndarray:
        """Own features' histograms from its rows, each owner's decrypted from its encrypted answer."""
        self._flush()
        node_ids = np.asarray(node_ids, dtype=np.int64).ravel()
        out = super().histograms(node_ids)
        if not self.owners:
            return out
        trees = node_ids // NODE_STRIDE
        rows = [np.asarray(self.leaf_rows(nid), dtype=np.int32) for nid in node_ids]
        names = list(self.owners)
        answers = self.ask([(o, "owner_histograms", [trees, rows], {}) for o in names])
        c, public, nan = self.cipher, self.keys.public, self.max_bin
        for o, packed in zip(names, answers):
            idx = self.owners[o]
            cells = self._cells[idx]
            ends = np.cumsum(cells)
            if len(packed) != node_ids.shape[0]:
                raise PartyError(f"party {o}: owner_histograms answered {len(packed)} nodes of {node_ids.shape[0]}")
            for j, arr in enumerate(packed):
                fields = c.decrypt_histograms(self.keys, c.PackedHistograms.from_array(public, np.asarray(arr)))
                for field, values in zip((GRAD, HESS, COUNT), fields):
                    values = np.asarray(values, dtype=np.int64)
                    if values.shape != (int(ends[-1]),):
                        raise PartyError(f"party {o}: owner_histograms answered {values.shape[0]} cells")
                    for f, end, n in zip(idx, ends, cells):
                        block = values[end - n : end]
                        out[j, f, : n - 1, field] = block[:-1]
                        out[j, f, n - 1 : nan, field] = 0
                        out[j, f, nan, field] = block[-1]
        return out

    def apply_split(self, node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id) -> None:
        self._enter("apply_split")
        if not self.holder[int(feature)]:
            LocalRows.apply_split(self, node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id)
            return
        self._pending.append((node_id, int(feature), bin_threshold, default_left, cat_bitset, left_id, right_id))

    def _flush(self) -> None:
        """Owners' splits queued since the last request: one batch to the owners, then the partitions follow."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        rows = [np.array(self.leaf_rows(s[0]), dtype=np.int32) for s in pending]
        requests = [
            (self.holder[f], "owner_split", [r, int(self.local[f]), int(b), bool(d), bits], {})
            for (_, f, b, d, bits, _, _), r in zip(pending, rows)
        ]
        answers = self.ask(requests)
        for (node_id, f, _, _, _, left_id, right_id), r, bits in zip(pending, rows, answers):
            left = unpack_mask(bits, r.shape[0])
            col = self.bins[f]
            col[r] = np.where(left, 0, 1)
            tree, local = split_node_id(node_id)
            self.partitions_[tree].split(
                local, col, 0, False, None, split_node_id(left_id)[1], split_node_id(right_id)[1], self.max_bin
            )

    # -- scores of rows outside the partition ------------------------------
    def decisions(self, tree, rows: np.ndarray | None, *, valid: bool) -> dict[int, np.ndarray]:
        """Every split's go-left test for some rows: its own features here, each owner's by the owner."""
        nd = tree.nodes
        bins = self.bins_valid_ if valid else self.bins
        n = bins.shape[1] if rows is None else rows.shape[0]
        sel = slice(None) if rows is None else rows
        out: dict[int, np.ndarray] = {}
        asked: dict[str, list[int]] = {}
        for j in np.flatnonzero(nd["is_leaf"] == 0):
            f = int(nd["feature"][j])
            if self.holder[f]:
                asked.setdefault(self.holder[f], []).append(int(j))
            else:
                out[int(j)] = goes_left(
                    bins[f, sel], nd["bin_threshold"][j], nd["default_left"][j], _bits(tree, j), self.max_bin
                )
        names = list(asked)
        requests = []
        for o in names:
            js = asked[o]
            spec = np.array([[self.local[nd["feature"][j]], nd["bin_threshold"][j], nd["default_left"][j]] for j in js])
            requests.append((o, "owner_decisions", [spec, [_bits(tree, j) for j in js], rows], {"valid": valid}))
        for o, bits in zip(names, self.ask(requests) if requests else []):
            for j, row in zip(asked[o], unpack_mask(bits, n)):
                out[j] = row
        return out

    def _apply_trees(self, trees) -> None:
        """Add the last round's trees to the scores: partition segments, else a walk answered by the holders."""
        for k, tree in enumerate(trees):
            if tree is None:
                continue
            part = self.partitions_[k] if k < len(self.partitions_) else None
            leaves = tree.leaf_ids()
            value = tree.nodes["value"]
            if part is not None:
                add_leaf_values(part, tree.nodes["slot"][leaves], value[leaves], self.scores_[k])
            if part is None or part.indices.shape[0] < self.n_rows:
                covered = np.zeros(self.n_rows, dtype=bool)
                if part is not None:
                    covered[part.indices] = True
                rest = np.flatnonzero(~covered).astype(np.int64)
                if rest.size:
                    leaf = leaves_from_decisions(tree, self.decisions(tree, rest, valid=False), rest.size)
                    self.scores_[k, rest] += value[leaf]
            if self.y_valid is not None and self.y_valid.shape[0]:
                n = self.y_valid.shape[0]
                self.scores_valid_[k] += value[leaves_from_decisions(tree, self.decisions(tree, None, valid=True), n)]


def layout_bounds(n_rows: int, count_bits: int) -> tuple[int, int]:
    """A priori bounds on one row's fixed-point ``|grad|`` and ``hess``, from what every owner knows.

    The engine picks each scale ``s`` with ``n_rows * bound * s < 2**62``
    (:func:`~fedmine.gbdt.quantize.choose_scale`; the hessian's bound times
    ``2**count_bits`` when packed), so ``|round(g s)| <= ceil(2**62 / n_rows)``
    and ``round(h s) <= ceil(2**(62 - count_bits) / n_rows)`` whatever the
    round's gradients are: the encrypted rows' header carries only these.
    """
    n = max(int(n_rows), 1)
    return -(-(1 << SUM_BITS) // n), -(-(1 << (SUM_BITS - int(count_bits))) // n)


def _bits(tree, j: int) -> np.ndarray | None:
    nd = tree.nodes
    return tree.cat_bitsets[int(nd["cat_index"][j])].copy() if nd["is_categorical"][j] else None


def _training(training_id: str | None) -> dict[str, str]:
    """The keyword naming the training whose bins an owner answers with (none: the owner's in memory)."""
    return {} if training_id is None else {"training_id": str(training_id)}


def _raw(scores: np.ndarray, num_class: int) -> np.ndarray:
    return scores[0] if num_class == 1 else scores.T


class LabelHolder:
    """The label holder's training: the vertical model and, beside it, its own columns alone.

    Parameters
    ----------
    name : the organisation's name.
    X_own, y, X_valid_own, y_valid : its features and labels of the shared rows (train, validation).
    own : positions of its features in the joined order.
    owners : each owner's feature positions.
    feature_names : the joined feature names.
    categorical : joined positions of categorical features.
    objective, num_class : the federation's.
    cipher : the homomorphic scheme (default: Paillier).
    key_bits : modulus bits of its key.
    row_ids : ndarray of shape (n_rows,), uint64, optional
        Bagging ids of the training rows (the same at every organisation).
    message_bytes : the largest message to the coordinator (see :class:`VerticalRows`).
    """

    def __init__(
        self,
        name: str,
        X_own,
        y,
        X_valid_own,
        y_valid,
        *,
        own,
        owners: dict[str, np.ndarray],
        feature_names: list[str],
        categorical: list[int],
        objective: str,
        num_class: int,
        cipher: Any = None,
        key_bits: int = DEFAULT_KEY_BITS,
        row_ids=None,
        message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.name = name
        self.message_bytes = int(message_bytes)
        self.row_ids = row_ids
        self.objective, self.num_class = objective, num_class
        self.feature_names = list(feature_names)
        self.categorical = list(categorical)
        self.own = np.asarray(own, dtype=np.int64)
        self.owners = {o: np.asarray(i, dtype=np.int64) for o, i in owners.items()}
        self.cipher = cipher if cipher is not None else default_cipher()
        self._data = (X_own, y, X_valid_own, y_valid)
        self.key_bits = int(key_bits)
        self.trainer_: Trainer | None = None
        self.alone_: Trainer | None = None
        self.model_: Model | None = None
        self._open: tuple | None = None  # the scores a round started from, until it finishes
        self.rounds_ = 0
        self._kept: dict[str, Any] | None = None  # what predicting needs besides the model (:meth:`predict_state`)

    @classmethod
    def from_predict_state(
        cls,
        name: str,
        kept: dict[str, Any],
        *,
        own,
        owners: dict[str, np.ndarray],
        feature_names: list[str],
        categorical: list[int],
        objective: str,
        num_class: int,
        cipher: Any = None,
    ) -> LabelHolder:
        """A label holder that only predicts: the model and maps of :meth:`predict_state`, read from its disk.

        It holds no rows and no key (``model`` and ``predict`` need neither).
        """
        X = np.empty((0, len(own)))
        holder = cls(
            name,
            X,
            np.empty(0),
            X,
            np.empty(0),
            own=own,
            owners=owners,
            feature_names=feature_names,
            categorical=categorical,
            objective=objective,
            num_class=num_class,
            cipher=cipher,
        )
        fields = dict(kept["model"])
        holder.model_ = Model(**fields)
        holder._kept = {k: kept[k] for k in ("own_mapper", "holder", "local", "nan_bin")}
        holder._kept["holder"] = np.array([str(h) for h in kept["holder"]], dtype=object)
        holder._kept["local"] = np.asarray(kept["local"], dtype=np.int64)
        if holder.model_.n_features != len(feature_names) or holder._kept["local"].shape != (len(feature_names),):
            raise PartyError(
                f"party {name}: the kept model has {holder.model_.n_features} features, the config {len(feature_names)}"
            )
        return holder

    def begin(self, ask: Ask, params, *, ranges=None) -> None:
        """A fresh key pair, the joined bins and initial score; the same for its own columns alone."""
        X_own, y, X_valid_own, y_valid = self._data
        keys = self.cipher.HomomorphicKeys.generate(bits=self.key_bits)
        self.rows_ = VerticalRows(
            X_own,
            y,
            own=self.own,
            owners=self.owners,
            n_features=len(self.feature_names),
            X_valid_own=X_valid_own,
            y_valid=y_valid,
            keys=keys,
            cipher=self.cipher,
            ask=ask,
            row_ids=self.row_ids,
            message_bytes=self.message_bytes,
        )
        self.model_ = None
        self._kept = None
        self.trainer_ = Trainer(
            self.rows_, params, categorical=self.categorical, feature_names=self.feature_names, ranges=ranges
        )
        self.trainer_.start()
        own_cat = [i for i, f in enumerate(self.own) if int(f) in set(self.categorical)]
        alone = EngineState(X_own, y, row_ids=self.row_ids, X_valid=X_valid_own, y_valid=y_valid)
        self.alone_ = Trainer(
            alone,
            params,
            categorical=own_cat,
            feature_names=[self.feature_names[i] for i in self.own],
            ranges=None if ranges is None else np.asarray(ranges, dtype=np.float64).reshape(-1, 2)[self.own],
        )
        self.alone_.start()
        self.rounds_ = 0  # rounds asked for (one coordinator round each, grown or not once done)
        self._open = None

    def round(self, ask: Ask) -> dict[str, Any]:
        """One round of the vertical model (and of its own columns alone); validation metrics of both."""
        if self.trainer_ is None or self.alone_ is None:
            raise PartyError(f"party {self.name}: vertical_round before vertical_begin")
        rows = self.rows_
        rows.ask = ask
        self.model_ = None  # a model made before this round is not the training's any more
        if self._open is not None:  # the last round did not finish (an owner failed): grow it again from its start
            rows.rewind(*self._open)
        if not self.trainer_.done:
            self._open = (rows.scores_.copy(), getattr(rows, "scores_valid_", None))
            if self._open[1] is not None:
                self._open = (self._open[0], self._open[1].copy())
            self.trainer_.step()  # on failure the trainer forgets the round; the scores are rewound next time
            self._open = None
        if not self.alone_.done:
            self.alone_.step()
        self.rounds_ += 1
        return self.progress()

    def progress(self) -> dict[str, Any]:
        """Validation metrics of the model and of its own columns alone, whether it is done, its trees."""
        assert self.trainer_ is not None and self.alone_ is not None
        return {
            "metrics": self._metrics(self.rows_),
            "alone": self._metrics(self.alone_.party),
            "done": bool(self.trainer_.done),
            "trees": len(self.trainer_.trees_),
        }

    def checkpoint(self) -> dict[str, Any]:
        """Its state after a round (for its own disk): both loops with their trees, the vertical scores.

        The scores are kept so that a restore walks no tree again (the owners'
        tests of every training row would be asked for once more).
        """
        assert self.trainer_ is not None and self.alone_ is not None
        return {
            "trainer": list(self.trainer_.checkpoint()),
            "alone": list(self.alone_.checkpoint()),
            "scores": self.rows_.scores_,
            "scores_valid": getattr(self.rows_, "scores_valid_", None),
            "rounds": self.rounds_,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from :meth:`checkpoint` after :meth:`begin`: the same loops, trees and scores."""
        assert self.trainer_ is not None and self.alone_ is not None
        self.rows_.keep_scores(saved["scores"], saved["scores_valid"])
        self.trainer_.restore(*saved["trainer"])
        self.alone_.restore(*saved["alone"])
        self.rows_._kept_scores = False
        self.rounds_ = int(saved["rounds"])
        self._open = None

    def _metrics(self, state: EngineState) -> dict[str, float]:
        y = state.y_valid
        if y is None or not len(y):
            return {}
        return metrics.exact(y, _raw(state.scores_valid_, self.num_class), self.objective)

    def model(self, ask: Ask | None = None, *, publish: bool = False, training_id: str | None = None) -> Model:
        """The vertical model: owners' thresholds NaN (they keep them) unless ``publish`` asks the owners for them.

        ``training_id`` names the training the model is of, so that an owner
        answers from that training's bins (in memory or on its disk).
        """
        if self.model_ is None:
            if self.trainer_ is None:
                raise PartyError(f"party {self.name}: no vertical model before vertical_begin")
            self.model_ = self.trainer_.finish()
        kept = self._maps()
        model = copy.deepcopy(self.model_)
        if not publish or not self.owners:
            return model
        assert ask is not None
        names = list(self.owners)
        wanted: dict[str, list[tuple[int, int]]] = {o: [] for o in names}  # (tree, node) per owner, in order
        for t, tree in enumerate(model.trees):
            nd = tree.nodes
            for j in np.flatnonzero((nd["is_leaf"] == 0) & (nd["is_categorical"] == 0)):
                o = kept["holder"][int(nd["feature"][j])]
                if o:
                    wanted[o].append((t, int(j)))
        requests = []
        for o in names:
            feats = [int(kept["local"][model.trees[t].nodes["feature"][j]]) for t, j in wanted[o]]
            bins = [int(model.trees[t].nodes["bin_threshold"][j]) for t, j in wanted[o]]
            args = [np.array(feats, dtype=np.int64), np.array(bins, dtype=np.int64)]
            requests.append((o, "owner_thresholds", args, _training(training_id)))
        infos = list(model.feature_infos)
        for o, answer in zip(names, ask(requests)):
            values = np.asarray(answer["thresholds"], dtype=np.float64)
            if values.shape != (len(wanted[o]),):
                raise PartyError(f"party {o}: owner_thresholds answered {values.shape[0]} of {len(wanted[o])}")
            for (t, j), v in zip(wanted[o], values):
                model.trees[t].nodes["threshold"][j] = v
            for f, info in zip(self.owners[o], answer["feature_infos"]):
                infos[int(f)] = str(info)
        model.feature_infos = infos
        return model

    def _maps(self) -> dict[str, Any]:
        """Its own features' bins, who holds each feature and where in the holder's features, the NaN bin."""
        if self._kept is None:
            rows = self.rows_
            self._kept = {
                "own_mapper": rows._own_mapper,
                "holder": rows.holder,
                "local": rows.local,
                "nan_bin": rows.max_bin,
            }
        return self._kept

    def predict_state(self) -> dict[str, Any]:
        """What predicting needs, for its own disk (:meth:`from_predict_state` reads it back).

        The model as it holds it (owners' thresholds NaN: they keep them), its
        own features' bin mapper, the holder of every feature (``""``: itself)
        and its position among that holder's features, and the NaN bin.
        Nothing of an owner's that it did not already hold.
        """
        if self.model_ is None:
            raise PartyError(f"party {self.name}: no model to keep: train first")
        kept = self._maps()
        return {
            "model": {f.name: getattr(self.model_, f.name) for f in dataclasses.fields(self.model_)},
            "own_mapper": kept["own_mapper"],
            "holder": [str(h) for h in kept["holder"]],
            "local": np.asarray(kept["local"], dtype=np.int64),
            "nan_bin": int(kept["nan_bin"]),
        }

    def predict(self, ask: Ask, ids: list, lookup: Callable, *, training_id: str | None = None) -> np.ndarray:
        """Raw scores of customers named by id, shape (n, n_trees_per_round).

        ``lookup(ids)`` gives its own feature rows of them (NaN where it does not
        know a customer) ; each owner answers the tests of its splits for the
        same ids from its own rows (missing where it does not know one, so the
        split's default direction applies), with its bins of training
        ``training_id``.
        """
        if self.model_ is None:
            raise PartyError(f"party {self.name}: no model to predict with: train first")
        model = self.model_
        kept = self._maps()
        X_own, _ = lookup(ids)
        n = len(ids)
        bins = binning.bin_columns(np.asarray(X_own, dtype=X_DTYPE).reshape(n, -1), kept["own_mapper"])
        holder, local, nan = kept["holder"], kept["local"], int(kept["nan_bin"])
        decisions: list[dict[int, np.ndarray]] = [{} for _ in model.trees]
        asked: dict[str, list[tuple[int, int]]] = {}
        for t, tree in enumerate(model.trees):
            nd = tree.nodes
            for j in np.flatnonzero(nd["is_leaf"] == 0):
                f = int(nd["feature"][j])
                if holder[f]:
                    asked.setdefault(holder[f], []).append((t, int(j)))
                else:
                    decisions[t][int(j)] = goes_left(
                        bins[local[f]], nd["bin_threshold"][j], nd["default_left"][j], _bits(tree, j), nan
                    )
        names = list(asked)
        requests = []
        for o in names:
            spec = np.array(
                [
                    [
                        local[model.trees[t].nodes["feature"][j]],
                        model.trees[t].nodes["bin_threshold"][j],
                        model.trees[t].nodes["default_left"][j],
                    ]
                    for t, j in asked[o]
                ],
                dtype=np.int64,
            ).reshape(-1, 3)
            bitsets = [_bits(model.trees[t], j) for t, j in asked[o]]
            requests.append((o, "owner_predict", [list(ids), spec, bitsets], _training(training_id)))
        for o, answer in zip(names, ask(requests) if requests else []):
            for (t, j), row in zip(asked[o], unpack_mask(answer["bits"], n)):
                decisions[t][j] = row
        k = model.n_trees_per_round
        raw = np.repeat(np.asarray(model.init_scores, dtype=np.float64)[:, None], n, axis=1)
        for t, tree in enumerate(model.trees):
            raw[t % k] += tree.nodes["value"][leaves_from_decisions(tree, decisions[t], n)]
        return raw.T
