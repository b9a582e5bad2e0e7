"""prefect.yaml: every deployment points at a real flow with parameters it accepts, on a pool per organisation;
deployed on a real Prefect server and run by real workers, one per organisation's pool and one for the coordinator's.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]


def test_deployments_name_real_flows_and_pools():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = set()
    for d in spec["deployments"]:
        path, name = d["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert isinstance(flow, Flow), d["name"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d["parameters"]) <= accepted, (d["name"], set(d["parameters"]) - accepted)
        for schedule in d.get("schedules", []):
            assert len(schedule["cron"].split()) == 5
        pools.add(d["work_pool"]["name"])
    assert {"coordinator", "bank", "retailer", "telecom"} <= pools


# -- prefect.yaml deployed on a real Prefect server, run by real workers --------------------------------------------
#
# The commands of docs/deploy.md, step 5: a Prefect server on loopback (its own PREFECT_HOME and SQLite database),
# a process work pool per organisation and one for the coordinator, `prefect deploy --all` from the repository,
# a worker per pool started in that machine's FEDMINE_HOME (here one folder per organisation on this host: its own
# config, certificates and data; the coordinator's folder holds no data at all), the party servers and the
# training triggered as deployments.

ORGS = ("bank", "retailer", "telecom")
POOLS = ("coordinator", *ORGS)
ROUNDS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, body: dict | None = None):
    """The Prefect server's REST API: GET, or POST ``body`` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _homes(root: Path) -> dict:
    """One FEDMINE_HOME per machine: the coordinator's (endpoints only) and each organisation's (its data)."""
    from fedmine.demo import write_demo
    from fedmine.transport.certs import init_ca, issue

    demo = write_demo(root / "simulation", tracking_uri=f"sqlite:///{root}/simulation/mlruns/mlflow.db")
    raw = yaml.safe_load(demo.read_text())
    raw["training"].update(strategy="histogram", rounds=ROUNDS)
    demo.write_text(yaml.safe_dump(raw, sort_keys=False))
    ca = root / "ca"
    init_ca(ca, federation=raw["name"])
    for org in ORGS:
        issue(ca, org, kind="party")
    issue(ca, "coordinator", kind="coordinator")
    endpoints = {org: f"grpc+tls://127.0.0.1:{_free_port()}" for org in ORGS}
    homes = {}
    for name in POOLS:
        home = root / name
        (home / "certs").mkdir(parents=True)
        for file in ("ca.pem", f"{name}.pem", f"{name}.key"):
            shutil.copy(ca / file, home / "certs" / file)
        cfg = yaml.safe_load(demo.read_text())
        for org, spec in cfg["organisations"].items():
            if org != name:  # another organisation's source and mapping are its own business
                cfg["organisations"][org] = {"industry": spec["industry"], "endpoint": endpoints[org]}
            else:
                spec["endpoint"] = endpoints[org]
                data = next((demo.parent / "data").glob(f"{org}.*"))
                (home / "data").mkdir()
                shutil.copy(data, home / "data" / data.name)
        cfg["transport"] = {"certs": "certs", "timeout_seconds": 60, "retries": 2}
        cfg["tracking"] = {"uri": f"sqlite:///{root}/coordinator-mlruns/mlflow.db"}
        (home / "federation.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        homes[name] = home
    return {"homes": homes, "simulation": demo, "endpoints": endpoints, "store": cfg["tracking"]["uri"]}


def _prefect(*args: str, env: dict, timeout: float = 300) -> str:
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _prefect_all(commands: list[list[str]], *, env: dict, timeout: float = 300) -> list[str]:
    """Several ``prefect`` commands at once (each is mostly its interpreter starting); their outputs in order."""
    procs = [
        subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in commands
    ]
    outs = []
    for args, proc in zip(commands, procs, strict=True):
        out = proc.communicate(timeout=timeout)[0]
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{out[-3000:]}"
        outs.append(out)
    return outs


def _stop(procs: list[subprocess.Popen], *, grace: float = 15) -> None:
    """SIGTERM every process group, then SIGKILL what is left after one shared grace period."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """prefect.yaml deployed on a real server, a worker per pool, the three party servers running as deployments."""
    root = tmp_path_factory.mktemp("deploy")
    federation = _homes(root)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FEDMINE_"))}
    env.update(
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{root}/prefect-home/prefect.db",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",  # workers poll every second (default 10): a quick test
    )
    procs: list[subprocess.Popen] = []
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port), "--no-ui"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    env["PREFECT_API_URL"] = api
    try:
        deadline = time.time() + 120
        while True:
            try:
                _api(api, "/health")
                break
            except OSError as exc:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("the Prefect server did not start") from exc
                time.sleep(0.5)
        timings["server"] = time.perf_counter() - t0
        # meanwhile, the same federation in one process (all sources in one place): the model to match
        simulation = subprocess.Popen(
            [sys.executable, "-m", "fedmine.cli", "run", str(federation["simulation"])]
            + ["--summary-json", str(root / "simulation.json")],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(simulation)
        _prefect_all([["work-pool", "create", pool, "--type", "process"] for pool in POOLS], env=env)
        timings["work pools"] = time.perf_counter() - t0
        for pool in POOLS:  # a worker per pool, in its machine's FEDMINE_HOME
            log = (root / f"worker-{pool}.log").open("w")
            procs.append(
                subprocess.Popen(
                    [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", pool],
                    env={**env, "FEDMINE_HOME": str(federation["homes"][pool])},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        # FEDMINE_HOME unset: the pull step keeps {{ $FEDMINE_HOME }}, which each worker fills in from its own
        _prefect("--no-prompt", "deploy", "--all", env=env)
        timings["deploy"] = time.perf_counter() - t0
        outs = _prefect_all([["deployment", "run", f"party-server/party-{org}"] for org in ORGS], env=env)
        parties = {org: re.search(r"flow-run/([0-9a-f-]{36})", out).group(1) for org, out in zip(ORGS, outs)}
        deadline = time.time() + 240
        waiting = dict(federation["endpoints"])
        while waiting:
            for org, endpoint in list(waiting.items()):
                host, port_ = endpoint.rsplit("/", 1)[1].split(":")
                with socket.socket() as s:
                    if s.connect_ex((host, int(port_))) == 0:
                        del waiting[org]
            if time.time() > deadline:
                logs = "\n".join((root / f"worker-{o}.log").read_text()[-2000:] for o in waiting)
                raise AssertionError(f"party servers not serving: {sorted(waiting)}\n{logs}")
            time.sleep(0.5)
        timings["parties serving"] = time.perf_counter() - t0
        print(
            "\nprefect.yaml on workers, seconds since the server started:", timings, f"(load {os.getloadavg()[0]:.1f})"
        )
        yield {
            **federation,
            "api": api,
            "env": env,
            "parties": parties,
            "root": root,
            "timings": timings,
            "simulation_run": simulation,
        }
        running = [r for r in parties.values() if _api(api, f"/flow_runs/{r}")["state_type"] == "RUNNING"]
        if running:  # a test stopped before cancelling them
            _prefect_all([["flow-run", "cancel", run_id] for run_id in running], env=env)
    finally:
        _stop(procs)
        _stop([server])


def _flow_runs(api: str) -> list[dict]:
    """Every flow run the server holds, oldest first, with its flow's name."""
    runs = _api(api, "/flow_runs/filter", {"sort": "START_TIME_ASC"})
    flows = {f["id"]: f["name"] for f in _api(api, "/flows/filter", {})}
    for r in runs:
        r["flow_name"] = flows[r["flow_id"]]
    return runs


@pytest.mark.slow
@pytest.mark.timeout(900)  # the server, workers and party servers start in its first test's setup
def test_training_deployment_over_party_servers_on_each_organisations_pool(deployed, tmp_path):
    """Each party-server run on its organisation's pool, its data prepared inside it; the training on the
    coordinator's pool ends with the model `fedmine run` trains on the same federation in one process."""
    from mlflow.tracking import MlflowClient

    env, api = deployed["env"], deployed["api"]
    t0 = time.perf_counter()
    out = _prefect("deployment", "run", "federated-training/retail-credit-nightly", "--watch", env=env)
    watched = time.perf_counter() - t0
    assert "Completed" in out
    training_id = re.search(r"flow-run/([0-9a-f-]{36})", out).group(1)
    runs = _flow_runs(api)
    by_id = {r["id"]: r for r in runs}
    party_runs = [r for r in runs if r["flow_name"] == "party-server" and r["id"] in deployed["parties"].values()]
    assert sorted((r["parameters"]["org"], r["work_pool_name"], r["state_type"]) for r in party_runs) == [
        (org, org, "RUNNING") for org in ORGS
    ]
    # each organisation's data was prepared inside its own party server's run; none in the coordinator's runs
    parents = {}
    for r in runs:
        if r["flow_name"] == "prepare-organisation":
            parents[r["id"]] = by_id[_api(api, f"/task_runs/{r['parent_task_run_id']}")["flow_run_id"]]
    deployed_prepares = sorted(
        (r["name"], parents[r["id"]]["name"], parents[r["id"]]["work_pool_name"])
        for r in runs
        if r["id"] in parents and parents[r["id"]]["deployment_id"]
    )
    assert deployed_prepares == [(f"prepare-{org}", f"party-{org}", org) for org in ORGS]
    training = by_id[training_id]
    assert (training["flow_name"], training["work_pool_name"], training["state_type"]) == (
        "federated-training",
        "coordinator",
        "COMPLETED",
    )

    client = MlflowClient(deployed["store"])
    exp = client.get_experiment_by_name("retail-credit")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name LIKE 'histogram-%'")
    assert run.info.status == "FINISHED"
    remote = Path(client.download_artifacts(run.info.run_id, "model.txt", str(tmp_path))).read_text()
    assert len(client.get_metric_history(run.info.run_id, "eval/auc")) == ROUNDS

    simulation = deployed["simulation_run"]  # `fedmine run` on the same federation with every source in one place
    assert simulation.wait(timeout=300) == 0, simulation.stderr.read()[-3000:]
    summary = json.loads((deployed["root"] / "simulation.json").read_text())
    assert remote == Path(summary["model_file"]).read_text()
    deployed["timings"]["training deployment (--watch)"] = watched


@pytest.mark.slow
@pytest.mark.timeout(900)  # the server, workers and party servers start in its first test's setup
def test_profile_deployment_profiles_endpoint_only_organisations_over_their_party_servers(deployed, tmp_path):
    """The profile on the coordinator's pool reaches every organisation at its party server (the coordinator's
    config has endpoints only, its folder no data): the protocol's profile calls, aggregates back."""
    from mlflow.tracking import MlflowClient

    env, api = deployed["env"], deployed["api"]
    coordinator = deployed["homes"]["coordinator"]
    assert sorted(p.name for p in coordinator.iterdir()) == ["certs", "federation.yaml"]
    assert all(
        "source" not in o
        for o in yaml.safe_load((coordinator / "federation.yaml").read_text())["organisations"].values()
    )
    t0 = time.perf_counter()
    out = _prefect("deployment", "run", "federated-profile/retail-credit-profile", "--watch", env=env)
    watched = time.perf_counter() - t0
    assert "Completed" in out
    run_id = re.search(r"flow-run/([0-9a-f-]{36})", out).group(1)
    (run,) = [r for r in _flow_runs(api) if r["id"] == run_id]
    assert run["flow_name"] == "federated-profile"
    assert not any(
        r["flow_name"] == "prepare-organisation"
        and _api(api, f"/task_runs/{r['parent_task_run_id']}")["flow_run_id"] == run_id
        for r in _flow_runs(api)
    )
    assert (run["work_pool_name"], run["state_type"]) == ("coordinator", "COMPLETED")
    tasks = _api(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert sorted(t["name"] for t in tasks if t["name"].startswith(("connect-", "prepare-"))) == [
        f"connect-{org}" for org in ORGS
    ]

    client = MlflowClient(deployed["store"])
    exp = client.get_experiment_by_name("retail-credit")
    (profile_run,) = client.search_runs([exp.experiment_id], "tags.`fedmine.kind` = 'profile'")
    profile = json.loads(
        Path(client.download_artifacts(profile_run.info.run_id, "profile/profile.json", str(tmp_path))).read_text()
    )
    assert set(profile["organisations"]) == set(ORGS)
    rows = {org: view["rows"] for org, view in profile["organisations"].items()}
    assert min(rows.values()) > 0 and profile["federation"]["rows"] == sum(rows.values())
    for org in ORGS:
        assert f"psi/{org}/income" in profile_run.data.metrics
    deployed["timings"]["profile deployment (--watch)"] = watched
    print(deployed["timings"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_party_servers_end_when_their_runs_are_cancelled(deployed):
    """`prefect flow-run cancel` ends a party server's window early: the run ends CANCELLED, its port closes."""
    env, api = deployed["env"], deployed["api"]
    _prefect_all([["flow-run", "cancel", run_id] for run_id in deployed["parties"].values()], env=env)
    deadline = time.time() + 120
    while True:
        states = {org: _api(api, f"/flow_runs/{r}")["state_type"] for org, r in deployed["parties"].items()}
        if set(states.values()) == {"CANCELLED"} or time.time() > deadline:
            break
        time.sleep(0.5)
    assert states == dict.fromkeys(ORGS, "CANCELLED")
    for endpoint in deployed["endpoints"].values():
        host, port = endpoint.rsplit("/", 1)[1].split(":")
        with socket.socket() as sock:
            assert sock.connect_ex((host, int(port))) != 0, endpoint
