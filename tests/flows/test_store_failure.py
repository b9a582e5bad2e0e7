"""An MLflow store that fills up mid-run: one line, and the runs are marked FAILED once it has room again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs: a real filesystem that fills up."""
    mount = tmp_path / "store"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_store_that_fills_up_mid_run_gives_one_line_and_failed_runs(prefect_harness, demo_config, small_disk):
    uri = f"sqlite:///{small_disk}/mlflow.db"
    args = [sys.executable, "-m", "fedmine.cli", "run", str(demo_config)]
    for item in [
        "training.strategy=histogram",
        "training.rounds=200",
        "training.learning_rate=0.02",
        f"tracking.uri={uri}",
    ]:
        args += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    filler = small_disk / "filler"
    events = []

    def fill_then_free():
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            for state in small_disk.glob("**/checkpoint/state.json"):
                try:
                    if json.loads(state.read_text())["round"] >= 3:
                        subprocess.run(
                            ["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True
                        )  # until the disk is full
                        events.append("full")
                        time.sleep(4)
                        filler.unlink()
                        events.append("freed")
                        return
                except (ValueError, KeyError, OSError):
                    pass
            time.sleep(0.05)

    watcher = threading.Thread(target=fill_then_free)
    watcher.start()
    _out, err = proc.communicate(timeout=300)
    watcher.join()
    assert events == ["full", "freed"], (events, err[-2000:])
    assert proc.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith(f"error: MLflow store {uri}: logging round "), lines[-3:]
    runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    assert runs and {r.info.status for r in runs} == {"FAILED"}
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["fedmine.error"].startswith("MLflow store")
