"""Three party servers as separate processes on 127.0.0.1 with mutual TLS, and a coordinator.

The histogram strategy with secure aggregation over Arrow Flight gives the same
model, bit for bit, as the in-process simulation of the same federation.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedmine.federation.certs import init_ca, issue

pytestmark = pytest.mark.slow

ORGS = ("bank", "retailer", "telecom")
TRAINING = ["training.strategy=histogram", "training.rounds=10"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_party(config: Path, org: str, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "fedmine.cli", "party", "serve", str(config), "--org", org],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    lines = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if "serving on" in line:
            return proc
    proc.kill()
    raise AssertionError(f"party {org} did not start:\n{''.join(lines)}")


def stop(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def federation(prefect_harness, demo_config, tmp_path_factory):
    """Certificates and a config whose organisations have both a source (for their servers) and an endpoint."""
    from prefect.settings import PREFECT_API_URL

    certs = tmp_path_factory.mktemp("certs")
    init_ca(certs, federation="retail-credit")
    for org in ORGS:
        issue(certs, org, kind="party")
    issue(certs, "coordinator", kind="coordinator")
    raw = yaml.safe_load(demo_config.read_text())
    for org in ORGS:
        raw["organisations"][org]["endpoint"] = f"grpc+tls://127.0.0.1:{free_port()}"
    raw["transport"] = {"certs": str(certs), "timeout_seconds": 60, "retries": 2}
    path = demo_config.parent / "distributed.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return {"config": path, "env": env, "certs": certs}


def test_flight_mtls_equals_simulation(federation, demo_config, tmp_path):
    from flows.train import federated_training

    procs = [start_party(federation["config"], org, federation["env"]) for org in ORGS]
    try:
        remote = federated_training(str(federation["config"]), [*TRAINING, f"tracking.uri=sqlite:///{tmp_path}/r/m.db"])
    finally:
        stop(procs)
    local = federated_training(str(demo_config), [*TRAINING, f"tracking.uri=sqlite:///{tmp_path}/l/m.db"])
    assert remote["privacy"]["secure_aggregation"] is True
    assert Path(remote["model_file"]).read_text() == Path(local["model_file"]).read_text()
    assert remote["organisations"]["bank"]["rows"] == local["organisations"]["bank"]["rows"]
    for org in ORGS:
        assert remote["organisations"][org]["federated"] == local["organisations"][org]["federated"]
