"""Parties served over Arrow Flight with mutual TLS: same answers as in process, refusals, hostile input, retries."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmine import protocol
from fedmine.config import config_from_dict
from fedmine.coordinator.client import RemoteParty
from fedmine.coordinator.link import Link
from fedmine.coordinator.strategies import FederationGroup
from fedmine.coordinator.training import Coordinator
from fedmine.errors import DataError, FedmineError, PartyError
from fedmine.gbdt.booster import Trainer
from fedmine.gbdt.state import ProtocolError
from fedmine.party.organisation import Party
from fedmine.party.server import PartyServer, serve_party
from fedmine.transport import wire
from fedmine.transport.certs import ClientTLS, client_tls, init_ca, issue, server_tls
from fedmine.transport.flight import ANSWER, CALL_STREAM, ERROR, STREAM_IDLE_SECONDS, request_frame

ORGS = ("bank", "clinic")
FEATURES = {"a": {}, "b": {}, "c": {"type": "category", "categories": ["x", "y", "z"]}}
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A federation CA with bank, clinic and the coordinator; a foreign CA with its own coordinator."""
    ours, other = tmp_path_factory.mktemp("pki"), tmp_path_factory.mktemp("other-pki")
    init_ca(ours, federation="demo")
    for org in ORGS:
        issue(ours, org)
    issue(ours, "coordinator", kind="coordinator")
    init_ca(other, federation="demo")
    issue(other, "coordinator", kind="coordinator")
    return ours, other


from tests.coordinator.test_strategies import make_data as make_split  # noqa: E402


def make_party(name, seed=1, n=300):
    return Party(
        name,
        make_split(n, seed, 0.3 * seed),
        objective="binary",
        num_class=1,
        feature_names=["a", "b", "c"],
        categorical=[2],
    )


@pytest.fixture()
def serve(pki):
    """serve(party, name=party.name, **kwargs) -> running PartyServer; all are shut down after the test."""
    servers = []

    def start(party, name=None, **kwargs):
        kwargs.setdefault("tls", server_tls(pki[0], name or party.name))
        server = serve_party(party, port=0, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


def remote(pki, name, server, **kwargs):
    kwargs.setdefault("tls", client_tls(pki[0]))
    kwargs.setdefault("retries", 0)
    return RemoteParty(name, server.endpoint, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same(a, b, path="answer"):
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), path
    else:
        assert a == b or (a != a and b != b), path


# ---------------------------------------------------------------------------
# the protocol over the wire
# ---------------------------------------------------------------------------


def test_party_calls_over_mtls_answer_as_in_process(pki, serve):
    local, served = make_party("bank"), make_party("bank")
    party = remote(pki, "bank", serve(served))
    assert party.name == "bank"
    assert_same(party.describe(), local.describe())
    for p in (local, party):
        p.call("start", np.array([0.1]))
    assert_same(party.evaluate(), local.call("evaluate"))
    params = {
        "objective": "binary",
        "num_leaves": 4,
        "min_data_in_leaf": 5,
        "num_threads": 1,
        "verbosity": -1,
        "deterministic": True,
    }
    blocks = party.train_local(params, 2)
    assert all(a.equal(b) for a, b in zip(blocks, local.call("train_local", params, 2)))
    delta = blocks[:1]
    for p in (local, party):
        p.call("add_trees", 1, delta)
        p.call("add_trees", 1, delta)  # a retried call is skipped
    assert_same(party.evaluate(), local.call("evaluate"))
    assert_same(party.local_baseline(params, 3), local.call("local_baseline", params, 3))


def test_histogram_training_over_flight_equals_in_process_bit_for_bit(pki, serve):
    params = {
        "objective": "binary",
        "num_boost_round": 3,
        "num_leaves": 5,
        "min_data_in_leaf": 5,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "max_cat_to_onehot": 1,
        "min_data_per_group": 5,
    }

    def model(parties):
        links = [Link(p) for p in parties]
        group = FederationGroup.of(links, objective="binary")
        trainer = Trainer(group, params, categorical=[2], feature_names=["a", "b", "c"])
        trainer.start()
        while not trainer.done:
            trainer.step()
        return trainer.finish(), links

    local, _ = model([make_party(o, seed=i + 1) for i, o in enumerate(ORGS)])
    remotes = [remote(pki, o, serve(make_party(o, seed=i + 1))) for i, o in enumerate(ORGS)]
    over_wire, links = model(remotes)
    assert len(over_wire.trees) == 3 and over_wire.equal(local)
    assert all(link.calls > 10 and link.bytes_sent > 0 for link in links)


@pytest.mark.filterwarnings("ignore::fedmine.privacy.secure_agg.SecureAggregationWarning")
def test_coordinator_trains_the_same_model_through_remote_parties(pki, serve):
    cfg = config_from_dict(
        {
            "name": "t",
            "label": "y",
            "features": FEATURES,
            "organisations": {o: {"source": f"{o}.csv"} for o in ORGS},
            "training": {
                "strategy": "histogram",
                "rounds": 2,
                "num_leaves": 4,
                "min_data_in_leaf": 5,
                "num_threads": 1,
            },
        }
    )

    def run(parties):
        coord = Coordinator(cfg, parties)
        coord.start()
        results = [coord.run_round(r) for r in (1, 2)]
        trips = [(r.stats["traffic/round_trips"], r.stats["train/histogram_exchanges"]) for r in results]
        return coord.model_text(), [(r.global_metrics, r.org_metrics) for r in results], trips

    local = run([make_party(o, seed=i + 1) for i, o in enumerate(ORGS)])
    over_wire = run([remote(pki, o, serve(make_party(o, seed=i + 1))) for i, o in enumerate(ORGS)])
    assert over_wire == local  # the same model, metrics and round trips (counted by the client)
    (first, exchanges), (last, last_exchanges) = over_wire[2]
    assert first == exchanges and last == last_exchanges + 1  # one per exchange; the final tree's call


def test_a_dp_training_over_flight_sends_every_release_with_its_noise(pki, serve):
    """Each remote party enforces its own epsilon; the noisy label totals, bins and leaf sums cross the wire."""
    from fedmine.party.policy import PartyPolicy

    features = {"a": {"min": -6, "max": 8}, "b": {"min": -6, "max": 6}, **{"c": FEATURES["c"]}}
    cfg = config_from_dict(
        {
            "name": "t",
            "label": "y",
            "features": features,
            "organisations": {o: {"source": f"{o}.csv"} for o in ORGS},
            "training": {"strategy": "histogram", "rounds": 2, "num_threads": 1},
            "privacy": {"epsilon": 2.0},
        }
    )
    parties = []
    for i, o in enumerate(ORGS):
        party = make_party(o, seed=i + 1)
        party.policy = PartyPolicy.from_config(cfg, o)
        parties.append(remote(pki, o, serve(party)))
    coord = Coordinator(cfg, parties)
    coord.start()
    results = [coord.run_round(r) for r in (1, 2)]
    receipt = coord.receipt().as_dict()
    assert [receipt[f"param.release.{k}.count"] for k in ("label_totals", "bins", "leaf_sums")] == [1, 1, 2]
    assert all(r.global_metrics == {} for r in results) and 0 < receipt["epsilon_total"] <= 2.0
    with pytest.raises(PartyError, match=r"party bank: evaluate refused: .*privacy.epsilon=2; validation sums"):
        parties[0].call("evaluate")


def test_link_wraps_a_remote_party_unchanged(pki, serve):
    link = Link(remote(pki, "bank", serve(make_party("bank"))))
    assert link.name == "bank" and link.call("label_totals")[0] == 225
    assert link.calls == 1 and link.bytes_sent > 0


def test_server_lists_the_actions_it_serves(pki, serve):
    party = remote(pki, "bank", serve(make_party("bank")))
    assert party.list_actions() == list(protocol.CALLS)
    assert "histograms" in party.list_actions() and "engine" not in party.list_actions()


def test_calls_not_served_are_refused(pki, serve):
    server = serve(make_party("bank"), allowed_calls=("describe", "start", "evaluate"))
    party = remote(pki, "bank", server)
    with pytest.raises(
        PartyError,
        match=r"party bank: action 'train_local' is not served; served: describe, start, "
        r"evaluate",
    ):
        party.train_local({}, 1)
    with pytest.raises(PartyError, match=r"action 'secure_setup' is not served"):
        party.secure_setup("training-1")
    with pytest.raises(AttributeError, match=r"RemoteParty 'bank' has no call 'drop_tables'"):
        party.drop_tables  # noqa: B018 - not in the protocol table
    with pytest.raises(ProtocolError, match=r"unknown call 'drop_table'; allowed: begin_training, describe, "):
        party.call("drop_table")
    assert party.describe()["n_features"] == 3  # still serving


def test_a_batch_with_a_call_not_served_is_refused_whole(pki, serve):
    party = make_party("bank")
    server = serve(party, allowed_calls=("describe", "batch", "label_totals"))
    client = remote(pki, "bank", server)
    assert client.batch([["describe", [], {}], ["label_totals", [], {}]])[1][0] == 225
    with pytest.raises(PartyError, match=r"party bank: batch part 'start' is not served; served: describe, batch, "):
        client.batch([["describe", [], {}], ["start", [np.zeros(1)], {}]])
    assert party.stage_ == "new"  # nothing of it was done


def test_allowed_calls_must_be_in_the_protocol_table(pki):
    with pytest.raises(FedmineError, match=r"party bank: allowed call 'shell' is not in the protocol table; allowed: "):
        serve_party(make_party("bank"), port=0, tls=server_tls(pki[0], "bank"), allowed_calls=("describe", "shell"))


# ---------------------------------------------------------------------------
# call streams
# ---------------------------------------------------------------------------


class CountingServer(PartyServer):
    """A party server that counts the call streams opened to it."""

    def __init__(self, *args, **kwargs):
        self.streams = 0
        super().__init__(*args, **kwargs)

    def do_exchange(self, context, descriptor, reader, writer):
        self.streams += 1
        return super().do_exchange(context, descriptor, reader, writer)


def counting_server(pki, party, port=0):
    return CountingServer(party, f"grpc+tls://127.0.0.1:{port}", tls=server_tls(pki[0], party.name))


def test_calls_share_one_open_stream_and_errors_keep_it(pki):
    server = counting_server(pki, make_party("bank"))
    try:
        party = remote(pki, "bank", server)
        for _ in range(5):
            assert party.label_totals()[0] == 225
        with pytest.raises(ProtocolError, match=r"^evaluate is not accepted in stage 'new'"):
            party.evaluate()
        assert party.describe()["n_features"] == 3
        assert server.streams == 1
        party.close()
    finally:
        server.shutdown()


def test_idle_streams_end_so_a_server_stops_while_its_client_lives(pki):
    server = counting_server(pki, make_party("bank"))
    party = remote(pki, "bank", server)
    assert party.label_totals()[0] == 225
    time.sleep(STREAM_IDLE_SECONDS + 0.3)  # the client ends the idle stream
    assert party.label_totals()[0] == 225  # on a new stream
    assert server.streams == 2
    t0 = time.perf_counter()
    server.shutdown()  # the client is not closed: its idle stream ends by itself
    assert time.perf_counter() - t0 < STREAM_IDLE_SECONDS + 5


SERVE_BANK = """
import sys
import numpy as np
from fedmine.transport.certs import server_tls
from fedmine.party.server import run_party_server, serve_party
from fedmine.party.organisation import Party, TrainValidRows
X, y = np.zeros((4, 1)), np.zeros(4)
party = Party("bank", TrainValidRows(X, y, X[:0], y[:0]), objective="binary", num_class=1, feature_names=["a"],
              categorical=[])
server = serve_party(party, port=int(sys.argv[2]), tls=server_tls(sys.argv[1], "bank"))
run_party_server(server, ready=lambda: print(server.endpoint, flush=True))
print("stopped", flush=True)
"""


def serve_bank_process(pki, port):
    """A bank party server in its own process on ``port``; (process, endpoint)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_BANK, str(pki[0]), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    endpoint = proc.stdout.readline().strip()
    assert endpoint.startswith("grpc+tls://127.0.0.1:"), proc.stderr.read()
    return proc, endpoint


def test_a_stream_to_a_killed_and_restarted_server_is_replaced_without_a_retry(pki, monkeypatch):
    import fedmine.coordinator.client as client_module

    monkeypatch.setattr(client_module, "STREAM_IDLE_SECONDS", 600.0)  # the stream stays open across the restart
    port = free_port()
    procs = [serve_bank_process(pki, port)[0]]
    try:
        party = RemoteParty("bank", f"127.0.0.1:{port}", tls=client_tls(pki[0]), retries=0)
        assert party.label_totals()[0] == 4
        procs[0].kill()  # no shutdown: the open stream is left broken
        procs[0].wait()
        procs.append(serve_bank_process(pki, port)[0])
        assert party.label_totals()[0] == 4  # the broken stream fails; a fresh one answers, no retry spent
        party.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def raw_stream(server, pki):
    c = client_tls(pki[0])
    client = flight.FlightClient(
        server.endpoint, tls_root_certs=c.ca, cert_chain=c.cert, private_key=c.key, override_hostname="bank"
    )
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(CALL_STREAM))
    return client, writer, reader


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=st.binary(min_size=1, max_size=200))
def test_garbage_frames_get_error_frames_and_the_stream_goes_on(hostile, pki, frame):
    server, _ = hostile
    client, writer, reader = raw_stream(server, pki)
    try:
        for body in (frame, bytes([8]) + b"describe" + frame):
            writer.write_metadata(pa.py_buffer(body))
            answer = reader.read_chunk().app_metadata.to_pybytes()
            if answer[:1] == ANSWER:  # the garbage happened to be a valid request
                continue
            assert answer[:1] == ERROR
            desc = wire.decode(answer[1:])
            assert desc["type"] in ("WireError", "PartyError") and "\n" not in desc["message"], desc
        writer.write_metadata(pa.py_buffer(request_frame("label_totals", (), {})))
        answer = reader.read_chunk().app_metadata.to_pybytes()
        assert answer[:1] == ANSWER and wire.decode(answer[1:])[0] == 225
        writer.done_writing()
    finally:
        client.close()


def test_an_empty_frame_ends_the_stream_and_the_server_goes_on(hostile, pki):
    server, _ = hostile
    client, writer, reader = raw_stream(server, pki)
    writer.write_metadata(pa.py_buffer(b""))
    with pytest.raises(StopIteration):
        reader.read_chunk()
    client.close()
    assert remote(pki, "bank", server).label_totals()[0] == 225


def test_only_the_call_stream_is_exchanged(pki, serve):
    server = serve(make_party("bank"))
    c = client_tls(pki[0])
    client = flight.FlightClient(
        server.endpoint, tls_root_certs=c.ca, cert_chain=c.cert, private_key=c.key, override_hostname="bank"
    )
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"other"))
    with pytest.raises(flight.FlightServerError) as info:
        reader.read_chunk()
    assert wire.decode(info.value.extra_info) == {
        "type": "PartyError",
        "message": "party bank: do_exchange serves only the call stream 'fedmine.calls'",
    }
    with pytest.raises(flight.FlightServerError):
        writer.close()
    client.close()


# ---------------------------------------------------------------------------
# errors cross as their class, with a one-line reason
# ---------------------------------------------------------------------------


class SecretError(FedmineError):
    """Not on the wire's allow-list: arrives as PartyError."""


class FaultyParty:
    name = "faulty"

    def describe(self):
        time.sleep(1.0)
        return {}

    def start(self, base_score):
        raise DataError("organisation faulty: column 'age' has 3 values below 0")

    def evaluate(self):
        raise ValueError("bad\nthing")

    def local_baseline(self, params, num_boost_round):
        raise SecretError("the secret")

    def histograms(self, node_ids):
        raise ProtocolError("histograms is not accepted in stage 'created'")

    def call(self, name, *args, **kwargs):
        return getattr(self, name)(*args, **kwargs)

    def train_local(self, params, num_boost_round):
        return object()  # cannot travel


FAULTY_CALLS = ("describe", "start", "evaluate", "local_baseline", "histograms", "train_local")


def test_party_errors_keep_their_class_and_message(pki, serve):
    server = serve(FaultyParty(), name="bank", allowed_calls=FAULTY_CALLS)  # served under bank's certificate
    party = RemoteParty("bank", server.endpoint, tls=client_tls(pki[0]), retries=0, timeout=0.3)
    with pytest.raises(DataError, match=r"^organisation faulty: column 'age' has 3 values below 0$"):
        party.start(np.zeros(1))
    with pytest.raises(PartyError, match=r"^party faulty: evaluate failed: ValueError: bad thing$"):
        party.evaluate()
    with pytest.raises(
        PartyError,
        match=r"^party bank at grpc\+tls://127.0.0.1:\d+: local_baseline: SecretError: "
        r"the secret$",
    ):
        party.local_baseline({}, 1)
    with pytest.raises(ProtocolError, match=r"^histograms is not accepted in stage 'created'$"):
        party.histograms(np.arange(2))
    with pytest.raises(
        PartyError,
        match=r"^party faulty: train_local: answer cannot travel: values of type builtins.object cannot travel$",
    ):
        party.train_local({}, 1)
    with pytest.raises(
        PartyError, match=r"^party bank at grpc\+tls://127.0.0.1:\d+: describe: no answer within 0.3 s$"
    ):
        party.describe()
    # through a Link, as in process: FedmineErrors unchanged, ProtocolError becomes PartyError
    link = Link(party)
    with pytest.raises(DataError):
        link.call("start", np.zeros(1))
    with pytest.raises(PartyError, match=r"histograms failed: ProtocolError"):
        link.call("histograms", np.arange(2))


def test_errors_carry_no_traceback(pki, serve):
    server = serve(FaultyParty(), name="bank", allowed_calls=FAULTY_CALLS)
    c = client_tls(pki[0])
    client = flight.FlightClient(
        server.endpoint, tls_root_certs=c.ca, cert_chain=c.cert, private_key=c.key, override_hostname="bank"
    )
    with pytest.raises(flight.FlightServerError) as info:
        list(client.do_action(flight.Action("evaluate", wire.encode(((), {})))))
    assert "Traceback" not in str(info.value) and "File " not in str(info.value)
    assert wire.decode(info.value.extra_info) == {
        "type": "PartyError",
        "message": "party faulty: evaluate failed: ValueError: bad thing",
    }


class CountingParty:
    """Records how many calls are inside the party at once."""

    name = "bank"

    def __init__(self):
        self.inside = self.most = 0
        self.guard = threading.Lock()

    def _enter(self):
        with self.guard:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.1)
        with self.guard:
            self.inside -= 1

    def evaluate(self):
        self._enter()
        return {}

    def call(self, name, *args, **kwargs):
        return getattr(self, name)(*args, **kwargs)

    def describe(self):
        self._enter()
        return {}


def test_calls_to_the_party_are_serialised_except_independent_ones(pki, serve):
    party_obj = CountingParty()
    party = remote(pki, "bank", serve(party_obj, allowed_calls=("evaluate", "describe")))
    party.describe()  # connect once

    def hammer(method):
        party_obj.most = 0
        threads = [threading.Thread(target=getattr(party, method)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return party_obj.most

    assert hammer("evaluate") == 1
    assert hammer("describe") > 1


# ---------------------------------------------------------------------------
# mutual TLS
# ---------------------------------------------------------------------------


def raw_action(endpoint, *, ca, cert=None, key=None, hostname="bank", name="describe", body=None):
    client = flight.FlightClient(
        endpoint, tls_root_certs=ca, cert_chain=cert, private_key=key, override_hostname=hostname
    )
    try:
        body = wire.encode(((), {})) if body is None else body
        return list(client.do_action(flight.Action(name, body), flight.FlightCallOptions(timeout=5)))
    finally:
        client.close()


def test_client_without_certificate_is_refused(pki, serve):
    server = serve(make_party("bank"))
    with pytest.raises(flight.FlightUnavailableError):
        raw_action(server.endpoint, ca=client_tls(pki[0]).ca)


def test_client_certificate_from_another_ca_is_refused(pki, serve):
    server = serve(make_party("bank"))
    ours, theirs = client_tls(pki[0]), client_tls(pki[1])
    party = RemoteParty("bank", server.endpoint, tls=ClientTLS(cert=theirs.cert, key=theirs.key, ca=ours.ca), retries=0)
    with pytest.raises(
        PartyError,
        match=r"party bank at grpc\+tls://127.0.0.1:\d+: describe: unreachable after 1 "
        r"attempts",
    ):
        party.describe()


def test_only_the_coordinator_certificate_is_answered(pki, serve):
    server = serve(make_party("bank"))
    clinic = client_tls(pki[0], "clinic")  # signed by our CA, but an organisation's
    party = RemoteParty("bank", server.endpoint, tls=clinic, retries=0)
    with pytest.raises(
        PartyError,
        match=r"describe: refused: party bank: certificate 'clinic' is not the "
        r"coordinator's \('coordinator'\)",
    ):
        party.describe()
    with pytest.raises(PartyError, match=r"list_actions: refused"):
        party.list_actions()
    with pytest.raises(flight.FlightUnauthenticatedError):
        c = client_tls(pki[0], "clinic")
        client = flight.FlightClient(
            server.endpoint, tls_root_certs=c.ca, cert_chain=c.cert, private_key=c.key, override_hostname="bank"
        )
        list(client.list_flights())


def test_client_refuses_a_server_of_another_organisation(pki, serve):
    clinic_server = serve(make_party("clinic"))
    party = remote(pki, "bank", clinic_server)  # expects bank, reaches clinic
    with pytest.raises(PartyError, match=r"party bank at .*: describe: unreachable"):
        party.describe()
    assert remote(pki, "clinic", clinic_server).label_totals()[0] == 225


def test_plain_connections_only_when_allowed(pki, serve):
    with pytest.raises(
        FedmineError,
        match=r"organisation bank: endpoint 127.0.0.1:1 needs TLS \(certificates\); "
        r"plain connections need allow_insecure=True",
    ):
        RemoteParty("bank", "127.0.0.1:1", tls=None)
    with pytest.raises(FedmineError, match=r"party bank: serving without TLS needs allow_insecure=True"):
        serve_party(make_party("bank"), port=0, tls=None)
    with pytest.raises(FedmineError, match=r"endpoint grpc://127.0.0.1:1 is plain gRPC but TLS is configured"):
        RemoteParty("bank", "grpc://127.0.0.1:1", tls=client_tls(pki[0]))
    tls_server = serve(make_party("bank"))
    plain_client = RemoteParty("bank", f"127.0.0.1:{tls_server.port}", tls=None, allow_insecure=True, retries=0)
    with pytest.raises(PartyError, match=r"unreachable"):
        plain_client.describe()
    plain_server = serve(make_party("bank"), tls=None, allow_insecure=True)
    assert plain_server.endpoint.startswith("grpc://127.0.0.1:")
    party = RemoteParty("bank", plain_server.endpoint, tls=None, allow_insecure=True, retries=0)
    assert party.label_totals()[0] == 225


@pytest.mark.parametrize("endpoint", ["bank", "http://x:1", "x:99999999", "x:70000", "x:0", "", "x:1/path"])
def test_bad_endpoints_are_refused(pki, endpoint):
    with pytest.raises(FedmineError, match=r"organisation bank: endpoint must be host:port or grpc\+tls://host:port"):
        RemoteParty("bank", endpoint, tls=client_tls(pki[0]))


# ---------------------------------------------------------------------------
# hostile input
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(pki):
    """One served party and a coordinator client that sends raw actions."""
    server = serve_party(make_party("bank"), port=0, tls=server_tls(pki[0], "bank"), max_request_bytes=64 * 1024)
    c = client_tls(pki[0])
    client = flight.FlightClient(
        server.endpoint, tls_root_certs=c.ca, cert_chain=c.cert, private_key=c.key, override_hostname="bank"
    )
    yield server, client
    client.close()
    server.shutdown()


def send(client, name, body):
    """The decoded answer, or the error description {"type", "message"}; nothing else may happen."""
    try:
        results = list(client.do_action(flight.Action(name, body), flight.FlightCallOptions(timeout=10)))
    except flight.FlightServerError as exc:
        desc = wire.decode(exc.extra_info)
        assert set(desc) == {"type", "message"} and "\n" not in desc["message"]
        return desc
    assert len(results) == 1
    return wire.decode(results[0].body)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), magic=st.booleans())
def test_garbage_bodies_only_get_errors(hostile, body, magic):
    _, client = hostile
    for name in ("describe", "start", "histograms"):
        answer = send(client, name, (wire.MAGIC if magic else b"") + body)
        assert answer["type"] == "WireError", answer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_requests_never_crash_the_server(hostile, data):
    _, client = hostile
    requests = {
        "describe": ((), {}),
        "evaluate": ((), {}),
        "start": ((np.array([0.2]),), {}),
        "add_trees": ((2, None), {}),
        "feature_ranges": ((), {}),
    }
    name = data.draw(st.sampled_from(sorted(requests)))
    msg = bytearray(wire.encode(requests[name]))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] ^= data.draw(st.integers(1, 255))
    send(client, name, bytes(msg))  # an answer or an error description
    assert send(client, "label_totals", wire.encode(((), {})))[0] == 225


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=40))
def test_unknown_action_names_are_refused(hostile, name):
    _server, client = hostile
    if name in protocol.CALLS:
        return
    try:
        answer = send(client, name, wire.encode(((), {})))
    except (pa.ArrowException, flight.FlightError) as exc:  # names gRPC cannot carry never reach the server
        assert "Traceback" not in str(exc)
        return
    assert answer["type"] == "PartyError" and "is not served" in answer["message"]


def test_request_arguments_must_be_args_and_kwargs(hostile):
    _, client = hostile
    answer = send(client, "describe", wire.encode({"args": []}))
    assert answer == {
        "type": "WireError",
        "message": "party bank: describe: bad request: request must be a pair (args, kwargs)",
    }
    answer = send(client, "describe", wire.encode(((), {"__class__": 1})))
    assert answer["message"].endswith("request kwargs must be a dict with keyword names")


def test_oversized_requests_are_rejected(pki, hostile):
    server, _ = hostile
    party = RemoteParty("bank", server.endpoint, tls=client_tls(pki[0]), retries=0)
    with pytest.raises(
        wire.WireError,
        match=r"party bank: start request of \d+ bytes exceeds the limit of 65536 "
        r"bytes",
    ):
        party.start(np.zeros(10_000))
    assert party.label_totals()[0] == 225


def test_oversized_answers_are_rejected(pki, serve):
    party = remote(pki, "bank", serve(make_party("bank")), max_answer_bytes=100)
    with pytest.raises(PartyError, match=r"describe: bad answer: message of \d+ bytes exceeds the limit of 100 bytes"):
        party.describe()


# ---------------------------------------------------------------------------
# transport failures
# ---------------------------------------------------------------------------


def test_unreachable_party_fails_after_the_configured_retries(pki):
    port = free_port()
    party = RemoteParty("bank", f"127.0.0.1:{port}", tls=client_tls(pki[0]), retries=2, backoff=0.05)
    t0 = time.perf_counter()
    with pytest.raises(
        PartyError,
        match=rf"^party bank at grpc\+tls://127.0.0.1:{port}: describe: unreachable after "
        r"3 attempts",
    ):
        party.describe()
    assert 0.15 <= time.perf_counter() - t0 < 10  # backoff 0.05 + 0.1, no more


def test_application_errors_are_not_retried(pki, serve):
    party = remote(pki, "bank", serve(make_party("bank")), retries=3, backoff=1.0)
    t0 = time.perf_counter()
    with pytest.raises(ProtocolError, match=r"^evaluate is not accepted in stage 'new'"):
        party.evaluate()
    assert time.perf_counter() - t0 < 0.9


def test_party_server_runs_blocking_in_its_own_process_and_stops_on_sigterm(pki):
    script = textwrap.dedent(f"""
        import numpy as np
        from fedmine.transport.certs import server_tls
        from fedmine.party.server import run_party_server, serve_party
        from fedmine.party.organisation import Party, TrainValidRows
        X, y = np.zeros((4, 1)), np.zeros(4)
        party = Party("bank", TrainValidRows(X, y, X[:0], y[:0]), objective="binary", num_class=1, feature_names=["a"],
                           categorical=[])
        server = serve_party(party, port=0, tls=server_tls({str(pki[0])!r}, "bank"))
        run_party_server(server, ready=lambda: print(server.endpoint, flush=True))
        print("stopped", flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint.startswith("grpc+tls://127.0.0.1:"), proc.stderr.read()
        party = RemoteParty("bank", endpoint, tls=client_tls(pki[0]), retries=0)
        assert party.label_totals()[0] == 4
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert "stopped" in out and proc.returncode == 0, (proc.returncode, out, err[-2000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_bound_port_is_a_party_error(pki, serve):
    server = serve(make_party("bank"))
    with pytest.raises(PartyError, match=rf"party bank: cannot serve on grpc\+tls://127.0.0.1:{server.port}"):
        serve_party(make_party("bank"), port=server.port, tls=server_tls(pki[0], "bank"))
    with pytest.raises(FedmineError, match=r"port must be an integer in \[0, 65535\], got 70000"):
        serve_party(make_party("bank"), port=70000, tls=server_tls(pki[0], "bank"))
    assert isinstance(server, PartyServer)


@pytest.mark.parametrize("who", ["coordinator", "clinic"])
def test_unserved_flight_methods_answer_one_line_without_a_traceback(pki, serve, who):
    server = serve(make_party("bank"))
    c = client_tls(pki[0], who)
    client = flight.FlightClient(
        server.endpoint, tls_root_certs=c.ca, cert_chain=c.cert, private_key=c.key, override_hostname="bank"
    )
    descriptor = flight.FlightDescriptor.for_command(b"x")
    schema = client.get_schema(descriptor).schema  # answered: no schema, the reason in one line
    assert len(schema) == 0 and b"is not" in schema.metadata[b"error"] and b"\n" not in schema.metadata[b"error"]
    calls = [
        lambda: client.get_flight_info(descriptor),
        lambda: list(client.list_flights()),
        lambda: client.do_get(flight.Ticket(b"x")).read_all(),
    ]
    for call in calls:
        with pytest.raises(flight.FlightError) as info:
            call()
        text = str(info.value)
        assert "Traceback" not in text and ".py" not in text and "site-packages" not in text, text
        assert text.count("\n") <= 1, text
    client.close()
