"""Kill the coordinator mid-training (SIGKILL) and resume the MLflow run: the same model as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

ROUNDS = 200


def test_killed_coordinator_resumes_to_the_same_model(prefect_harness, demo_config, tmp_path):
    from fedmine.flows.train import federated_training

    common = ["training.strategy=histogram", f"training.rounds={ROUNDS}", "training.learning_rate=0.05"]
    want = federated_training(str(demo_config), [*common, f"tracking.uri=sqlite:///{tmp_path}/a/mlflow.db"])

    uri = f"sqlite:///{tmp_path}/b/mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    args = [sys.executable, "-m", "fedmine.cli", "run", str(demo_config)]
    for item in [*common, f"tracking.uri={uri}"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # watch the checkpoint artifact on disk (not the database, which the training is writing)
    artifacts = tmp_path / "b" / "artifacts"
    run_id, done, deadline = None, 0, time.time() + 180
    try:
        while done < 10:
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no progress"
            for state in artifacts.glob("*/artifacts/checkpoint/state.json"):
                try:
                    done = json.loads(state.read_text())["round"]
                    run_id = state.parts[-4]
                except (ValueError, KeyError):
                    pass
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody marked it
    resumed = federated_training(str(demo_config), [*common, f"tracking.uri={uri}"], resume=run_id)
    assert resumed["run_id"] == run_id
    assert Path(resumed["model_file"]).read_text() == Path(want["model_file"]).read_text()
    history = client.get_metric_history(run_id, "eval/auc")
    assert sorted({m.step for m in history}) == list(range(1, ROUNDS + 1))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.tags["fedmine.resumed"] == "true"
