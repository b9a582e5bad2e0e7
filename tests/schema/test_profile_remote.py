"""The federated profile speaks the party protocol: an organisation behind its party server is profiled in place.

The retailer's party runs behind a real Flight server with mutual TLS; the
coordinator's config lists it with an endpoint only and its source file is
gone from the coordinator's side. The profile equals the all-in-process one,
secure aggregation on or off, and the coordinator never reads its rows.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedmine import connectors
from fedmine.config import config_from_dict
from fedmine.errors import PartyError
from fedmine.gbdt.binning import grid_counts, make_grids
from fedmine.party.server import serve_party
from fedmine.schema import harmonise, profiler
from fedmine.schema.profiler import feature_specs, prepare_party, profile_federation
from fedmine.schema.summary import categorical_mask
from fedmine.transport.certs import init_ca, issue, server_tls
from tests.schema.test_profile import ORGS, income_federation

REMOTE = "retailer"
PROFILE_CALLS = {"profile_ranges", "profile_counts", "profile_view"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    certs = tmp_path_factory.mktemp("pki")
    init_ca(certs, federation="income")
    for org in ORGS:
        issue(certs, org)
    issue(certs, "coordinator", kind="coordinator")
    return certs


class Served:
    """The retailer's side: its party (made on its machine from its source) behind a Flight server."""

    def __init__(self, cfg, certs: Path) -> None:
        self.party = prepare_party(cfg, REMOTE)
        self.calls: dict[str, tuple] = {}  # call -> (args, answer) of its last request
        answer = self.party.call

        def recorded(name, *args, **kwargs):
            out = answer(name, *args, **kwargs)
            self.calls[name] = (args, out)
            return out

        self.party.call = recorded
        self.server = serve_party(self.party, port=0, tls=server_tls(certs, REMOTE))


@contextmanager
def served_retailer(tmp_path: Path, certs: Path, strategy: str):
    """(all-in-process config, the coordinator's config with the retailer at its endpoint, the served retailer)."""
    cfg = income_federation(tmp_path, strategy=strategy)
    served = Served(cfg, certs)
    raw = cfg.model_dump(mode="json", exclude_defaults=True)
    raw["organisations"][REMOTE] = {"endpoint": served.server.endpoint}
    raw["transport"] = {"certs": str(certs), "retries": 0, "timeout_seconds": 60}
    try:
        yield cfg, config_from_dict(raw), served
    finally:
        served.server.shutdown()


@pytest.fixture(params=["histogram", "bagging"], ids=["secure", "plain"])
def federation(request, tmp_path, pki):
    with served_retailer(tmp_path, pki, request.param) as fed:
        yield fed


def test_a_served_organisation_is_profiled_where_its_rows_are(federation, monkeypatch):
    cfg, coordinator_cfg, served = federation
    local = profile_federation(cfg)  # every organisation in this process
    source = Path(cfg.organisations[REMOTE].source)
    source.unlink()  # the coordinator's side has no copy of the retailer's rows

    loaded, prepared = [], []
    load, prepare = connectors.load, profiler.prepare_party
    monkeypatch.setattr(connectors, "load", lambda *a, org=None, **k: (loaded.append(org), load(*a, org=org, **k))[1])
    monkeypatch.setattr(profiler, "prepare_party", lambda c, org, **k: (prepared.append(org), prepare(c, org, **k))[1])
    remote = profile_federation(coordinator_cfg)

    assert remote.to_json() == local.to_json()
    assert remote.secure_aggregation is cfg.secure_aggregation
    assert remote.flags[0]["organisation"] == REMOTE and remote.flags[0]["feature"] == "income"
    assert REMOTE not in loaded and REMOTE not in prepared and sorted(prepared) == ["bank", "insurer"]
    assert set(served.calls) >= PROFILE_CALLS
    # the summed counts left the retailer masked under secure aggregation, plain otherwise
    args, sent = served.calls["profile_counts"]
    plain = served.party.profile_counts(*args)
    assert sent.shape == plain.shape and sent.dtype == plain.dtype == np.int64
    assert ("secure_setup" in served.calls) is cfg.secure_aggregation
    assert np.array_equal(sent, plain) is not cfg.secure_aggregation


@pytest.mark.slow
def test_the_profile_flow_reaches_a_served_organisation(prefect_harness, tmp_path, pki):
    from fedmine.flows.profile import federated_profile

    with served_retailer(tmp_path, pki, "histogram") as (cfg, coordinator_cfg, served):
        expected = profile_federation(cfg)
        Path(cfg.organisations[REMOTE].source).unlink()
        path = tmp_path / "coordinator.yaml"
        path.write_text(yaml.safe_dump(coordinator_cfg.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
        result = federated_profile(str(path))
    assert result["flags"] == expected.flags and result["drift"] == {}
    assert set(served.calls) >= PROFILE_CALLS | {"secure_setup", "secure_peers"}


def test_the_party_profiles_all_its_rows_and_answers_only_its_own_schema(tmp_path):
    cfg = income_federation(tmp_path)
    party = prepare_party(cfg, "bank")
    assert len(party._data.y_valid) > 0  # training and validation rows both count
    grids, categorical = _grid(cfg)
    rows = harmonise(connectors.load(cfg.organisations["bank"].source), cfg, "bank", collect=True).X
    assert np.array_equal(
        party.call("profile_counts", grids, categorical), grid_counts(rows, grids, categorical=categorical)
    )
    lows = np.zeros(len(grids))
    totals = party.profile_counts(grids, categorical)
    features = feature_specs(cfg)
    assert set(party.call("profile_view", grids, lows, totals, features)["features"]) == set(cfg.features)
    as_category = [
        dict(f, type="category", categories=[str(i) for i in range(1024)]) if f["name"] == "income" else f
        for f in features
    ]
    with pytest.raises(PartyError, match="feature 'income' cannot be of type 'category' here"):
        party.call("profile_view", grids, lows, totals, as_category)
    with pytest.raises(PartyError, match="are not this party's"):
        party.call("profile_view", grids, lows, totals, features[::-1])


def _grid(cfg):
    """A shared grid like the profile's (uniform cells over the declared or observed ranges)."""
    features = feature_specs(cfg)
    ranges = np.array([[0.0, 2e8], [0.0, 120.0], [0.0, 1023.0]])
    return make_grids(ranges, n_grid=profiler.N_GRID), categorical_mask(features)
