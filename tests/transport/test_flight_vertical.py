"""Vertical federation over Arrow Flight with mutual TLS: the same model as in process, Paillier on the wire."""

from __future__ import annotations

import pytest

from fedmine.config import config_from_dict
from fedmine.coordinator.client import RemoteParty
from fedmine.coordinator.vertical import VerticalCoordinator
from fedmine.demo import make_vertical_frames, vertical_demo_config
from fedmine.party.server import serve_party
from fedmine.party.vertical import vertical_party
from fedmine.transport.certs import client_tls, init_ca, issue, server_tls

ORGS = ("bank", "retailer", "telecom")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    init_ca(folder, federation="shared-customers")
    for org in ORGS:
        issue(folder, org)
    issue(folder, "coordinator", kind="coordinator")
    return folder


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_vertical_over_flight_equals_in_process(pki):
    raw = vertical_demo_config("sqlite:///unused.db")
    raw["training"].update(rounds=2, num_leaves=4, max_bin=16)
    cfg = config_from_dict(raw)
    frames = make_vertical_frames(3, n=500)

    def run(parties):
        coord = VerticalCoordinator(cfg, parties)
        coord.start()
        metrics = [coord.run_round(r).global_metrics for r in (1, 2)]
        ids = ["C00007", "c00042 ", "nobody"]
        return coord.model_text(), metrics, coord.predict_raw(ids).tolist(), coord.shared_rows

    local = run([vertical_party(cfg, o, frames[o]) for o in ORGS])
    servers = [serve_party(vertical_party(cfg, o, frames[o]), port=0, tls=server_tls(pki, o)) for o in ORGS]
    try:
        remote = [RemoteParty(o, s.endpoint, tls=client_tls(pki), retries=0) for o, s in zip(ORGS, servers)]
        over_wire = run(remote)
    finally:
        for s in servers:
            s.shutdown()
    assert over_wire == local
    assert local[0] is not None and "Tree=1" in local[0]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_round_larger_than_a_message_travels_in_chunks(pki):
    """With the wire's limit lowered below one round's encrypted rows, the rows go in chunks: the same model."""
    limit = 96 * 1024
    raw = vertical_demo_config("sqlite:///unused.db")
    raw["training"].update(rounds=2, num_leaves=4, max_bin=16)
    cfg = config_from_dict(raw)
    frames = make_vertical_frames(3, n=500)

    def run(parties):
        coord = VerticalCoordinator(cfg, parties)
        coord.start()
        metrics = [coord.run_round(r).global_metrics for r in (1, 2)]
        return coord.model_text(), metrics, coord.shared_rows

    local = run([vertical_party(cfg, o, frames[o]) for o in ORGS])
    shared = local[2]
    assert 2 * (1 + shared // 2) * 512 > limit  # one request of a round's rows for both owners: refused
    servers = [
        serve_party(
            vertical_party(cfg, o, frames[o], message_bytes=limit),
            port=0,
            tls=server_tls(pki, o),
            max_request_bytes=limit,
        )
        for o in ORGS
    ]
    try:
        remote = [
            RemoteParty(o, s.endpoint, tls=client_tls(pki), retries=0, max_answer_bytes=limit)
            for o, s in zip(ORGS, servers)
        ]
        over_wire = run(remote)
    finally:
        for s in servers:
            s.shutdown()
    assert over_wire == local
