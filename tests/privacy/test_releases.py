"""What crosses the boundary: every answer of a training, checked against the protocol table and the receipt.

A training runs with secure aggregation over parties that record each answer
as it leaves them. Every answer the table marks summed must be masked (it
looks uniform on its own); every field of a disclosed answer must be one the
receipt lists; under ``organisation_metrics: own`` no organisation's metrics or
row counts reach the coordinator, and each organisation logs its own.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedmine import metrics, protocol
from fedmine.coordinator.training import Coordinator
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
        assert entry.release in (protocol.SUMMED, protocol.DISCLOSED, protocol.NO_ANSWER)
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
