"""What crosses the boundary: every answer of a training, checked against the protocol table and the receipt.

A training runs with secure aggregation over parties that record each answer
as it leaves them. Every answer the table marks summed must be masked (it
looks uniform on its own); every field of a disclosed answer must be one the
receipt lists; under ``organisation_metrics: own`` no organisation's metrics or
row counts reach the coordinator, and each organisation logs its own.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

from fedmine import metrics, protocol
from fedmine.coordinator.training import Coordinator
from fedmine.errors import PartyError
from fedmine.party.organisation import Party, TrainValidRows
from fedmine.party.policy import PartyPolicy
from tests.coordinator.test_histogram_strategy import ORGS, cfg_for, make_rows, partition


class RecordingParty(Party):
    """A party that keeps every answer as it leaves it (what the coordinator receives)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wire: list[tuple[str, object]] = []

    def call(self, name, *args, **kwargs):
        answer = super().call(name, *args, **kwargs)
        self.wire.append((name, answer))
        return answer


def train(organisation_metrics, *, epsilon=None, rounds=3):
    X, y = make_rows("binary", n=1500, seed=3)
    parts = partition(y, 3, "skewed")
    cfg = cfg_for("binary", ORGS[:3], rounds=rounds, num_leaves=5)
    cfg.privacy.organisation_metrics = organisation_metrics
    cfg.privacy.epsilon = epsilon
    parties = [
        RecordingParty(
            o,
            TrainValidRows(X[i][60:], y[i][60:], X[i][:60], y[i][:60]),
            objective="binary",
            num_class=1,
            feature_names=list(cfg.features),
            categorical=[3],
            policy=PartyPolicy.from_config(cfg, o),
        )
        for o, i in zip(cfg.organisations, parts)
    ]
    coord = Coordinator(cfg, parties)
    coord.start()
    results = [coord.run_round(r) for r in range(1, rounds + 1)]
    baselines = coord.local_baselines()
    return coord, parties, results, baselines


def looks_masked(answer) -> bool:
    """A masked int64 array is uniform mod 2**64: some entry is far above any count or sum of a test."""
    a = np.asarray(answer)
    return a.dtype == np.int64 and a.size >= 1 and bool(np.any(np.abs(a.astype(np.float64)) >= 2.0**48))


def test_every_call_of_the_table_says_what_its_answer_reveals():
    for entry in protocol.CALLS.values():
        assert entry.release in (protocol.SUMMED, protocol.DISCLOSED, protocol.NO_ANSWER, protocol.PARTS)
        assert (entry.release == protocol.PARTS) == (entry.name == "batch"), entry.name
        if entry.release == protocol.DISCLOSED:
            assert entry.discloses, f"{entry.name}: a disclosed answer names the fields it reveals"
        else:
            assert not entry.discloses, f"{entry.name}: only disclosed answers list fields"


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_summed_answers_are_masked_and_disclosed_fields_are_in_the_receipt(mode):
    coord, parties, results, _ = train(mode)
    receipt = coord.receipt().as_dict()
    listed = set(receipt["disclosed"].split(", "))
    seen = set()
    for party in parties:
        assert party.wire, party.name
        for name, answer in party.wire:
            entry = protocol.call(name)
            if entry.release == protocol.PARTS:  # a batch: each part was recorded as it was answered
                continue
            seen.add(name)
            if entry.release == protocol.SUMMED:
                assert looks_masked(answer), f"{party.name}: {name} left unmasked"
            elif entry.release == protocol.DISCLOSED:
                fields = list(answer) if isinstance(answer, dict) else [entry.discloses[0]]
                if name == "own_metrics":
                    fields = ["metrics"]
                for f in fields:
                    assert f in entry.discloses and f"{name}.{f}" in listed, f"{name}.{f} is not in the receipt"
            else:
                assert answer is None, name
    assert {"label_totals", "evaluate", "histograms"} <= seen or {"label_totals", "evaluate"} <= seen
    assert {f.split(".")[0] for f in listed} == seen & protocol.disclosed()
    if mode == "own":
        assert not {"own_metrics", "row_counts", "local_baseline"} & seen
        assert all(not r.org_metrics for r in results)
    else:
        assert {"own_metrics", "row_counts"} <= seen
        assert set(results[-1].org_metrics) == set(coord.cfg.organisations)


def test_federation_metrics_come_from_the_masked_sums_and_equal_the_pooled_rows():
    coord, parties, results, _ = train("own")
    y = np.concatenate([p._data.y_valid for p in parties])
    raw = np.concatenate([p._current_valid_raw() for p in parties])
    pooled = metrics.from_sums(metrics.sums(y, raw, "binary"), "binary")
    assert results[-1].global_metrics == pooled  # the same floats: exact sums, the same AUC cells
    assert coord.n_valid == len(y) and coord.n_rows == sum(len(p._data.y_train) for p in parties)


def test_with_own_metrics_each_organisation_logs_its_own_and_the_coordinator_has_none(caplog):
    with caplog.at_level(logging.INFO, logger="fedmine.party"):
        coord, parties, results, baselines = train("own")
    assert baselines == {} and coord.descriptions[parties[0].name].keys() == {
        "n_features",
        "features",
        "report",
        "fingerprint",
    }
    for party in parties:
        assert len(party.own_history_) == len(results)
        y, raw = party._data.y_valid, party._current_valid_raw()
        assert party.own_history_[-1] == metrics.exact(y, raw, "binary")
        assert any(
            f"organisation {party.name}: validation metrics of the global model" in r.getMessage()
            for r in caplog.records
        )


def test_a_party_whose_config_keeps_its_metrics_refuses_to_send_them():
    _, parties, _, _ = train("own", rounds=1)
    with pytest.raises(Exception, match=r"party bank: own_metrics refused: .*organisation_metrics: own"):
        parties[0].call("own_metrics")
    with pytest.raises(Exception, match=r"party bank: row_counts refused: .*organisation_metrics: own"):
        parties[0].call("row_counts")


def test_organisation_metrics_default_is_own_under_dp_and_shared_without():
    cfg = cfg_for("binary", ORGS[:3])
    assert cfg.privacy.shares_organisation_metrics
    cfg.privacy.epsilon = 1.0
    assert not cfg.privacy.shares_organisation_metrics
    cfg.privacy.organisation_metrics = "shared"
    assert cfg.privacy.shares_organisation_metrics


# ---------------------------------------------------------------------------
# under privacy.epsilon: every release noised and counted, or not made
# ---------------------------------------------------------------------------

#: Calls whose answers are exact statistics of the rows: none may leave a party under epsilon.
EXACT_CALLS = {
    "feature_ranges",
    "label_stats",
    "evaluate",
    "metric_stats",
    "own_metrics",
    "row_counts",
    "local_baseline",
}
#: The receipt's kind of each summed call of a DP training.
KIND = {
    "label_totals": "label_totals",
    "grid_counts": "bins",
    "leaf_sums": "leaf_sums",
    "histograms": "histograms",
    "split_histograms": "histograms",
}


class TwinParty(Party):
    """A party that records each answer as it leaves, beside the exact answer a noise-free copy gives the same request."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wire: list[tuple[str, object, object]] = []

    def _exact(self, name, args, kwargs):
        wire, self.wire = self.wire, []
        twin = copy.deepcopy(self)
        self.wire = wire
        twin.policy = None
        if twin._engine is not None:
            twin._engine._noise = None
        plain = {k: v for k, v in kwargs.items() if k not in ("variance", "variances", "n_parties")}
        return Party.call(twin, name, *args, **plain)

    def call(self, name, *args, **kwargs):
        exact = self._exact(name, args, kwargs) if protocol.call(name).release == protocol.SUMMED else None
        answer = super().call(name, *args, **kwargs)
        self.wire.append((name, answer, exact))
        return answer


def dp_cfg(objective, X, *, method, rounds, epsilon=1.0):
    cfg = cfg_for(objective, ORGS[:3], rounds=rounds, num_leaves=5)
    for i, name in enumerate(cfg.features):
        if cfg.features[name].type != "category":
            cfg.features[name].min = float(np.floor(np.nanmin(X[:, i])))
            cfg.features[name].max = float(np.ceil(np.nanmax(X[:, i])))
    cfg.privacy.epsilon, cfg.privacy.dp_method = epsilon, method
    cfg.privacy.secure_aggregation = False  # the answers as noised, before any mask
    if objective == "regression":
        cfg.privacy.gradient_bound, cfg.privacy.label_min, cfg.privacy.label_max = 2.0, -4.0, 4.0
    return cfg


def dp_train(objective, method, rounds=3):
    X, y = make_rows(objective, n=1500, seed=3)
    cfg = dp_cfg(objective, X, method=method, rounds=rounds)
    parties = [
        TwinParty(
            o,
            TrainValidRows(X[i][60:], y[i][60:], X[i][:60], y[i][:60]),
            objective=objective,
            num_class=cfg.num_class,
            feature_names=list(cfg.features),
            categorical=[3],
            policy=PartyPolicy.from_config(cfg, o),
        )
        for o, i in zip(cfg.organisations, partition(y, 3, "iid"))
    ]
    coord = Coordinator(cfg, parties)
    coord.start()
    results = [coord.run_round(r) for r in range(1, rounds + 1)]
    return coord, parties, results


@pytest.mark.parametrize(("objective", "method"), [("binary", "leaf"), ("regression", "histogram")])
def test_under_epsilon_every_answer_leaving_a_party_is_noised_or_absent(objective, method):
    coord, parties, results = dp_train(objective, method)
    receipt = coord.receipt().as_dict()
    G, H = parties[0].policy.clip_bounds
    for party in parties:
        seen: dict[str, int] = {}
        for name, answer, exact in party.wire:
            entry = protocol.call(name)
            if entry.release == protocol.PARTS:  # a batch: each part was recorded as it was answered
                continue
            assert name not in EXACT_CALLS, f"{party.name}: {name} left under epsilon"
            if entry.release == protocol.SUMMED:
                a, e = np.asarray(answer), np.asarray(exact)
                assert a.shape == e.shape and not np.array_equal(a, e), f"{party.name}: {name} left without noise"
                seen[KIND[name]] = seen.get(KIND[name], 0) + 1
            elif name in ("begin_round", "replay"):
                assert np.all(np.asarray(answer) == [G, H]), f"{name} answered more than the clip bounds"
            elif name == "describe":
                assert answer["report"] == {}, "the harmonisation report's counts stay with the organisation"
            else:
                assert entry.release == protocol.NO_ANSWER and answer is None, name
        kinds = {"label_totals", "bins", "leaf_sums"} if method == "leaf" else {"label_totals", "histograms"}
        assert set(seen) == kinds
        for kind, n in seen.items():  # every release each party made is in the receipt, and counted
            assert receipt[f"param.release.{kind}.count"] == n, kind
            assert f"{kind} ({n}, " in receipt["covers"]
        assert len(party.own_history_) == len(results)  # each organisation logs its own metrics
    assert all(r.global_metrics == {} and r.org_metrics == {} for r in results)
    assert receipt["covers"].startswith("every release of the rows to the coordinator, noised: ")
    assert "validation sums: not released" in receipt["covers"]


def test_the_accountant_total_matches_the_receipt():
    coord, _, _ = dp_train("binary", "leaf", rounds=4)
    strategy = coord.strategy
    acc, budget = strategy.accountant, strategy.budget
    receipt = coord.receipt().as_dict()
    kinds = [r.kind for r in budget.releases]
    ledger = [
        (
            receipt[f"param.release.{k}.noise_multiplier"],
            receipt[f"param.release.{k}.count"],
            budget.release(k).sensitivity,
        )
        for k in kinds
    ]
    assert receipt["epsilon_total"] == acc.epsilon() == pytest.approx(acc.epsilon_of_ledger(ledger), rel=1e-12)
    assert receipt["releases"] == acc.releases_ == sum(c for _, c, _ in ledger) == 1 + 1 + 4
    assert sum(receipt[f"param.release.{k}.budget_share"] for k in kinds) == pytest.approx(1.0)
    assert 0.99 < receipt["epsilon_total"] <= coord.cfg.privacy.epsilon
    for k, (z, c, sens) in zip(kinds, ledger):
        assert receipt[f"param.release.{k}.epsilon_alone"] == pytest.approx(acc.epsilon_of(z, c, sensitivity=sens))


@pytest.fixture(scope="module")
def dp_party():
    X, y = make_rows("regression", n=600, seed=3)
    cfg = dp_cfg("regression", X, method="leaf", rounds=2)
    return Party(
        "bank",
        TrainValidRows(X[60:], y[60:], X[:60], y[:60]),
        objective="regression",
        num_class=1,
        feature_names=list(cfg.features),
        categorical=[3],
        policy=PartyPolicy.from_config(cfg, "bank"),
    )


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "why"),
    [
        ("label_totals", (), {}, "no label totals leave without their noise share"),
        ("label_totals", (), {"variances": [1.0, 1.0], "label_range": [-9.0, 9.0]}, "the label range must be"),
        ("grid_counts", (np.zeros((5, 4)), np.zeros(5, bool)), {}, "no grid_counts leave without their noise share"),
        ("label_stats", ({},), {}, "no label_stats leave without their noise share"),
        ("feature_ranges", (), {}, "feature ranges are exact"),
        ("evaluate", (), {}, "validation sums are exact"),
        ("metric_stats", ("l2",), {}, "validation statistics are exact"),
        ("row_counts", (), {}, "its row counts are exact"),
        ("configure", ({}, np.zeros(1)), {}, r"clipped to at most its bounds \(2, 1\), got grad_clip=None"),
        ("configure", ({}, np.zeros(1)), {"grad_clip": 5.0, "hess_clip": 1.0}, "got grad_clip=5"),
    ],
)
def test_under_its_epsilon_a_party_refuses_every_release_without_noise(dp_party, name, args, kwargs, why):
    with pytest.raises(
        PartyError,
        match=rf"^party bank: {name} refused: this organisation's config sets "
        rf"privacy.epsilon=1; .*{why}",
    ) as caught:
        dp_party.call(name, *args, **kwargs)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------
# vertical federation: every disclosed field is in the table and the receipt
# ---------------------------------------------------------------------------


def disclosed_keys(name, answer):
    """The fields of a disclosed answer as the table names them: a dict's keys (a conversation's ``result`` opened)."""
    entry = protocol.call(name)
    if not isinstance(answer, dict):
        return [entry.discloses[0]]
    keys = list(answer)
    if "result" in answer and "result" not in entry.discloses:
        result = answer["result"]
        keys.remove("result")
        keys += list(result) if isinstance(result, dict) else [entry.discloses[-1]]
    return keys


def test_a_vertical_training_discloses_only_fields_the_table_and_the_receipt_list():
    from fedmine.config import config_from_dict
    from fedmine.coordinator.vertical import VerticalCoordinator
    from fedmine.demo import make_vertical_frames, vertical_demo_config
    from fedmine.party.vertical import vertical_party
    from tests.support import plain_cipher

    raw = vertical_demo_config("sqlite:///unused.db")
    raw["training"].update(rounds=2, num_leaves=4)
    cfg = config_from_dict(raw)
    frames = make_vertical_frames(5, n=400)
    parties = [vertical_party(cfg, org, frames[org], cipher=plain_cipher) for org in cfg.organisations]
    wire: list[tuple[str, str, object]] = []
    for party in parties:

        def recording(name, *args, _call=party.call, _org=party.name, **kwargs):
            answer = _call(name, *args, **kwargs)
            wire.append((_org, name, answer))
            return answer

        party.call = recording
    coord = VerticalCoordinator(cfg, parties)
    coord.intersect()
    coord.start()
    for r in (1, 2):
        coord.run_round(r)
    coord.model_text()
    listed = set(coord.receipt().as_dict()["disclosed"].split(", "))
    seen = set()
    for org, name, answer in wire:
        entry = protocol.call(name)
        if entry.release != protocol.DISCLOSED:
            assert answer is None, f"{org}: {name}"
            continue
        seen.add(name)
        for f in disclosed_keys(name, answer):
            assert f in entry.discloses, f"{org}: {name}.{f} is not in the protocol table"
            assert f"{name}.{f}" in listed, f"{org}: {name}.{f} is not in the receipt"
    assert {"describe", "psi_blind", "owner_histograms", "vertical_round"} <= seen
    assert {f.split(".")[0] for f in listed} == seen
    described = [a for _, n, a in wire if n == "describe"]
    assert not any("label_sums" in d for d in described)  # the label holder's label sums stay with it
