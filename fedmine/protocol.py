"""The party protocol: every call the coordinator makes of an organisation, declared once.

This module owns :data:`CALLS`, the one table of the conversation between the
coordinator and an organisation's party. Each :class:`Call` says

- the stages that accept it and the stage it leads to (the party's state
  machine: a call out of order is a :class:`ProtocolError`);
- its argument and answer types (for readers, the Flight action list and docs);
- how answers from several organisations combine (:data:`MERGES`);
- what its answer reveals: ``summed`` (added up over organisations, so masked
  under secure aggregation and counted by the DP accountant when noised),
  ``disclosed`` (seen per organisation, listed in the privacy receipt),
  ``none`` (no answer) or ``parts`` (``batch``: several calls in one round
  trip, each part releasing what its own entry says).

Everything that speaks the protocol reads this table: the organisation's
:class:`~fedmine.party.organisation.Party` (stage checks, masking of summed
answers), the Flight server's allow-list (:mod:`fedmine.party.server`), the
coordinator's client stubs (:mod:`fedmine.coordinator.client`), and the
aggregation of K parties (:class:`~fedmine.gbdt.state.EngineGroup`). Adding a
call is one :func:`register`-ed entry here plus its implementation on the
party (``side="organisation"``) or on the engine state (``side="engine"``).

Stages
------
Organisation calls run on the party itself: ``new`` until ``start`` (the tree
strategies' model), then ``following``. Engine calls (the ``histogram``
strategy) run on the party's engine state, whose stages cycle::

    created --set_bins--> binned --configure--> ready --begin_round--> gradients
       ^                                          ^                       |
       |                                          |                  start_trees
     reset (from any stage)                       |                       v
                                           finish / configure  <--- growing (histograms,
                                                                     apply_split, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Any stage (calls that do not depend on the party's progress).
ANY = "*"

# Organisation stages (tree strategies follow a model the coordinator sends).
NEW, FOLLOWING = "new", "following"
# Engine stages (histogram strategy); a round cycles GRADIENTS -> GROWING -> GRADIENTS.
CREATED, BINNED, READY, GRADIENTS, GROWING, FINISHED = "created", "binned", "ready", "gradients", "growing", "finished"
ENGINE_STAGES = (CREATED, BINNED, READY, GRADIENTS, GROWING, FINISHED)

#: What an answer reveals to the coordinator (``parts``: a batch, each part what its own entry says).
SUMMED, DISCLOSED, NO_ANSWER, PARTS = "summed", "disclosed", "none", "parts"

ORGANISATION, ENGINE = "organisation", "engine"


class ProtocolError(RuntimeError):
    """A call arrived in a stage that does not accept it, or is not in the table (a coordinator bug, not bad data)."""


@dataclass(frozen=True)
class Call:
    """One entry of the protocol table.

    Parameters
    ----------
    name : the call's name: the party's method, the Flight action, the client stub.
    side : ``"organisation"`` (the party answers) or ``"engine"`` (its engine state answers).
    needs : stages that accept the call, or ``(ANY,)``.
    leads_to : the stage after a successful call, or None (unchanged).
    args, answer : the argument and answer types, as a reader needs them.
    merge : how answers of several organisations combine, a key of :data:`MERGES`.
    release : ``summed``, ``disclosed`` or ``none`` (see the module docstring).
    doc : one line: what the call does.
    discloses : what a ``disclosed`` answer reveals, field by field (its dict keys, or one name for an
        array); the privacy receipt lists them as ``call.field``.
    """

    name: str
    side: str
    needs: tuple[str, ...]
    leads_to: str | None
    args: str
    answer: str
    merge: str
    release: str
    doc: str
    discloses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.side not in (ORGANISATION, ENGINE):
            raise ValueError(f"call {self.name}: side must be {ORGANISATION!r} or {ENGINE!r}, got {self.side!r}")
        if self.merge not in MERGES:
            raise ValueError(f"call {self.name}: merge {self.merge!r} is not one of {sorted(MERGES)}")
        if self.release not in (SUMMED, DISCLOSED, NO_ANSWER, PARTS):
            raise ValueError(
                f"call {self.name}: release must be summed, disclosed, none or parts, got {self.release!r}"
            )
        if (self.release == PARTS) != (self.merge == "parts"):
            raise ValueError(f"call {self.name}: a batch's answer merges part by part and only it does")
        if (self.release == SUMMED) != (self.merge == "sum"):
            raise ValueError(f"call {self.name}: a summed answer merges by sum and only it does")
        if (self.release == NO_ANSWER) != (self.merge == "none"):
            raise ValueError(f"call {self.name}: a call without answer merges by 'none' and only it does")

    def accepts(self, stage: str) -> bool:
        return ANY in self.needs or stage in self.needs


def _sum(answers: Sequence[Any]) -> Any:
    """Integer arrays add elementwise (exact, in any order); dicts add key by key."""
    first = answers[0]
    if isinstance(first, dict):
        return {k: _sum([a[k] for a in answers]) for k in first}
    total = np.asarray(first)
    for i, a in enumerate(answers[1:]):
        a = np.asarray(a)
        if i and total.shape == np.broadcast_shapes(total.shape, a.shape) and np.can_cast(a.dtype, total.dtype):
            np.add(total, a, out=total)  # into the sum made by the first add: one array for all the answers
        else:
            total = total + a
    return total


def _max(answers: Sequence[Any]) -> np.ndarray:
    return np.max(np.stack([np.asarray(a) for a in answers]), axis=0)


def _range(answers: Sequence[Any]) -> np.ndarray:
    """(min, max) per feature: the smallest minimum and the largest maximum."""
    stacked = np.stack([np.asarray(a, dtype=np.float64) for a in answers])
    out = np.empty(stacked.shape[1:], dtype=np.float64)
    out[:, 0] = stacked[:, :, 0].min(axis=0)
    out[:, 1] = stacked[:, :, 1].max(axis=0)
    return out


def _none(answers: Sequence[Any]) -> None:
    return None


def _each(answers: Sequence[Any]) -> list[Any]:
    return list(answers)


#: How answers of several organisations combine, by the name a :class:`Call` gives.
MERGES: dict[str, Callable[[Sequence[Any]], Any]] = {
    "sum": _sum,  # summed answers: integer sums, the same bits whatever the partition
    "max": _max,  # bounds (gradient maxima)
    "range": _range,  # feature ranges
    "each": _each,  # per-organisation answers, kept apart
    "none": _none,  # calls without an answer
    "parts": _each,  # a batch: one answer per organisation, each a list of part answers (see merge_parts)
}

# fmt: off
_TABLE: tuple[Call, ...] = (
    # -- every strategy ----------------------------------------------------------------------------------
    Call("begin_training", ORGANISATION, (ANY,), NEW, "training_id: str", "none", "none", NO_ANSWER,
         "start a training (or resume one): fresh engine state, no keys, no noise"),
    Call("describe", ORGANISATION, (ANY,), None, "",
         "{n_features: int; features: [str]; report: counts and rates ({} under epsilon); fingerprint: str} "
         "(vertical also: n_ids, holds_label; after the intersection n_rows, n_valid of the shared rows)",
         "each", DISCLOSED, "canonical feature names, harmonisation report counts, a digest of the rows",
         ("n_features", "features", "report", "fingerprint", "n_ids", "holds_label", "n_rows", "n_valid")),
    Call("secure_setup", ORGANISATION, (ANY,), None, "training_id: str", "public key: bytes (32)",
         "each", DISCLOSED, "make this training's key pair; answer the public key", ("public_key",)),
    Call("secure_peers", ORGANISATION, (ANY,), None, "peers: {organisation: public key}", "none",
         "none", NO_ANSWER, "derive pairwise masks from the peers' public keys"),
    Call("secure_restart", ORGANISATION, (ANY,), None, "remaining: [str], epoch: int", "none",
         "none", NO_ANSWER, "fresh masks among the remaining organisations (one dropped out)"),
    Call("label_totals", ORGANISATION, (ANY,), None,
         "variances?: float64 (2,) rows, label (DP), n_parties?: int, label_range?: (min, max) (DP real labels)",
         "int64: n_rows, n_valid, label sums (class counts, the exact sum's vector, or DP: the fixed-point sum)",
         "sum", SUMMED,
         "training and validation row counts and label sums, summed over organisations; DP: plus noise shares"),
    Call("row_counts", ORGANISATION, (ANY,), None, "",
         "{n_rows, n_valid: int; label_sums: float64 (n_classes,)}", "each", DISCLOSED,
         "this organisation's row counts and label sums (tree strategies; organisation_metrics: shared)",
         ("n_rows", "n_valid", "label_sums")),
    Call("evaluate", ORGANISATION, (FOLLOWING,), None, "",
         "int64 (sum_vector_size,): validation sums of the model the party follows", "sum", SUMMED,
         "validation sums (row count, exact metric sums, score histograms), summed over organisations"),
    Call("log_metrics", ORGANISATION, (FOLLOWING,), None, "", "none", "none", NO_ANSWER,
         "log this organisation's exact validation metrics of the model it follows, in its own log (DP)"),
    Call("own_metrics", ORGANISATION, (FOLLOWING,), None, "", "{name: float}", "each", DISCLOSED,
         "this organisation's exact validation metrics of the model it follows (organisation_metrics: shared)",
         ("metrics",)),
    Call("local_baseline", ORGANISATION, (ANY,), None, "params: {str: value}, num_boost_round: int",
         "{metrics, curve, rows_train}", "each", DISCLOSED, "train on this organisation's rows alone; its metrics",
         ("metrics", "curve", "rows_train", "notice")),
    # -- tree strategies (bagging, cyclic, local) ------------------------------------------------------
    Call("start", ORGANISATION, (ANY,), FOLLOWING, "base_score: float64 (n_trees,)", "none",
         "none", NO_ANSWER, "follow a model whose raw score starts at base_score"),
    Call("add_trees", ORGANISATION, (FOLLOWING,), None, "step: int, trees: [Tree] | None",
         "none", "none", NO_ANSWER, "add the trees of step to the followed model's scores (a repeat is skipped)"),
    Call("train_local", ORGANISATION, (FOLLOWING,), None, "params: {str: value}, num_boost_round: int",
         "[Tree]", "each", DISCLOSED, "trees trained with LightGBM on this party's rows on top of the model",
         ("trees",)),
    # -- the federated profile (fedmine profile): over all the party's rows, training and validation ------
    Call("profile_ranges", ORGANISATION, (ANY,), None, "", "float64 (n_features, 2): min, max",
         "range", DISCLOSED, "min and max per feature over all rows (the profile's shared grid)", ("min", "max")),
    Call("profile_counts", ORGANISATION, (ANY,), None,
         "grids: float64 (n_features, n_grid), categorical: bool (n_features,)", "int64 (n_features, n_grid + 1)",
         "sum", SUMMED, "counts of all rows on the profile's grid: per cell or category code, missing last"),
    Call("profile_view", ORGANISATION, (ANY,), None,
         "grids: float64 (n_features, n_grid), lows: float64 (n_features,), totals: int64 (n_features, n_grid + 1), "
         "features: [{name, type, categories}]",
         "{rows: int, features: {name: {count, missing_rate, quantiles, percentiles, plot | categories, psi, "
         "median_ratio}}, problems: [str]}",
         "each", DISCLOSED, "the organisation's own view: its summary and its PSI against the federation's rest",
         ("rows", "features", "problems")),
    # -- explanations (fedmine explain): the global model's SHAP values on all the party's rows ---------------
    Call("shap_sums", ORGANISATION, (ANY,), None, "model: str (LightGBM model text), scale: float",
         "int64 (n_outputs, n_features + 1): fixed-point sums of |SHAP| per feature, the row count last",
         "sum", SUMMED, "sums of |SHAP| (LightGBM's pred_contrib) per feature over all rows, and their count"),
    Call("shap_plots", ORGANISATION, (ANY,), None,
         "model: str, order: int64 (n_features,), features: [{name, type, categories}], outputs: [str]",
         "none", "none", NO_ANSWER, "write this organisation's SHAP summary and dependence plots where its rows are"),
    # -- vertical federation: private set intersection (every organisation) ----------------------------------
    Call("psi_blind", ORGANISATION, (ANY,), None, "",
         "uint8 (n, 32): this organisation's hashed ids blinded under its own fresh key, in a random order",
         "each", DISCLOSED, "blind its ids (the coordinator learns how many it has)", ("blinded_ids",)),
    Call("psi_reblind", ORGANISATION, (ANY,), None, "points: uint8 (n, 32)",
         "uint8 (n, 32): the points blinded again under this organisation's key, same order",
         "each", DISCLOSED, "apply its key to another organisation's blinded ids", ("blinded_ids",)),
    Call("psi_align", ORGANISATION, (ANY,), None,
         "own: uint8 (n, 32) its ids under every key, others: [uint8 (m, 32)] every other set, sorted",
         "int: shared rows", "each", DISCLOSED,
         "keep its rows shared with every other organisation, in the common order; answer how many",
         ("shared_rows",)),
    # -- vertical federation: the label holder's conversation (carried by the coordinator) ------------------
    Call("vertical_begin", ORGANISATION, (ANY,), None,
         "params: {str: value}, ranges: float64 (n_features, 2) | None",
         "{requests: [[organisation, call, args, kwargs]]} | {result}", "each", DISCLOSED,
         "label holder: a key pair, the joined bins (owners asked for bin counts), the initial score",
         ("requests",)),
    Call("vertical_round", ORGANISATION, (ANY,), None, "",
         "{requests} | {result: {metrics, alone, done, trees}}", "each", DISCLOSED,
         "label holder: grow one round; validation metrics of the model and of its own columns alone",
         ("requests", "metrics", "alone", "done", "trees")),
    Call("vertical_resume", ORGANISATION, (ANY,), None, "answers: [answer]",
         "{requests} | {result}", "each", DISCLOSED, "label holder: the owners' answers to its last requests",
         ("requests", "result")),
    Call("vertical_model", ORGANISATION, (ANY,), None, "publish: bool",
         "{requests} | {result: {text: str | None, trees: int}}", "each", DISCLOSED,
         "label holder: the model; with publish, owners' thresholds filled in: LightGBM model text",
         ("requests", "text", "trees")),
    Call("vertical_predict", ORGANISATION, (ANY,), None, "ids: [str]",
         "{requests} | {result: float64 (n, n_trees_per_round): raw scores}", "each", DISCLOSED,
         "label holder: raw scores of the given customers, each split's test answered by its owner",
         ("requests", "raw_scores")),
    Call("vertical_rejoin", ORGANISATION, (ANY,), None,
         "training_id: str, rounds: int, params: {str: value}, ranges: float64 (n_features, 2) | None",
         "{requests} | {result: {shared_rows: int, rounds: int; label holder: metrics, alone, done, trees}}",
         "each", DISCLOSED,
         "take up a training after a restart or a resume from the party's own disk: its shared rows, its bins; "
         "the label holder a fresh key, the joined bins and its loop, trees and scores of that round",
         ("requests", "shared_rows", "rounds", "metrics", "alone", "done", "trees")),
    # -- vertical federation: a feature owner's answers to the label holder (through the coordinator) ---------
    Call("owner_bins", ORGANISATION, (ANY,), None,
         "ranges: float64 (n_own, 2) | None, categorical: bool (n_own,), max_bin: int, n_grid: int",
         "int32 (n_own,): bins per feature", "each", DISCLOSED, "bin its own features alone; how many bins each",
         ("n_bins",)),
    Call("owner_gradients", ORGANISATION, (ANY,), None,
         "public: bytes, rows: [uint8 (n, bytes)] Paillier ciphertexts per tree, part: [tree, trees, offset, total] "
         "| None (then rows holds one in-order chunk of a tree's array: a round larger than a message)",
         "none", "none", NO_ANSWER, "keep the round's encrypted gradients and hessians"),
    Call("owner_histograms", ORGANISATION, (ANY,), None, "trees: int64 (m,), node_rows: [int32]",
         "[uint8 (k, bytes)]: packed encrypted histograms, one per node", "each", DISCLOSED,
         "encrypted gradient histograms of its features over each node's rows", ("ciphertexts",)),
    Call("owner_split", ORGANISATION, (ANY,), None,
         "rows: int32, feature, bin_threshold: int, default_left: bool, cat_bitset: uint32 (8,) | None",
         "uint8 bits: which rows go left", "each", DISCLOSED, "apply a split on its feature to a node's rows",
         ("rows_left",)),
    Call("owner_decisions", ORGANISATION, (ANY,), None,
         "nodes: int64 (m, 3), bitsets: [uint32 (8,) | None], rows: int64 | None, valid: bool",
         "uint8 (m, bits): go-left per split and row", "each", DISCLOSED,
         "the go-left test of splits on its features for training or validation rows", ("go_left",)),
    Call("owner_predict", ORGANISATION, (ANY,), None,
         "ids: [str], nodes: int64 (m, 3), bitsets: [uint32 (8,) | None], training_id?: str (whose bins; "
         "in memory, else kept on its disk)",
         "{found: uint8 bits (n,), bits: uint8 (m, bits)}", "each", DISCLOSED,
         "the go-left test of splits on its features for customers named by id (prediction)",
         ("found", "go_left")),
    Call("owner_thresholds", ORGANISATION, (ANY,), None,
         "features: int64 (m,), bin_thresholds: int64 (m,), training_id?: str",
         "{thresholds: float64 (m,), feature_infos: [str]}", "each", DISCLOSED,
         "the raw thresholds of its splits, only if its config sets vertical.publish_thresholds",
         ("thresholds", "feature_infos")),
    # -- histogram strategy: the engine's calls ----------------------------------------------------------
    Call("feature_ranges", ENGINE, (ANY,), None, "", "float64 (n_features, 2): min, max",
         "range", DISCLOSED, "min and max per feature (features without declared ranges)", ("min", "max")),
    Call("grid_counts", ENGINE, (ANY,), None,
         "grids: float64 (n_features, n_grid), categorical: bool (n_features,), variance?: float, n_parties?: int",
         "int64 (n_features, n_grid + 1)", "sum", SUMMED,
         "row counts on the shared grid (agreeing bins); DP (leaf method's quantiles): plus noise shares"),
    Call("set_bins", ENGINE, (CREATED, BINNED), BINNED, "mapper: BinMapper", "none",
         "none", NO_ANSWER, "bin the rows with the federation's bin edges"),
    Call("configure", ENGINE, (BINNED, READY, FINISHED), READY,
         "params: Params, init_scores: float64 (n_trees,), grad_clip?: float, hess_clip?: float", "none",
         "none", NO_ANSWER, "objective and initial scores (DP: clip bounds)"),
    Call("label_stats", ENGINE, (ANY,), None, "params: Params, variance?: float, n_parties?: int",
         "int64 (objective specific)", "sum", SUMMED,
         "summable label statistics for the initial score; DP: plus noise shares (the coordinator uses the "
         "noisy label_totals instead)"),
    Call("begin_round", ENGINE, (READY, GROWING), GRADIENTS, "iteration: int, trees: [Tree]",
         "float64 (n_trees, 2): max |g|, max h", "max", DISCLOSED, "apply the last round's trees; gradient bounds",
         ("max_abs_grad", "max_hess")),
    Call("replay", ENGINE, (GRADIENTS,), None, "rounds: [[Tree]]", "float64 (n_trees, 2)",
         "max", DISCLOSED, "apply past rounds' trees in order (resume, rejoin); gradient bounds",
         ("max_abs_grad", "max_hess")),
    Call("start_trees", ENGINE, (GRADIENTS,), GROWING,
         "iteration: int, grad_scales, hess_scales: float64 (n_trees,), count_bits: int, max_nodes: int", "none",
         "none", NO_ANSWER, "quantise gradients with the global scales, bag rows, reset the partitions"),
    Call("histograms", ENGINE, (GROWING,), None, "node_ids: int64 (n_nodes,)",
         "int64 (n_nodes, n_cells, 3): each feature's own bins and its NaN bin", "sum", SUMMED,
         "gradient histograms of the nodes' rows"),
    Call("leaf_sums", ENGINE, (GRADIENTS,), GROWING, "trees: [Tree], grad_scales, hess_scales: float64 (n_trees,)",
         "int64 (n_trees, n_leaves, 2): grad, hess", "sum", SUMMED,
         "DP leaf method: gradient and hessian sums per leaf of trees chosen without the rows, plus noise shares"),
    Call("apply_split", ENGINE, (GROWING,), None,
         "node_id, feature, bin_threshold, default_left, cat_bitset, left_id, right_id", "none",
         "none", NO_ANSWER, "send a node's rows to its children"),
    Call("split_histograms", ENGINE, (GROWING,), None, "splits: [apply_split args], node_ids: int64 (n_nodes,)",
         "int64 (n_nodes, n_cells, 3)", "sum", SUMMED, "apply queued splits, then answer histograms (one round trip)"),
    Call("finish", ENGINE, (READY, GRADIENTS, GROWING), FINISHED, "trees: [Tree] | None", "none",
         "none", NO_ANSWER, "apply the final round's trees"),
    Call("metric_stats", ENGINE, (READY, GRADIENTS, GROWING, FINISHED), None, "metric: str",
         "int64 (metric specific)", "sum", SUMMED, "summable statistics of a metric on the validation rows"),
    Call("set_noise", ENGINE, (BINNED, READY, GRADIENTS, GROWING), None,
         "variances: float64 (3,) | None, n_parties: int, seed: int | None, party_index: int", "none",
         "none", NO_ANSWER, "DP: add a noise share to every later histograms answer"),
    Call("reset", ENGINE, (ANY,), CREATED, "", "none", "none", NO_ANSWER,
         "back to the engine's first stage (a training recovers from a failure)"),
    # -- any calls above, in one round trip ------------------------------------------------------------------
    Call("batch", ORGANISATION, (ANY,), None, "parts: [[call, args, kwargs]]",
         "[answer]: one per part, in order", "parts", PARTS,
         "several calls of this table in one round trip, in order; each part checked, masked and disclosed "
         "as if sent alone"),
)
# fmt: on

#: The protocol table, by call name.
CALLS: dict[str, Call] = {c.name: c for c in _TABLE}


def call(name: str) -> Call:
    """The table entry of ``name``; a :class:`ProtocolError` naming the allowed calls if there is none."""
    try:
        return CALLS[name]
    except (KeyError, TypeError):
        raise ProtocolError(f"unknown call {str(name)[:80]!r}; allowed: {', '.join(CALLS)}") from None


def names(side: str | None = None) -> tuple[str, ...]:
    """Call names in table order (those of one ``side`` if given)."""
    return tuple(c.name for c in CALLS.values() if side is None or c.side == side)


#: The calls a vertical label holder may ask the coordinator to carry to a feature owner.
OWNER_CALLS = frozenset(
    ("owner_bins", "owner_gradients", "owner_histograms", "owner_split", "owner_decisions", "owner_thresholds")
)
#: The calls a vertical label holder may ask the coordinator to carry while it predicts.
PREDICT_CALLS = frozenset(("owner_predict",))


def summed() -> frozenset[str]:
    """Calls whose answers are summed over organisations (masked under secure aggregation)."""
    return frozenset(c.name for c in CALLS.values() if c.release == SUMMED)


def disclosed() -> frozenset[str]:
    """Calls whose answers the coordinator sees per organisation (listed in the privacy receipt)."""
    return frozenset(c.name for c in CALLS.values() if c.release == DISCLOSED)


def merge(name: str, answers: Sequence[Any]) -> Any:
    """Combine the answers of several organisations to ``name`` as its table entry says."""
    if not answers:
        raise ValueError(f"merge {name}: no answers")
    return MERGES[call(name).merge](answers)


def check_parts(parts: Any) -> list[tuple[str, tuple, dict]]:
    """The parts of a ``batch`` request as ``(name, args, kwargs)``, each a call of the table other than ``batch``."""
    if type(parts) not in (list, tuple):
        raise ProtocolError(f"batch: parts must be a list of [call, args, kwargs], got {type(parts).__name__}")
    out = []
    for i, part in enumerate(parts):
        if type(part) not in (list, tuple) or len(part) != 3:
            raise ProtocolError(f"batch: part {i} must be [call, args, kwargs]")
        name, args, kwargs = part
        call(name)
        if name == "batch":
            raise ProtocolError(f"batch: part {i} is a batch; batches do not nest")
        if (
            type(args) not in (list, tuple)
            or type(kwargs) is not dict
            or not all(type(k) is str and k.isidentifier() and not k.startswith("_") for k in kwargs)
        ):
            raise ProtocolError(f"batch: part {i} ({name}) needs a list of args and a dict of keyword names")
        out.append((name, tuple(args), kwargs))
    return out


def merge_parts(names: Sequence[str], answers: Sequence[Sequence[Any]]) -> list[Any]:
    """Merge the ``batch`` answers of several organisations part by part, each as its own entry says.

    ``answers[i][j]`` is organisation ``i``'s answer to part ``j`` (named ``names[j]``).
    """
    if not answers:
        raise ValueError("merge batch: no answers")
    for a in answers:
        if len(a) != len(names):
            raise ProtocolError(f"batch: {len(a)} answers to {len(names)} parts")
    return [merge(name, [a[j] for a in answers]) for j, name in enumerate(names)]


def register(entry: Call) -> None:
    """Add a call to the table (its implementation goes on the party or the engine state)."""
    if entry.name in CALLS:
        raise ValueError(f"call {entry.name!r} is already in the protocol table")
    CALLS[entry.name] = entry


@contextmanager
def registered(entry: Call) -> Iterator[Call]:
    """:func:`register` for the duration of a ``with`` block (tests, plug-ins)."""
    register(entry)
    try:
        yield entry
    finally:
        CALLS.pop(entry.name, None)
