"""`fedmine schedule`: a deployment with a cron schedule on a real Prefect API, served and run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def test_schedule_serves_deployment_that_runs(prefect_harness, demo_config, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedmine.cli",
            "schedule",
            str(demo_config),
            "--cron",
            "0 2 * * *",
            "--name",
            "nightly",
            "--set",
            "training.rounds=2",
            "--set",
            f"tracking.uri={uri}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deployment = None
        deadline = time.time() + 120
        with get_client(sync_client=True) as client:
            while deployment is None:
                try:
                    deployment = client.read_deployment_by_name("federated-training/nightly")
                except Exception as exc:
                    if time.time() > deadline or proc.poll() is not None:
                        raise AssertionError("no deployment appeared") from exc
                    time.sleep(1)
            crons = [s.schedule.cron for s in deployment.schedules]
            assert crons == ["0 2 * * *"]
            assert deployment.parameters["overrides"] == ["training.rounds=2", f"tracking.uri={uri}"]
        run = run_deployment("federated-training/nightly", timeout=240)
        assert run.state.is_completed(), run.state
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_bad_cron_is_one_line(demo_config):
    result = subprocess.run(
        [sys.executable, "-m", "fedmine.cli", "schedule", str(demo_config), "--cron", "at two"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: --cron 'at two': not a cron expression")
