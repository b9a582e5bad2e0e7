"""Round trips the coordinator's links count: one per histogram exchange of a tree, and the same trees.

The counts are the client's (:attr:`Link.calls`, a ``batch`` counted once),
compared with the exchanges the engine needs to grow the same trees on the
pooled rows, so nothing here is timed.
"""

from __future__ import annotations

import threading

import lightgbm as lgb
import numba
import numpy as np
import pytest

from fedmine import gbdt, metrics, protocol
from fedmine.coordinator.link import Link
from fedmine.coordinator.strategies import FederationGroup
from fedmine.coordinator.training import Coordinator
from fedmine.gbdt.booster import Trainer
from fedmine.gbdt.state import EngineGroup, EngineState
from fedmine.party.organisation import Party, TrainValidRows, global_row_ids
from tests.coordinator.test_histogram_strategy import ORGS, cfg_for, make_rows, partition

pytestmark = pytest.mark.filterwarnings("ignore::fedmine.privacy.secure_agg.SecureAggregationWarning")


def organisations(cfg, X, y, parts, *, valid: int = 60):
    """One party per organisation; its first ``valid`` rows are its validation rows."""
    return [
        Party(
            o,
            TrainValidRows(X[i[valid:]], y[i[valid:]], X[i[:valid]], y[i[:valid]]),
            objective=cfg.objective,
            num_class=cfg.num_class,
            feature_names=list(cfg.features),
            categorical=[3],
        )
        for o, i in zip(cfg.organisations, parts)
    ]


def pooled(cfg, X, y, parts, *, valid: int = 60):
    """(model text, histogram exchanges) of the engine on the pooled training rows."""
    ids = np.concatenate([global_row_ids(o, len(i) - valid) for o, i in zip(cfg.organisations, parts)])
    rows = np.concatenate([i[valid:] for i in parts])
    params = cfg.training.engine_params(cfg.objective, cfg.num_class, metrics.primary(cfg.objective))
    trainer = Trainer(
        EngineState(X[rows], y[rows], row_ids=ids), params, categorical=[3], feature_names=list(cfg.features)
    )
    trainer.start()
    while not trainer.done:
        trainer.step()
    return gbdt.to_lightgbm_text(trainer.finish(), list(cfg.features)), trainer.releases_


def train(cfg, parties):
    coord = Coordinator(cfg, parties)
    coord.start()
    calls0 = {link.name: link.calls for link in coord.links}
    results = [coord.run_round(r) for r in range(1, cfg.training.rounds + 1)]
    trips = {link.name: link.calls - calls0[link.name] for link in coord.links}
    return coord, results, trips


@pytest.mark.parametrize(("lookahead", "valid"), [(0, 60), (2, 60), (7, 60), (2, 0)])
def test_a_tree_costs_one_round_trip_per_histogram_exchange(lookahead, valid):
    X, y = make_rows("binary", n=2400, seed=5)
    parts = partition(y, 4, "skewed")
    cfg = cfg_for("binary", ORGS[:4], rounds=5, num_leaves=15, lookahead=lookahead, feature_fraction=0.8)
    assert cfg.secure_aggregation and cfg.privacy.shares_organisation_metrics  # the defaults: masks, shared metrics
    coord, results, trips = train(cfg, organisations(cfg, X, y, parts, valid=valid))
    text, exchanges = pooled(cfg, X, y, parts, valid=valid)
    assert coord.model_text() == text  # the same trees, bit for bit
    # every call an organisation answered in the rounds (begin, splits, evaluation) rode with an exchange;
    # the training's last call (the final tree and its evaluation) is the one more
    assert set(trips.values()) == {exchanges + 1}
    assert [r.stats["traffic/round_trips"] for r in results[:-1]] == [
        r.stats["train/histogram_exchanges"] for r in results[:-1]
    ]
    assert sum(r.stats["traffic/round_trips_per_tree"] for r in results) == exchanges + 1
    assert exchanges >= cfg.training.rounds * 2  # a tree of 15 leaves needs several


def test_every_round_is_evaluated_on_the_model_after_it():
    X, y = make_rows("binary", n=2400, seed=5)
    parts = partition(y, 4, "iid")
    cfg = cfg_for("binary", ORGS[:4], rounds=4, num_leaves=7)
    coord, results, _ = train(cfg, parties := organisations(cfg, X, y, parts))
    booster = lgb.Booster(model_str=coord.model_text())
    Xv = np.concatenate([p._data.X_valid for p in parties])
    yv = np.concatenate([p._data.y_valid for p in parties])
    for r, result in enumerate(results, 1):
        want = metrics.from_sums(
            metrics.sums(yv, booster.predict(Xv, raw_score=True, num_iteration=r), "binary"), "binary"
        )
        assert result.global_metrics["auc"] == want["auc"], r
        assert result.global_metrics["binary_logloss"] == pytest.approx(want["binary_logloss"], rel=1e-12), r
        for party in parties:  # each organisation's own figures of the same model
            own = booster.predict(party._data.X_valid, raw_score=True, num_iteration=r)
            assert result.org_metrics[party.name]["auc"] == metrics.exact(party._data.y_valid, own, "binary")["auc"]
    assert coord.evaluate() == (results[-1].global_metrics, results[-1].org_metrics)  # asked again: the same


def test_gradient_bounds_from_the_rows_cost_one_round_trip_more_per_tree():
    X, y = make_rows("regression", n=2400, seed=5)
    parts = partition(y, 3, "iid")
    cfg = cfg_for("regression", ORGS[:3], rounds=4, num_leaves=7)
    coord, _, trips = train(cfg, organisations(cfg, X, y, parts))
    text, exchanges = pooled(cfg, X, y, parts)
    assert coord.model_text() == text
    # begin_round's bounds choose the next tree's fixed-point scales: its answer cannot wait
    assert set(trips.values()) == {exchanges + cfg.training.rounds}


class OneByOne(EngineGroup):
    def __init__(self, parties, *, totals):
        super().__init__(parties, n_threads=len(parties))
        self.totals = totals

    def describe(self):
        return self.totals


def test_a_batch_answers_as_its_parts_sent_one_by_one():
    X, y = make_rows("binary", n=800, seed=2)
    parts = partition(y, 2, "iid")
    cfg = cfg_for("binary", ORGS[:2], rounds=3, num_leaves=5)
    params = cfg.training.engine_params("binary", 1, "auc")

    def run(batched: bool):
        links = [Link(p) for p in organisations(cfg, X, y, parts)]
        for link in links:
            link.call("start", np.zeros(1))
        group = FederationGroup.of(links, objective="binary", evaluate=("evaluate",))
        if not batched:  # the same parties, every call sent alone
            group = OneByOne(group.parties, totals=group.totals)
        trainer = Trainer(group, params, categorical=[3], prefetch=batched)
        trainer.start()
        while not trainer.done:
            trainer.step()
        evaluation = (
            group.take_evaluation()[0]
            if batched
            else protocol.merge("evaluate", [link.call("evaluate") for link in links])
        )
        return trainer.finish(), evaluation, links

    model, evaluation, links = run(True)
    model_one_by_one, evaluation_one_by_one, links_one_by_one = run(False)
    assert model.equal(model_one_by_one)
    np.testing.assert_array_equal(evaluation, evaluation_one_by_one)
    assert links[0].calls < links_one_by_one[0].calls
    assert {"begin_round", "start_trees", "histograms", "apply_split", "finish", "evaluate"} <= links[0].answered
    assert "batch" not in links[0].answered  # the receipt lists what the parts disclosed


def test_a_batch_is_checked_part_by_part():
    party = organisations(cfg_for("binary", ORGS[:1]), *make_rows("binary", n=300), [np.arange(300)])[0]
    assert party.call("batch", [["describe", [], {}], ["label_totals", [], {}]])[1][0] == 240
    with pytest.raises(protocol.ProtocolError, match=r"^batch: part 1 is a batch; batches do not nest$"):
        party.call("batch", [["describe", [], {}], ["batch", [[]], {}]])
    with pytest.raises(protocol.ProtocolError, match=r"^unknown call 'drop_tables'; allowed: begin_training, "):
        party.call("batch", [["drop_tables", [], {}]])
    with pytest.raises(protocol.ProtocolError, match=r"^batch: part 0 must be \[call, args, kwargs\]$"):
        party.call("batch", [["describe"]])
    with pytest.raises(protocol.ProtocolError, match=r"^histograms is not accepted in stage 'created'"):
        party.call("batch", [["describe", [], {}], ["histograms", [np.zeros(1, dtype=np.int64)], {}]])


class Meeting(Party):
    """A party whose histograms wait until every organisation's request has arrived (a barrier, not a clock)."""

    barrier: threading.Barrier
    in_process = False  # as a party behind a server: organisations in this process of this size answer in turn

    def call(self, name, *args, **kwargs):
        if name == "histograms":
            self.barrier.wait()  # BrokenBarrierError unless all requests are in flight together
        return super().call(name, *args, **kwargs)


def test_requests_to_all_organisations_are_in_flight_together():
    X, y = make_rows("binary", n=1600, seed=4)
    parts = partition(y, 4, "iid")
    cfg = cfg_for("binary", ORGS[:4], rounds=2, num_leaves=5)
    Meeting.barrier = threading.Barrier(4, timeout=30)
    parties = [
        Meeting(p.name, p._data, objective="binary", num_class=1, feature_names=list(cfg.features), categorical=[3])
        for p in organisations(cfg, X, y, parts)
    ]
    coord, _, trips = train(cfg, parties)
    assert not Meeting.barrier.broken and coord.model_text() == pooled(cfg, X, y, parts)[0]
    assert len(set(trips.values())) == 1


def test_parties_in_this_process_answer_in_turn_unless_large_and_remote_ones_all_at_once():
    from types import SimpleNamespace

    from fedmine.coordinator.link import IN_TURN_ROWS, party_threads

    X, y = make_rows("binary", n=400, seed=4)
    cfg = cfg_for("binary", ORGS[:4], rounds=1)
    here = [Link(p) for p in organisations(cfg, X, y, partition(y, 4, "iid"))]
    cores = numba.get_num_threads()
    assert party_threads(here, 400) == 1
    assert party_threads(here, 4 * IN_TURN_ROWS - 1) == 1
    assert party_threads(here, 4 * IN_TURN_ROWS) == min(4, cores)
    remote = Link(SimpleNamespace(name="far"))  # a RemoteParty has no in_process: its round trips overlap
    assert party_threads([*here[:3], remote], 400) == 4
    assert party_threads([], 0) == 1


class _Record:
    def __init__(self):
        self.values = np.zeros((2, 3), dtype=np.int64)  # 48 bytes
        self.name = "hé"  # 3 bytes of UTF-8


def test_payload_bytes_counts_buffers_text_scalars_and_record_fields():
    from fedmine.coordinator.link import payload_bytes

    # keys count too: "a" 1, the record's fields 48 + 3 and their names 6 + 4; a split's tuple of
    # 6 scalars 48 (None is nothing); bytes 2
    value = [{"a": _Record()}, (1, np.int64(2), 3.0, True, None, 5, 6), bytearray(b"xy")]
    assert payload_bytes(value) == 1 + (48 + 3 + 6 + 4) + 48 + 2
    assert payload_bytes(None) == 0
