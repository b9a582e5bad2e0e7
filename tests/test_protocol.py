"""The protocol table: consistent with its implementations, and the one place a call is added."""

from __future__ import annotations

import numpy as np
import pytest

from fedmine import protocol
from fedmine.coordinator.client import RemoteParty
from fedmine.coordinator.link import EngineProxy, Link
from fedmine.gbdt.state import EngineGroup, EngineState
from fedmine.party.organisation import Party
from fedmine.party.server import serve_party
from fedmine.protocol import ENGINE, ORGANISATION, SUMMED, Call, ProtocolError
from fedmine.transport.certs import client_tls, init_ca, issue, server_tls
from tests.coordinator.test_strategies import make_data

ORGS = ("bank", "clinic", "shop")
VERTICAL = {n for n in protocol.CALLS if n.split("_")[0] in ("psi", "vertical", "owner")}
KNOWN_STAGES = {protocol.ANY, protocol.NEW, protocol.FOLLOWING, *protocol.ENGINE_STAGES}


def make_party(name: str, seed: int, cls: type[Party] = Party) -> Party:
    return cls(
        name,
        make_data(120, seed, 0.2 * seed),
        objective="binary",
        num_class=1,
        feature_names=["a", "b", "c"],
        categorical=[2],
    )


def keyed(parties: list[Party]) -> None:
    """Secure aggregation set up among ``parties`` as the coordinator does it."""
    keys = {p.name: p.call("secure_setup", "training-1") for p in parties}
    for p in parties:
        p.call("secure_peers", keys)


# ---------------------------------------------------------------------------
# the table and what implements it
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("entry", list(protocol.CALLS.values()), ids=lambda c: c.name)
def test_every_call_is_implemented_on_its_side(entry):
    from fedmine.party.vertical import VerticalParty

    # organisation calls: on the party, the vertical ones on the vertical federation's party
    owner = (VerticalParty if entry.name in VERTICAL else Party) if entry.side == ORGANISATION else EngineState
    assert callable(getattr(owner, entry.name, None)), f"{owner.__name__}.{entry.name}"
    assert set(entry.needs) <= KNOWN_STAGES and (entry.leads_to is None or entry.leads_to in KNOWN_STAGES)
    assert entry.doc and "\n" not in entry.doc


def test_summed_answers_are_integer_sums_and_disclosed_ones_are_kept_apart():
    summed = {
        "grid_counts",
        "label_stats",
        "histograms",
        "split_histograms",
        "metric_stats",
        "evaluate",
        "label_totals",
    }
    assert summed <= protocol.summed()
    assert not protocol.summed() & protocol.disclosed()
    assert {"describe", "own_metrics", "train_local", "begin_round", "feature_ranges"} <= protocol.disclosed()
    parts = [np.array([1, 2], dtype=np.int64), np.array([10, 20], dtype=np.int64)]
    assert protocol.merge("histograms", parts).tolist() == [11, 22]
    # four answers, wrapping as masked ones do: the sum is exact and no answer is changed
    edge = np.iinfo(np.int64)
    four = [np.array([edge.max, 1]), np.array([1, 2]), np.array([edge.min, 3]), np.array([-1, 4])]
    before = [a.copy() for a in four]
    assert protocol.merge("histograms", four).tolist() == [-1, 10]
    assert all(np.array_equal(a, b) for a, b in zip(four, before))
    assert protocol.merge("histograms", [np.array([1]), np.array([[1], [2]]), np.array([1])]).tolist() == [[3], [4]]
    assert protocol.merge("describe", [{"n_rows": 1}, {"n_rows": 2}]) == [{"n_rows": 1}, {"n_rows": 2}]
    ranges = protocol.merge("feature_ranges", [np.array([[0.0, 1.0]]), np.array([[-1.0, 0.5]])])
    assert ranges.tolist() == [[-1.0, 1.0]]


def test_a_bad_entry_is_refused_when_declared():
    with pytest.raises(ValueError, match="a summed answer merges by sum and only it does"):
        Call("x", ORGANISATION, (protocol.ANY,), None, "", "int64", "max", SUMMED, "x")
    with pytest.raises(ValueError, match=r"merge 'avg' is not one of"):
        Call("x", ORGANISATION, (protocol.ANY,), None, "", "int64", "avg", SUMMED, "x")
    with pytest.raises(ValueError, match="already in the protocol table"):
        protocol.register(protocol.CALLS["describe"])


def test_party_checks_the_stage_and_the_table_before_acting():
    party = make_party("bank", 1)
    with pytest.raises(
        ProtocolError, match=r"^unknown call 'drop_tables'; allowed: begin_training, describe, secure_setup, "
    ):
        party.call("drop_tables")
    with pytest.raises(
        ProtocolError,
        match=r"^train_local is not accepted in stage 'new'; it needs one of "
        r"\['following'\]$",
    ):
        party.call("train_local", {}, 1)
    with pytest.raises(ProtocolError, match=r"^histograms is not accepted in stage 'created'"):
        party.call("histograms", np.zeros(1, dtype=np.int64))
    party.call("start", np.zeros(1))
    assert party.stage_ == protocol.FOLLOWING


# ---------------------------------------------------------------------------
# adding a call: one table entry and its implementation
# ---------------------------------------------------------------------------

#: A call that exists only in this test: how many training rows of each class, summed over organisations.
CLASS_COUNTS = Call(
    "class_counts", ORGANISATION, (protocol.ANY,), None, "", "int64 (2,)", "sum", SUMMED, "training rows of each class"
)

#: An engine call that exists only in this test: binned rows per feature in bin 0.
BIN_ZERO = Call(
    "bin_zero_counts",
    ENGINE,
    (protocol.BINNED, protocol.READY),
    None,
    "",
    "int64 (n_features,)",
    "sum",
    SUMMED,
    "rows whose bin is 0, per feature",
)


class CountingParty(Party):
    def class_counts(self) -> np.ndarray:
        y = self._data.y_train
        return np.array([(y == 0).sum(), (y == 1).sum()], dtype=np.int64)


class CountingEngine(EngineState):
    def bin_zero_counts(self) -> np.ndarray:
        return (self.bins == 0).sum(axis=1).astype(np.int64)  # bins are column-major: (n_features, n_rows)


def pooled_class_counts(parties: list[Party]) -> list[int]:
    y = np.concatenate([p._data.y_train for p in parties])
    return [int((y == 0).sum()), int((y == 1).sum())]


def test_a_new_organisation_call_is_one_entry_and_its_implementation(tmp_path):
    parties = [make_party(o, i + 1, CountingParty) for i, o in enumerate(ORGS)]
    with protocol.registered(CLASS_COUNTS):
        # in process, through the coordinator's links; masked under secure aggregation
        keyed(parties)
        links = [Link(p) for p in parties]
        answers = [link.call("class_counts") for link in links]
        assert all(not np.array_equal(a, p.class_counts()) for a, p in zip(answers, parties))  # each one masked
        assert protocol.merge("class_counts", answers).tolist() == pooled_class_counts(parties)
        assert all(link.bytes_sent == 16 for link in links)

        # over Arrow Flight with mutual TLS: the server serves it and the client has it, from the table alone
        init_ca(tmp_path, federation="demo")
        for org in ORGS:
            issue(tmp_path, org)
        issue(tmp_path, "coordinator", kind="coordinator")
        fresh = [make_party(o, i + 1, CountingParty) for i, o in enumerate(ORGS)]
        servers = [serve_party(p, port=0, tls=server_tls(tmp_path, p.name)) for p in fresh]
        try:
            remotes = [RemoteParty(s.name, s.endpoint, tls=client_tls(tmp_path), retries=0) for s in servers]
            assert "class_counts" in remotes[0].list_actions()
            keys = {r.name: r.secure_setup("training-2") for r in remotes}
            for r in remotes:
                r.secure_peers(keys)
            over_wire = [r.class_counts() for r in remotes]
            assert protocol.merge("class_counts", over_wire).tolist() == pooled_class_counts(fresh)
        finally:
            for s in servers:
                s.shutdown()
    assert "class_counts" not in protocol.CALLS
    with pytest.raises(ProtocolError, match="unknown call 'class_counts'"):
        parties[0].call("class_counts")


def test_a_new_engine_call_is_merged_by_its_table_entry():
    from fedmine.gbdt.binning import edges_from_grid_counts, make_grids
    from fedmine.gbdt.rows import SumOfSources  # noqa: F401 - the group's histogram path

    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(50 + 10 * i, 3)) for i in range(3)]
    states = [CountingEngine(X, (X[:, 0] > 0).astype(float)) for X in parts]
    with protocol.registered(BIN_ZERO):
        group = EngineGroup(states, n_threads=1)
        ranges = group.feature_ranges()
        grids = make_grids(ranges, n_grid=64)
        categorical = np.zeros(3, dtype=bool)
        mapper = edges_from_grid_counts(
            group.grid_counts(grids, categorical), grids, max_bin=8, categorical=categorical, ranges=ranges
        )
        group.set_bins(mapper)
        total = group.bin_zero_counts()
        assert total.tolist() == sum(s.bin_zero_counts() for s in states).tolist()
        # the same call through links to parties, as the coordinator's booster sees them
        proxies = [EngineProxy(Link(_EngineOnly(s))) for s in states]
        assert EngineGroup(proxies, n_threads=1).bin_zero_counts().tolist() == total.tolist()
    with pytest.raises(AttributeError, match="has no call 'bin_zero_counts'"):
        group.bin_zero_counts  # noqa: B018


class _EngineOnly:
    """A party reduced to its engine state (enough for engine calls through a Link)."""

    def __init__(self, state: EngineState) -> None:
        self.name = "p"
        self.state = state

    def call(self, name, *args, **kwargs):
        return getattr(self.state, name)(*args, **kwargs)
