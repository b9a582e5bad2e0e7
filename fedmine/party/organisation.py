from __future__ import annotations

import hashlib
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np

from fedmine import metrics, protocol
from fedmine.errors import DataError, PartyError
from fedmine.gbdt.histogram import compact_histograms, pack_fields, reachable_cells
from fedmine.gbdt.model import Tree
from fedmine.gbdt.modeltext import read_trees
from fedmine.gbdt.params import check_lightgbm_params
from fedmine.gbdt.predictor import predict_raw
from fedmine.gbdt.state import EngineState
from fedmine.party.policy import PartyPolicy
from fedmine.protocol import NEW, ORGANISATION, SUMMED, ProtocolError
from fedmine.schema import HarmonisedFrame

_log = logging.getLogger("fedmine.party")

# The metrics LightGBM records for each objective: fedmine.metrics' table (the primary first).
LGB_METRICS = metrics.METRICS


def global_row_ids(org: str, n_rows: int, *, start: int = 0) -> np.ndarray:
    """Row ids unique across the federation: ``crc32(org) << 32 | local index``.

    The engine samples rows for bagging from a hash of the row id, so the same
    ids give the same sample pooled or federated. ``start``: the local index
    of the first row (a partition of the organisation's training rows).
    """
    local = np.arange(start, start + n_rows, dtype=np.uint64)
    return (np.uint64(zlib.crc32(org.encode())) << np.uint64(32)) | local


@dataclass
class TrainValidRows:
    """One organisation's rows split into training and validation rows (they stay in the party)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray


def split_rows(data: HarmonisedFrame, *, fraction: float, seed: int, org: str) -> TrainValidRows:
    """Seeded train/validation split; the organisation's name enters the seed.

    Each organisation draws its own permutation from ``(seed, crc32(org))`` so
    the split does not depend on the order in which organisations are listed.
    """
    is_valid = validation_mask(data.rows, fraction=fraction, seed=seed, org=org)
    valid, train = np.flatnonzero(is_valid), np.flatnonzero(~is_valid)
    return TrainValidRows(data.X[train], data.y[train], data.X[valid], data.y[valid])


def validation_mask(n: int, *, fraction: float, seed: int, org: str) -> np.ndarray:
    """Which of an organisation's ``n`` rows are validation rows: bool of shape (n,), :func:`split_rows`' draw."""
    rng = np.random.default_rng([seed, zlib.crc32(org.encode())])
    order = rng.permutation(n)
    n_valid = round(n * fraction)
    if fraction > 0 and n_valid == 0 and n > 1:
        n_valid = 1
    mask = np.zeros(n, dtype=bool)
    mask[order[:n_valid]] = True
    return mask


def fingerprint(rows: TrainValidRows) -> str:
    """A digest of an organisation's prepared rows (never the rows): its training and validation rows, labels.

    The coordinator compares it when a party rejoins or a training resumes, so
    a source that changed since the training started is noticed.
    """
    h = hashlib.sha256(b"fedmine rows v1")
    for a in (rows.X_train, rows.y_train, rows.X_valid, rows.y_valid):
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def request_digest(name: str, args: tuple, kwargs: dict) -> str:
    """A digest of one request as the party received it (bound into the masks of its answer)."""
    from fedmine.transport import wire

    return hashlib.sha256(wire.encode((name, list(args), dict(kwargs)))).hexdigest()[:32]


#: Harmonisation report entries that are counts and rates (they may leave the party).
_SHARED_REPORT_KEYS = ("rows", "missing_rate", "out_of_range", "absent_features")


def shared_report(report: dict[str, Any]) -> dict[str, Any]:
    """The harmonisation report without raw values: counts and rates only (no examples, no source column names)."""
    out = {k: report[k] for k in _SHARED_REPORT_KEYS if k in report}
    if "unknown_categories" in report:
        out["unknown_categories"] = {
            f: {"count": v.get("count", 0), "policy": v.get("policy")} for f, v in report["unknown_categories"].items()
        }
    if "unmapped_columns" in report:
        out["unmapped_columns"] = len(report["unmapped_columns"])
    if "problems" in report:
        out["problems"] = len(report["problems"])
    return out


def _check_trees(call: str, org: str, args: tuple, n_features: int) -> None:
    """Trees sent to the party split on its features, with known missing rules (nothing reads out of bounds)."""
    found: list = []
    stack = list(args)
    while stack:
        value = stack.pop()
        if isinstance(value, Tree):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    for tree in found:
        nd = tree.nodes
        inner = nd["is_leaf"] == 0
        if np.any(nd["feature"][inner] >= n_features) or np.any(nd["missing"] > 2):
            raise PartyError(
                f"party {org}: {call} refused: a tree splits on feature "
                f"{int(nd['feature'][inner].max())} or has an unknown missing rule; "
                f"this organisation has {n_features} features"
            )


def _same_bins(a: Any, b: Any) -> bool:
    return all(
        np.array_equal(np.asarray(getattr(a, k)), np.asarray(getattr(b, k)), equal_nan=True)
        for k in ("edges", "n_bins", "categorical")
    )


class Party:
    """An organisation's party: it answers the protocol table's calls from its own rows.

    Parameters
    ----------
    name : the organisation's name.
    rows : its training and validation rows (canonical features, encoded label).
    objective : ``binary``, ``multiclass`` or ``regression``.
    num_class : trees per iteration (1 unless multiclass).
    feature_names : canonical feature names, in column order.
    categorical : indices of categorical columns.
    report : the harmonisation report (rows, missing rates); only its counts and rates leave the party.
    policy : what this organisation answers, from its own config (:class:`~fedmine.party.policy.PartyPolicy`);
        None enforces the protocol's stages only.
    """

    #: its rows and engine are in the caller's process (not behind a server, not on a cluster)
    in_process: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        rows: TrainValidRows,
        *,
        objective: str,
        num_class: int,
        feature_names: list[str],
        categorical: list[int],
        report: dict[str, Any] | None = None,
        policy: PartyPolicy | None = None,
    ) -> None:
        self.name = name
        self.objective = objective
        self.num_class = num_class
        self.feature_names = feature_names
        self.categorical = categorical
        self.report = report or {}
        self._data = rows
        self.stage_ = NEW
        self._step = 0
        self._train_raw: np.ndarray | None = None
        self._valid_raw: np.ndarray | None = None
        self._engine: EngineState | None = None
        self._keypair = None
        self._training_id: str | None = None
        self._key_session = ""
        self._masker = None
        self._masked = 0  # masked messages sent: the next message id
        self.policy = policy
        self._mapper = None  # the bins of this training: set once
        self.fingerprint_ = fingerprint(rows)
        self.output_dir: Path | None = None  # where this organisation's own files go (explanation plots)
        self._shap: tuple[str, np.ndarray] | None = None  # (model digest, SHAP values of all rows)
        self.own_history_: list[dict[str, float]] = []  # organisation_metrics: own: what it logged

    @classmethod
    def for_organisation(cls, cfg: Any, org: str, data: HarmonisedFrame, *, enforce_policy: bool = True) -> Party:
        """``org``'s party over its harmonised rows: the seeded train/validation split, its own config's policy."""
        t = cfg.training
        rows = split_rows(data, fraction=t.validation_fraction, seed=t.seed, org=org)
        categorical = [i for i, f in enumerate(cfg.features.values()) if f.type == "category"]
        policy = PartyPolicy.from_config(cfg, org) if enforce_policy else None
        return cls(
            org,
            rows,
            objective=cfg.objective,
            num_class=cfg.num_class,
            feature_names=data.feature_names,
            categorical=categorical,
            report=data.report,
            policy=policy,
        )

    # -- the one dispatch point ---------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Answer one call of the protocol table.

        The call must be in the table and accepted in the current stage
        (organisation calls: the party's stage; engine calls: its engine
        state's). Under secure aggregation every answer the table marks
        ``summed`` leaves masked: each looks uniform on its own; the masks
        cancel in the sum over organisations.
        """
        entry = protocol.call(name)
        if self.policy is not None:
            self._check_policy(entry, args, kwargs)
        if entry.side == ORGANISATION:
            if not entry.accepts(self.stage_):
                raise ProtocolError(
                    f"{name} is not accepted in stage {self.stage_!r}; it needs one of {list(entry.needs)}"
                )
            answer = getattr(self, name)(*args, **kwargs)
            if entry.leads_to is not None:
                self.stage_ = entry.leads_to
        else:
            answer = getattr(self.engine_state(), name)(*args, **kwargs)
            if name == "set_bins":
                self._mapper = args[0] if args else kwargs["mapper"]
                compact = getattr(self.engine_state(), "answer_compact", None)
                if compact is not None:  # the engine builds the wire layout itself, from its accumulators
                    compact(reachable_cells(self._mapper.n_bins, self._mapper.max_bin))
            elif name in ("histograms", "split_histograms") and answer.ndim == 4:
                # each feature's own bins: smaller messages and masks
                mapper, bits = self._mapper, self.engine_state()._count_bits
                answer = compact_histograms(answer, reachable_cells(mapper.n_bins, mapper.max_bin))
                if bits:  # hess and count in one int64, as the engine accumulates them: a third fewer bytes
                    answer = pack_fields(answer, bits)
            elif name == "feature_ranges" and self.policy is not None:
                answer = np.where(self.policy.declared[:, None], np.nan, answer)  # declared: the schema's, not ours
        if entry.release == SUMMED and self._masker is not None:
            plain = np.ascontiguousarray(answer, dtype=np.int64)
            # the masks of a message are bound to the request it answers: parties sent different
            # requests mask with different streams, and their sum is noise, not anyone's data
            # (in a batch, to the whole batch as well: splits and trees that travel with a histograms request)
            message = f"{name}:{self._masked}:{request_digest(name, args, kwargs)}{getattr(self, '_binding', '')}"
            fresh = name in ("histograms", "split_histograms") and plain is answer  # made for this answer alone
            answer = self._masker.mask(plain, message, in_place=fresh).view(np.int64).reshape(plain.shape)
            self._masked += 1
        return answer

    def _refuse(self, name: str, why: str) -> PartyError:
        return PartyError(f"party {self.name}: {name} refused: {why}")

    def _check_policy(self, entry: protocol.Call, args: tuple, kwargs: dict) -> None:
        """This organisation's own limits (its config's), before any work is done."""
        policy, name = self.policy, entry.name
        if entry.release == SUMMED and policy.secure_aggregation and self._masker is None:
            raise self._refuse(
                name,
                "this organisation's config requires secure aggregation and no key exchange "
                "has happened in this training",
            )
        if policy.epsilon is not None:
            self._check_dp(entry, args, kwargs)
        if name in ("histograms", "split_histograms"):
            if policy.epsilon is not None and getattr(self.engine_state(), "_noise", None) is None:
                raise self._refuse(
                    name,
                    f"this organisation's config sets privacy.epsilon={policy.epsilon:g}; "
                    "no histogram leaves without its noise share (set_noise first)",
                )
            node_ids = np.asarray(args[-1] if args else kwargs["node_ids"]).ravel()
            if node_ids.shape[0] > policy.max_nodes_per_request:
                raise self._refuse(
                    name, f"{node_ids.shape[0]} nodes in one request; at most {policy.max_nodes_per_request}"
                )
            state = self.engine_state()
            size = node_ids.shape[0] * state.n_features * (state.max_bin + 1) * 3 * 8 if state.bins is not None else 0
            if size > policy.max_answer_bytes:
                raise self._refuse(name, f"the answer would be {size} bytes; at most {policy.max_answer_bytes}")
        elif (
            name == "leaf_sums" and policy.epsilon is not None and getattr(self.engine_state(), "_noise", None) is None
        ):
            raise self._refuse(
                name,
                f"this organisation's config sets privacy.epsilon={policy.epsilon:g}; "
                "no leaf sum leaves without its noise share (set_noise first)",
            )
        elif name == "set_bins" and self._mapper is not None:
            mapper = args[0] if args else kwargs["mapper"]
            if not _same_bins(mapper, self._mapper):
                raise self._refuse(name, "bins are set once per training; these differ from the training's bins")
        elif name == "set_noise":
            if kwargs.get("seed") is not None:
                raise self._refuse(name, "noise is drawn from this party's own randomness; a seed is not accepted")
            self._check_noise(name, args[0] if args else kwargs.get("variances"), kwargs.get("n_parties", 1))
        elif name == "secure_restart":
            remaining = list(args[0] if args else kwargs["remaining"])
            if len(set(remaining) & policy.peers) < policy.min_parties or not set(remaining) <= policy.peers:
                raise self._refuse(
                    name,
                    f"{len(remaining)} remaining organisations ({', '.join(map(str, remaining))}); "
                    f"this organisation's config needs at least {policy.min_parties} of its own",
                )
        elif name in ("own_metrics", "local_baseline") and not policy.shares_metrics:
            raise self._refuse(
                name, "this organisation's config sets privacy.organisation_metrics: own; its metrics stay with it"
            )
        elif name == "row_counts" and not policy.shares_rows:
            raise self._refuse(
                name, "this organisation's config sets privacy.organisation_metrics: own; its row counts are summed"
            )
        elif name in ("add_trees", "begin_round", "replay", "finish"):
            _check_trees(name, self.name, args, len(self.feature_names))
        elif name in ("train_local", "local_baseline"):
            rounds = int(args[1] if len(args) > 1 else kwargs["num_boost_round"])
            cap = policy.local_rounds if name == "train_local" else policy.rounds
            if not 1 <= rounds <= cap:
                raise self._refuse(name, f"{rounds} rounds; this organisation's config allows 1 to {cap}")

    def _check_noise(self, name: str, variances: Any, n_parties: Any) -> None:
        """A noise request: on under the config's epsilon, positive variances, shared by 1 to K parties."""
        policy = self.policy
        if policy.epsilon is not None and variances is None:
            raise self._refuse(
                name,
                f"this organisation's config sets privacy.epsilon={policy.epsilon:g}; noise cannot be switched off",
            )
        if variances is not None and not np.all(np.asarray(variances, dtype=np.float64) > 0):
            raise self._refuse(name, f"noise variances must be positive, got {np.asarray(variances).tolist()}")
        if not 1 <= int(n_parties) <= len(policy.peers):
            raise self._refuse(name, f"n_parties={n_parties}: the federation has {len(policy.peers)} organisations")

    #: Calls whose answers are exact statistics of the rows: none leaves under privacy.epsilon.
    _EXACT_UNDER_DP: ClassVar[dict[str, str]] = {
        "feature_ranges": "feature ranges are exact (declare features.<name>.min and .max)",
        "evaluate": "validation sums are exact (each organisation logs its own metrics: log_metrics)",
        "metric_stats": "validation statistics are exact",
        "own_metrics": "its metrics are exact and stay with it",
        "local_baseline": "its local-only metrics are exact and stay with it",
        "row_counts": "its row counts are exact and stay with it",
    }

    #: Calls of the commands ``privacy.outside_budget`` may allow under epsilon, by command.
    _OUTSIDE_BUDGET: ClassVar[dict[str, str]] = {
        "profile_ranges": "profile",
        "profile_counts": "profile",
        "profile_view": "profile",
        "shap_sums": "explain",
        "shap_plots": "explain",
    }

    def _check_dp(self, entry: protocol.Call, args: tuple, kwargs: dict) -> None:
        """Under the config's ``privacy.epsilon`` every release carries this party's noise share, or is refused."""
        policy, name = self.policy, entry.name
        epsilon = f"this organisation's config sets privacy.epsilon={policy.epsilon:g}"
        if name in self._EXACT_UNDER_DP:
            raise self._refuse(name, f"{epsilon}; {self._EXACT_UNDER_DP[name]}")
        command = self._OUTSIDE_BUDGET.get(name)
        if command is not None and command not in policy.outside_budget:
            raise self._refuse(
                name,
                f"{epsilon}; fedmine {command}'s answers are exact (allowed by privacy.outside_budget: [{command}])",
            )
        if name == "label_totals":
            variances = args[0] if args else kwargs.get("variances")
            if variances is None:
                raise self._refuse(name, f"{epsilon}; no label totals leave without their noise share (variances)")
            self._check_noise(name, variances, args[1] if len(args) > 1 else kwargs.get("n_parties", 1))
            if self.objective not in ("binary", "multiclass"):
                sent = args[2] if len(args) > 2 else kwargs.get("label_range")
                own = policy.label_range
                if own is None or sent is None or tuple(float(v) for v in sent) != own:
                    raise self._refuse(
                        name,
                        f"{epsilon}; the label range must be its config's privacy.label_min and "
                        f"privacy.label_max ({own}), got {sent}",
                    )
        elif name in ("grid_counts", "label_stats"):
            variance = kwargs.get("variance")
            if variance is None:
                raise self._refuse(name, f"{epsilon}; no {name} leave without their noise share (variance)")
            self._check_noise(name, [variance], kwargs.get("n_parties", 1))
        elif name == "configure":
            g, h = kwargs.get("grad_clip"), kwargs.get("hess_clip")
            G, H = policy.clip_bounds
            if g is None or h is None or not (0 < float(g) <= G and 0 < float(h) <= H):
                raise self._refuse(
                    name,
                    f"{epsilon}; gradients and hessians are clipped to at most its bounds ({G:g}, {H:g}), "
                    f"got grad_clip={g}, hess_clip={h}",
                )

    def batch(self, parts: list) -> list[Any]:
        """Answer several calls of the table in one request, in order: one round trip for all of them.

        Each part goes through :meth:`call` as if sent alone (stage, policy,
        masks bound to that part's request and to the whole batch, so parties
        sent different splits or trees in a batch answer noise), so a batch
        reveals nothing its parts would not. A part that fails fails the batch; the parts before
        it have been applied.
        """
        checked = protocol.check_parts(parts)
        self._binding = ":" + request_digest("batch", (parts,), {})  # every part's masks bound to the whole batch
        try:
            return [self.call(name, *args, **kwargs) for name, args, kwargs in checked]
        finally:
            self._binding = ""

    def begin_training(self, training_id: str) -> None:
        """A new training (or a resumed one): fresh engine state, no keys, no noise, the model followed from scratch."""
        self._training_id = str(training_id)
        self.stage_ = NEW
        self._step = 0
        self._train_raw = self._valid_raw = None
        self._engine = None
        self._keypair = self._masker = None
        self._masked = 0
        self._mapper = None

    def engine_state(self) -> EngineState:
        """The engine's state over this party's rows (``histogram`` strategy), made on first use."""
        if self._engine is None:
            d = self._data
            self._engine = EngineState(
                d.X_train,
                d.y_train,
                row_ids=global_row_ids(self.name, len(d.y_train)),
                X_valid=d.X_valid,
                y_valid=d.y_valid,
            )
        return self._engine

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

    # -- organisation calls (protocol table, side "organisation") ------------
    def where(self) -> str | None:
        """Where the organisation's rows are held, for the operator's console (``None``: in this process)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Feature names, the harmonisation report and a digest of the rows (no counts: :meth:`label_totals`)."""
        if self._train_count() == 0:
            raise DataError(f"organisation {self.name}: no training rows after the validation split")
        report = self.report if self.policy is None else shared_report(self.report)
        if self.policy is not None and self.policy.epsilon is not None:  # counts and rates: not noised, kept here
            _log.info("organisation %s: harmonisation report (kept under privacy.epsilon): %s", self.name, report)
            report = {}
        return {
            "n_features": len(self.feature_names),
            "features": list(self.feature_names),
            "report": report,
            "fingerprint": self.fingerprint_,
        }

    def _train_count(self) -> int:
        return len(self._data.y_train)

    def _label_sum_vector(self) -> np.ndarray:
        """The exact sum of real-valued training labels (:func:`fedmine.metrics.exact_sum_vector`)."""
        return metrics.exact_sum_vector(self._data.y_train)

    def _dp_label_part(self, label_range: Any) -> np.ndarray:
        """The label part of the DP label totals: class counts, or the fixed-point sum of the clipped labels."""
        from fedmine.privacy.dp import label_part

        return label_part(self._data.y_train, self.objective, num_class=self.num_class, label_range=label_range)

    def _label_sums(self) -> np.ndarray:
        y = self._data.y_train
        if self.objective == "multiclass":
            return np.bincount(y.astype(np.int64), minlength=self.num_class).astype(np.float64)
        return np.array([float(y.sum())])

    def label_totals(self, variances=None, n_parties: int = 1, label_range=None) -> np.ndarray:
        """Summable row counts and label sums: int64 ``[n_rows, n_valid, label part]``.

        The label part is the class counts (binary: the positives; multiclass:
        one per class) or, for real-valued labels, the label sum's
        :func:`fedmine.metrics.exact_sum_vector`; the coordinator's
        :func:`~fedmine.coordinator.training.label_totals_values` reads the summed vector.

        Differential privacy: with ``label_range`` a real label's part is the
        fixed-point sum of the labels clipped to it
        (:func:`fedmine.privacy.dp.label_part`); with ``variances`` (rows,
        label: of the summed noise, :func:`~fedmine.privacy.dp.label_totals_sensitivity`)
        the party adds its Skellam share to every entry.
        """
        head = np.array([self._train_count(), len(self._data.y_valid)], dtype=np.int64)
        if variances is None and label_range is None:
            if self.objective in ("binary", "multiclass"):
                part = self._label_sums().astype(np.int64)
            else:
                part = self._label_sum_vector()
            return np.concatenate([head, part])
        from fedmine.privacy import dp

        plain = np.concatenate([head, self._dp_label_part(label_range)])
        if variances is None:
            return plain
        entry = dp.label_totals_variances(variances, len(plain) - 2)
        return plain + dp.skellam_noise(plain.shape, entry, n_parties=int(n_parties))

    def row_counts(self) -> dict[str, Any]:
        """This organisation's own row counts and label sums (disclosed: tree strategies, shared metrics)."""
        return {"n_rows": self._train_count(), "n_valid": len(self._data.y_valid), "label_sums": self._label_sums()}

    def start(self, base_score: np.ndarray) -> None:
        """Begin following a model whose raw score starts at ``base_score``."""
        base = np.asarray(base_score, dtype=np.float64)
        self._train_raw = np.broadcast_to(base, self._shape(len(self._data.y_train))).astype(np.float64).copy()
        self._valid_raw = np.broadcast_to(base, self._shape(len(self._data.y_valid))).astype(np.float64).copy()
        self._step = 0

    def _raw(self, trees: list[Tree], X: np.ndarray) -> np.ndarray:
        """Raw scores of ``trees`` on ``X`` in the shape of the followed scores: (n,) or (n, num_class)."""
        raw = predict_raw(trees, X, n_trees_per_round=self.num_class)
        return raw[0] if self.num_class == 1 else raw.T

    def add_trees(self, step: int, trees: list[Tree] | None) -> None:
        """Add the trees of ``step`` to the scores (idempotent: a repeated step is skipped).

        The trees' outputs are summed in order, then added to each row's score,
        as LightGBM's own prediction of those trees would add them.
        """
        if step <= self._step:
            return  # a retried call: already applied
        if step != self._step + 1:
            raise PartyError(f"party {self.name}: step {step} out of order (last applied {self._step})")
        if trees:
            self._train_raw += self._raw(trees, self._data.X_train)
            if len(self._data.y_valid):
                self._valid_raw += self._raw(trees, self._data.X_valid)
        self._step = step

    def train_local(self, params: dict[str, Any], num_boost_round: int) -> list[Tree]:
        """Trees trained with LightGBM on this party's rows on top of the current scores.

        Returns them as engine tree records (:func:`fedmine.gbdt.modeltext.read_trees`):
        ``num_class`` trees per boosting iteration, in LightGBM's order.
        """
        booster = lgb.train(
            self._lightgbm_params(params),
            self._dataset(self._train_raw.copy()),
            num_boost_round=num_boost_round,
            callbacks=self._time_limit("train_local"),
        )
        return read_trees(booster.model_to_string())

    def _time_limit(self, name: str) -> list:
        """A LightGBM callback that stops local training past the policy's time limit (none without a policy)."""
        if self.policy is None:
            return []
        limit, started = self.policy.train_seconds, time.monotonic()

        def check(env) -> None:
            if time.monotonic() - started > limit:
                raise self._refuse(name, f"stopped after {limit:g} s, this organisation's limit on local training")

        return [check]

    def _lightgbm_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Local LightGBM training's parameters: this organisation's own config's, else the allow-listed ones sent."""
        if self.policy is not None:
            return dict(self.policy.lightgbm_params)
        return check_lightgbm_params(params)

    def secure_setup(self, training_id: str) -> bytes:
        """Make a key pair for this key exchange; answer the public key (the coordinator relays it to the peers).

        ``training_id`` names the exchange (a training, or a rejoin within it) and is bound into every pair key.
        """
        from fedmine.privacy.secure_agg import generate_keypair

        self._keypair = generate_keypair()
        self._key_session = str(training_id)
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
        if self.policy is not None and set(peers) != self.policy.peers:
            extra, missing = sorted(set(peers) - self.policy.peers), sorted(self.policy.peers - set(peers))
            raise self._refuse(
                "secure_peers",
                f"the peers must be this federation's organisations "
                f"({', '.join(sorted(self.policy.peers))}); "
                f"unknown: {extra or 'none'}, missing: {missing or 'none'}",
            )
        self._masker = Masker(self.name, self._keypair, peers, self._key_session)

    def secure_restart(self, remaining: list[str], epoch: int) -> None:
        """Fresh masks among the ``remaining`` parties (a party dropped out); message ids count from 0 again.

        The epoch is bound into every nonce, so ids may repeat in it; counting
        afresh keeps the remaining parties' ids in step whatever each of them
        masked of the round trip that failed (a party asked before the failed
        one answered it, one asked after it was not asked).
        """
        if self._masker is not None:
            self._masker.restart([p for p in remaining if p != self.name], epoch=epoch)
            self._masked = 0

    def _current_valid_raw(self) -> np.ndarray:
        """Raw validation scores of the model this party follows."""
        scores = getattr(self._engine, "scores_valid_", None)
        if scores is not None:  # the engine's model (histogram strategy): (K, n) -> (n,) or (n, K)
            return scores[0] if self.num_class == 1 else scores.T
        return self._valid_raw

    def evaluate(self) -> np.ndarray:
        """Validation sums of the current model, summable (:func:`fedmine.metrics.sum_vector`).

        With ``privacy.organisation_metrics: own`` the party also computes its
        own exact metrics and logs them in its own log (:attr:`own_history_`).
        """
        y, raw = self._data.y_valid, self._current_valid_raw()
        if len(y) == 0:
            return metrics.sum_vector(y, np.zeros(self._shape(0)), self.objective)
        if self.policy is not None and not self.policy.shares_metrics:
            self.log_metrics()
        return metrics.sum_vector(y, raw, self.objective)

    def log_metrics(self) -> None:
        """Compute this organisation's exact validation metrics of the model it follows and log them here.

        Nothing is answered: under ``privacy.epsilon`` (no validation sums
        leave the party) this is how each organisation still sees its figures
        (:attr:`own_history_`, the ``fedmine.party`` log).
        """
        y = self._data.y_valid
        if len(y) == 0:
            return
        own = metrics.exact(y, self._current_valid_raw(), self.objective)
        self.own_history_.append(own)
        _log.info(
            "organisation %s: validation metrics of the global model after evaluation %d: %s",
            self.name,
            len(self.own_history_),
            ", ".join(f"{k}={v:.6g}" for k, v in own.items()),
        )

    def own_metrics(self) -> dict[str, float]:
        """This party's exact metrics of the current model (organisation_metrics: shared)."""
        y = self._data.y_valid
        return metrics.exact(y, self._current_valid_raw(), self.objective) if len(y) else {}

    def local_baseline(self, params: dict[str, Any], num_boost_round: int) -> dict[str, Any]:
        """Train on this party's rows alone: its final metrics and learning curve (no model leaves).

        Without validation rows there is nothing to measure the local model on,
        so none is trained (the gain table's note says why it has no figure).
        """
        d = self._data
        if len(d.y_valid) == 0:
            return {"metrics": {}, "curve": {}, "rows_train": len(d.y_train)}
        curve: dict[str, Any] = {}
        train_set = self._dataset(None)
        valid_sets, callbacks = [], []
        if len(d.y_valid):
            valid_sets = [lgb.Dataset(d.X_valid, label=d.y_valid, reference=train_set)]
            callbacks = [lgb.record_evaluation(curve)]
        p = dict(self._lightgbm_params(params), metric=LGB_METRICS[self.objective])
        booster = lgb.train(
            p,
            train_set,
            num_boost_round=num_boost_round,
            valid_sets=valid_sets,
            callbacks=callbacks + self._time_limit("local_baseline"),
        )
        final = {}
        if len(d.y_valid):
            raw = booster.predict(d.X_valid, raw_score=True)
            final = metrics.exact(d.y_valid, raw, self.objective)
        history = {k: [float(v) for v in vals] for k, vals in curve.get("valid_0", {}).items()}
        return {"metrics": final, "curve": history, "rows_train": len(d.y_train)}

    # -- profile calls (protocol table: the federated profile, over all this party's rows) ----------
    def _profile_rows(self) -> list[np.ndarray]:
        """Training and validation rows, each as it is held (never joined into a copy)."""
        d = self._data
        return [X for X in (d.X_train, d.X_valid) if len(X)] or [d.X_train]

    def profile_ranges(self) -> np.ndarray:
        """Per-feature (min, max) over all rows, shape (n_features, 2); ``+inf, -inf`` for a feature without values."""
        from fedmine.gbdt.binning import feature_ranges, merge_ranges

        return merge_ranges(np.stack([feature_ranges(X) for X in self._profile_rows()]))

    def profile_counts(self, grids: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """Counts of all rows on the shared grid, shape (n_features, n_grid + 1), int64; last column: missing."""
        from fedmine.gbdt.binning import grid_counts

        blocks = self._profile_rows()
        total = grid_counts(blocks[0], grids, categorical=categorical)
        for X in blocks[1:]:
            total += grid_counts(X, grids, categorical=categorical)
        return total

    def profile_view(
        self, grids: np.ndarray, lows: np.ndarray, totals: np.ndarray, features: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """This organisation's own view: its summary from its rows and the federation's ``totals``.

        Per feature: count, missing rate, quantiles, percentiles and plot bars
        (numeric) or category counts, its PSI against the other organisations
        (``totals - own``) and the ratio of its median to theirs; and the
        harmonisation's problems. ``features`` must be this party's columns,
        with ``category`` exactly where its own schema has categories, so no
        numeric column is answered cell by cell.
        """
        from fedmine.schema.summary import TYPES, categorical_mask, summarise_counts

        names = [f.get("name") if isinstance(f, dict) else None for f in features]
        if names != list(self.feature_names):
            raise PartyError(
                f"party {self.name}: profile_view: features {names} are not this party's {list(self.feature_names)}"
            )
        for i, f in enumerate(features):
            if f.get("type") not in TYPES or (f["type"] == "category") != (i in self.categorical):
                raise PartyError(
                    f"party {self.name}: profile_view: feature {f['name']!r} cannot be of type {f.get('type')!r} here"
                )
        grids = np.asarray(grids, dtype=np.float64)
        lows = np.asarray(lows, dtype=np.float64)
        totals = np.asarray(totals, dtype=np.int64)
        n = len(features)
        if grids.ndim != 2 or grids.shape[0] != n or lows.shape != (n,) or totals.shape != (n, grids.shape[1] + 1):
            raise PartyError(
                f"party {self.name}: profile_view: grids {grids.shape}, lows {lows.shape} and totals "
                f"{totals.shape} do not fit {n} features"
            )
        own = self.profile_counts(grids, categorical_mask(features))
        view = summarise_counts(features, grids, lows, own, rest=totals - own)
        view["problems"] = list(self.report.get("problems", []))
        return view

    # -- explanation calls (protocol table: fedmine explain, over all this party's rows) ----------------
    def _contributions(self, model: str) -> np.ndarray:
        """SHAP values of ``model`` on all rows, (n_rows, n_outputs, n_features + 1); kept for the model's next call."""
        from fedmine.party import shap_values

        digest = hashlib.sha256(model.encode() if isinstance(model, str) else b"").hexdigest()
        if self._shap is None or self._shap[0] != digest:
            booster = shap_values.load_model(model, org=self.name, feature_names=self.feature_names)
            self._shap = (digest, shap_values.contributions(booster, self._profile_rows()))
        return self._shap[1]

    def shap_sums(self, model: str, scale: float) -> np.ndarray:
        """Fixed-point sums of |SHAP| per output and feature over all rows, the row count last.

        Shape (n_outputs, n_features + 1), int64 (:func:`fedmine.party.shap_values.abs_sums`).
        """
        from fedmine.party import shap_values

        value = shap_values.check_scale(scale, org=self.name)
        return shap_values.abs_sums(self._contributions(model), value)

    def shap_plots(self, model: str, order: Any, features: list[dict[str, Any]], outputs: list[str]) -> None:
        """Write this organisation's summary and dependence plots of its own rows into ``output_dir/explain``.

        Nothing is answered: the plots stay with the organisation (in its
        ``output_dir``). ``order`` lists feature indices, most important in
        the federation first; ``outputs`` names each output of the model.
        """
        from fedmine.party import shap_values

        if self.output_dir is None:
            raise self._refuse("shap_plots", "this party has no output folder for its plots (party serve --output)")
        names = [f.get("name") if isinstance(f, dict) else None for f in features]
        if names != list(self.feature_names):
            raise self._refuse("shap_plots", f"features {names} are not this party's {list(self.feature_names)}")
        order = np.asarray(order, dtype=np.int64).ravel()
        if sorted(order.tolist()) != list(range(len(self.feature_names))):
            raise self._refuse("shap_plots", f"order {order.tolist()} is not a permutation of the features")
        contrib = self._contributions(model)
        if len(outputs) != contrib.shape[1]:
            raise self._refuse("shap_plots", f"{len(outputs)} output names for a model of {contrib.shape[1]} outputs")
        X = np.concatenate(self._profile_rows())
        shap_values.write_plots(
            contrib,
            X,
            features=features,
            order=order,
            outputs=[str(o) for o in outputs],
            folder=Path(self.output_dir) / "explain",
            org=self.name,
        )
