"""Vertical federation across processes: party servers killed with SIGKILL rejoin, a killed coordinator resumes.

Two ``fedmine party serve`` processes (the bank, label holder, and the
retailer, a feature owner) over Arrow Flight with mutual TLS and Paillier
at 2048 bits, each keeping its state in its own ``--output`` folder. Both
trainings end with the model of the same federation trained in one process
(which equals the engine on the joined table, tests/coordinator/test_vertical.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fedmine.demo import write_vertical_demo
from fedmine.transport.certs import init_ca, issue
from tests.flows.test_distributed import free_port, start_party, stop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ORGS = ("bank", "retailer")
TRAINING = ["training.rounds=3", "training.num_leaves=4", "training.max_bin=16"]


def _rounds_done(artifacts: Path) -> tuple[int, str | None]:
    """The last round the coordinator's checkpoint records, and its run id."""
    done, run_id = 0, None
    for state in artifacts.glob("*/artifacts/checkpoint/state.json"):
        try:
            done, run_id = json.loads(state.read_text())["round"], state.parts[-4]
        except (ValueError, KeyError):
            pass
    return done, run_id


def _uninterrupted(config: Path) -> str:
    """The model of the same federation trained in one process, uninterrupted (a plain cipher: the same sums)."""
    from fedmine.config import load_config
    from fedmine.coordinator.vertical import VerticalCoordinator
    from fedmine.party.vertical import vertical_party
    from fedmine.tasks.data import load_source
    from tests.support import plain_cipher

    cfg = load_config(config, TRAINING)
    coord = VerticalCoordinator(
        cfg, [vertical_party(cfg, o, load_source.fn(cfg, o), cipher=plain_cipher) for o in ORGS]
    )
    coord.start()
    for r in range(1, cfg.training.rounds + 1):
        if coord.run_round(r).stopped:
            break
    text = coord.model_text()
    assert text is not None and "Tree=2" in text
    return text


@pytest.fixture(scope="module")
def vertical(prefect_harness, tmp_path_factory):
    """The vertical demo cut to two organisations, each with a source and an endpoint; certificates; a local twin."""
    from prefect.settings import PREFECT_API_URL

    folder = tmp_path_factory.mktemp("vertical")
    write_vertical_demo(folder, tracking_uri="sqlite:///unused.db", n=500)
    raw = yaml.safe_load((folder / "federation.yaml").read_text())
    for f in raw["organisations"].pop("telecom")["features"]:
        raw["features"].pop(f)
    (folder / "local.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    certs = folder / "certs"
    init_ca(certs, federation=raw["name"])
    for org in ORGS:
        issue(certs, org, kind="party")
    issue(certs, "coordinator", kind="coordinator")
    for org in ORGS:
        raw["organisations"][org]["endpoint"] = f"grpc+tls://127.0.0.1:{free_port()}"
    raw["transport"] = {"certs": str(certs), "timeout_seconds": 120, "retries": 2}
    (folder / "distributed.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    servers: dict[str, subprocess.Popen] = {}
    out = {"folder": folder, "config": folder / "distributed.yaml", "env": env, "servers": servers}
    out["start"] = lambda org: start_party(out["config"], org, env, TRAINING, extra=["--output", str(folder / org)])
    threads = [threading.Thread(target=lambda o=org: servers.__setitem__(o, out["start"](o))) for org in ORGS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        out["model"] = _uninterrupted(folder / "local.yaml")
        yield out
    finally:
        stop(list(servers.values()))


def test_parties_killed_mid_training_rejoin_and_the_model_is_unchanged(vertical, tmp_path):
    """SIGKILL the bank (the label holder) and the retailer (a feature owner) after round 1; each is started
    again with the same command, takes the training up from its own folder, and the model is the same."""
    from fedmine.flows.train import federated_training

    servers, artifacts, events = vertical["servers"], tmp_path / "r" / "artifacts", []

    def kill_and_restart():
        deadline = time.time() + 300
        while _rounds_done(artifacts)[0] < 1:
            if time.time() > deadline:
                return
            time.sleep(0.02)
        for org in ORGS:
            os.killpg(servers[org].pid, signal.SIGKILL)
            servers[org].wait()
        events.append(("killed", _rounds_done(artifacts)[0]))
        threads = [threading.Thread(target=lambda o=org: servers.__setitem__(o, vertical["start"](o))) for org in ORGS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        events.append(("restarted", None))

    watcher = threading.Thread(target=kill_and_restart)
    watcher.start()
    try:
        remote = federated_training(str(vertical["config"]), [*TRAINING, f"tracking.uri=sqlite:///{tmp_path}/r/m.db"])
    finally:
        watcher.join()
    assert [e[0] for e in events] == ["killed", "restarted"] and events[0][1] < 3, events
    for org in ORGS:
        assert any(f"party {org} failed in round" in n and "rejoined" in n for n in remote["notices"]), org
    assert Path(remote["model_file"]).read_text() == vertical["model"]
    assert (vertical["folder"] / "bank" / "vertical").is_dir()


def test_a_killed_coordinator_resumes_with_the_same_model(vertical, tmp_path):
    """fedmine run SIGKILLed after round 1; --resume continues over the same party servers: the same model,
    the MLflow run FINISHED."""
    from fedmine.flows.train import federated_training

    uri = f"sqlite:///{tmp_path}/c/m.db"
    args = [sys.executable, "-m", "fedmine.cli", "run", str(vertical["config"])]
    for item in [*TRAINING, f"tracking.uri={uri}"]:
        args += ["--set", item]
    coordinator = subprocess.Popen(
        args, env=vertical["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    artifacts, deadline = tmp_path / "c" / "artifacts", time.time() + 300
    try:
        while (done := _rounds_done(artifacts))[0] < 1:
            assert coordinator.poll() is None, "the training ended before it could be killed"
            assert time.time() < deadline, "no progress"
            time.sleep(0.02)
    finally:
        os.killpg(coordinator.pid, signal.SIGKILL)
        coordinator.wait()
    run_id = done[1]
    assert done[0] < 3 and run_id
    resumed = federated_training(str(vertical["config"]), [*TRAINING, f"tracking.uri={uri}"], resume=run_id)
    assert Path(resumed["model_file"]).read_text() == vertical["model"]
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    assert resumed["rounds"] == 3
