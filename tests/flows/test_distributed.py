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
from mlflow.tracking import MlflowClient

from fedmine.transport.certs import init_ca, issue

pytestmark = pytest.mark.slow

ORGS = ("bank", "retailer", "telecom")
TRAINING = ["training.strategy=histogram", "training.rounds=10"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_party(
    config: Path, org: str, env: dict, overrides: list[str] = (), seen: list | None = None, extra: list[str] = ()
) -> subprocess.Popen:
    """An organisation's party server; ``overrides`` are its own --set (its policy follows its config).

    ``seen`` collects what the server printed until it served; ``extra`` are more options of party serve.
    """
    extra = [*(arg for item in overrides for arg in ("--set", item)), *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmine.cli", "party", "serve", str(config), "--org", org, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 120
    lines = [] if seen is None else seen
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
    """The same model over Flight as in process; then fedmine explain over the same servers keeps each
    organisation's plots in its server's own --output folder (nothing of them reaches the coordinator)."""
    from fedmine.flows.explain import federated_explanation
    from fedmine.flows.train import federated_training

    outputs = {org: tmp_path / f"party-{org}" for org in ORGS}
    procs = [
        start_party(federation["config"], org, federation["env"], extra=["--output", str(outputs[org])]) for org in ORGS
    ]
    store = f"tracking.uri=sqlite:///{tmp_path}/r/m.db"
    try:
        remote = federated_training(str(federation["config"]), [*TRAINING, store])
        explained = federated_explanation(str(federation["config"]), remote["model_file"], ["bank", "telecom"], [store])
    finally:
        stop(procs)
    assert explained["secure_aggregation"] and explained["organisations"] == list(ORGS)
    assert explained["rows"] == sum(o["rows"] for o in remote["organisations"].values())
    for org in ("bank", "telecom"):
        files = {p.name for p in (outputs[org] / "explain").iterdir()}
        assert {"summary.png", "dependence_debt_ratio.png", "mean_abs_shap.csv"} <= files
    assert not outputs["retailer"].exists()  # asked for no plots: nothing written, not even its folder
    client = MlflowClient(store.split("=", 1)[1])
    run = client.get_run(explained["run_id"])
    assert client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'") == []
    assert {a.path for a in client.list_artifacts(run.info.run_id, "explain")} == {
        "explain/report.md",
        "explain/report.html",
        "explain/importance.png",
        "explain/explanation.json",
    }
    local = federated_training(str(demo_config), [*TRAINING, f"tracking.uri=sqlite:///{tmp_path}/l/m.db"])
    assert remote["privacy"]["secure_aggregation"] is True
    assert Path(remote["model_file"]).read_text() == Path(local["model_file"]).read_text()
    assert remote["organisations"]["bank"]["rows"] == local["organisations"]["bank"]["rows"]
    for org in ORGS:
        assert remote["organisations"][org]["federated"] == local["organisations"][org]["federated"]


def test_party_killed_mid_training_rejoins_and_the_model_is_unchanged(federation, demo_config, tmp_path):
    """SIGKILL the bank's party server mid-training and start it again: the run ends with the same model."""
    import json
    import threading

    from fedmine.flows.train import federated_training

    training = ["training.strategy=histogram", "training.rounds=60"]
    procs = {org: start_party(federation["config"], org, federation["env"], training) for org in ORGS}
    artifacts = tmp_path / "r" / "artifacts"
    events = []

    def kill_and_restart():
        deadline = time.time() + 120
        while time.time() < deadline:
            done = 0
            for state in artifacts.glob("*/artifacts/checkpoint/state.json"):
                try:
                    done = json.loads(state.read_text())["round"]
                except (ValueError, KeyError):
                    pass
            if done >= 3:
                os.killpg(procs["bank"].pid, signal.SIGKILL)
                procs["bank"].wait()
                events.append(("killed", done))
                procs["bank"] = start_party(federation["config"], "bank", federation["env"], training)
                events.append(("restarted", None))
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_and_restart)
    watcher.start()
    try:
        remote = federated_training(str(federation["config"]), [*training, f"tracking.uri=sqlite:///{tmp_path}/r/m.db"])
    finally:
        watcher.join()
        stop(list(procs.values()))
    assert [e[0] for e in events] == ["killed", "restarted"] and events[0][1] < 60
    assert any("party bank failed in round" in n and "rejoined" in n for n in remote["notices"])
    local = federated_training(str(demo_config), [*training, f"tracking.uri=sqlite:///{tmp_path}/l/m.db"])
    assert Path(remote["model_file"]).read_text() == Path(local["model_file"]).read_text()


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def namespaces():
    """One network namespace per organisation, joined to this host by a veth pair (10.231.N.0/24)."""
    made = []
    try:
        for i, org in enumerate(ORGS, 1):
            ns, host, peer = f"fm-{org}", f"fmh{i}", f"fmp{i}"
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", host], capture_output=True)
            _sh("ip", "netns", "add", ns)
            made.append((ns, host))
            _sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            _sh("ip", "link", "set", peer, "netns", ns)
            _sh("ip", "addr", "add", f"10.231.{i}.1/24", "dev", host)
            _sh("ip", "link", "set", host, "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.231.{i}.2/24", "dev", peer)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield {org: (f"fm-{org}", f"10.231.{i}.2") for i, org in enumerate(ORGS, 1)}
    finally:
        for ns, host in made:
            subprocess.run(["ip", "link", "del", host], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_each_party_in_its_own_network_namespace(federation, namespaces, demo_config, tmp_path):
    """The same federation with each party server on its own network (ip netns), reached only over its veth."""
    from fedmine.flows.train import federated_training

    raw = yaml.safe_load(federation["config"].read_text())
    for org, (_, address) in namespaces.items():
        raw["organisations"][org]["endpoint"] = f"grpc+tls://{address}:{free_port()}"
    path = demo_config.parent / "netns.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    # inside a namespace the harness's API on 127.0.0.1 is out of reach: each party runs its own Prefect
    procs = []
    try:
        for org, (ns, address) in namespaces.items():
            env = {k: v for k, v in federation["env"].items() if k != "PREFECT_API_URL"}
            env["PREFECT_HOME"] = str(tmp_path / f"prefect-{org}")  # its own ephemeral API and database
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    sys.executable,
                    "-m",
                    "fedmine.cli",
                    "party",
                    "serve",
                    str(path),
                    "--org",
                    org,
                    "--host",
                    address,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            procs.append(proc)
        for proc, org in zip(procs, ORGS):
            deadline, lines = time.time() + 180, []
            while time.time() < deadline:
                line = proc.stdout.readline()
                lines.append(line)
                if "serving on" in line or (not line and proc.poll() is not None):
                    break
            assert "serving on" in lines[-1], f"party {org}:\n{''.join(lines)}"
        remote = federated_training(str(path), [*TRAINING, f"tracking.uri=sqlite:///{tmp_path}/r/m.db"])
    finally:
        stop(procs)
    local = federated_training(str(demo_config), [*TRAINING, f"tracking.uri=sqlite:///{tmp_path}/l/m.db"])
    assert Path(remote["model_file"]).read_text() == Path(local["model_file"]).read_text()


def test_party_servers_serve_two_trainings_and_a_resume(federation, tmp_path):
    """Long-running party servers: a second training and a resumed one against the same three processes."""
    import json

    from mlflow.tracking import MlflowClient

    from fedmine.flows.train import federated_training

    training = ["training.strategy=histogram", "training.rounds=40", "training.learning_rate=0.05"]
    procs = [start_party(federation["config"], org, federation["env"], training) for org in ORGS]
    try:
        first = federated_training(str(federation["config"]), [*training, f"tracking.uri=sqlite:///{tmp_path}/a/m.db"])
        second = federated_training(str(federation["config"]), [*training, f"tracking.uri=sqlite:///{tmp_path}/b/m.db"])
        # a coordinator killed mid-training, resumed while the party servers stay up
        uri = f"sqlite:///{tmp_path}/c/m.db"
        args = [sys.executable, "-m", "fedmine.cli", "run", str(federation["config"])]
        for item in [*training, f"tracking.uri={uri}"]:
            args += ["--set", item]
        coordinator = subprocess.Popen(
            args, env=federation["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        artifacts, run_id, done, deadline = tmp_path / "c" / "artifacts", None, 0, time.time() + 240
        try:
            while done < 5:
                assert coordinator.poll() is None, "the training ended before it could be killed"
                assert time.time() < deadline, "no progress"
                for state in artifacts.glob("*/artifacts/checkpoint/state.json"):
                    try:
                        done, run_id = json.loads(state.read_text())["round"], state.parts[-4]
                    except (ValueError, KeyError):
                        pass
                time.sleep(0.02)
        finally:
            os.killpg(coordinator.pid, signal.SIGKILL)
            coordinator.wait()
        resumed = federated_training(str(federation["config"]), [*training, f"tracking.uri={uri}"], resume=run_id)
    finally:
        stop(procs)
    model = Path(first["model_file"]).read_text()
    assert Path(second["model_file"]).read_text() == model
    assert Path(resumed["model_file"]).read_text() == model
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_party_server_takes_its_prefect_server_with_it(federation, tmp_path, sig):
    """However the party server ends, the Prefect server its preparation started ends too."""
    from fedmine.party.server import child_processes

    env = {k: v for k, v in federation["env"].items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")  # its own ephemeral API server, as a lone party would have
    proc = start_party(federation["config"], "telecom", env)
    children = [pid for pid in child_processes(proc.pid) if "uvicorn" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert children, "the party's Prefect server was not found"
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
