"""MLflow for the schema commands: a profile run and the previous profile.

What :class:`fedmine.tracking.Tracker` does not already offer: naming a run
as a profile, logging plain metrics by name, and finding the latest finished
profile run of the federation's experiment to read its ``profile.json``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from fedmine.config import FederationConfig
from fedmine.tracking import Tracker

KIND_TAG = "fedmine.kind"
PROFILE_KIND = "profile"


def start_profile_run(cfg: FederationConfig) -> Tracker:
    """A run in the federation's experiment, tagged ``fedmine.kind=profile``."""
    tracker = Tracker(cfg)
    tracker.start(tags={KIND_TAG: PROFILE_KIND})
    tracker.client.set_tag(tracker.run_id, "mlflow.runName", f"profile-{time.strftime('%Y%m%d-%H%M%S')}")
    return tracker


def log_metrics(tracker: Tracker, values: dict[str, float], *, step: int = 0) -> None:
    """Metrics by name on the tracker's run (NaN values are left out)."""
    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step) for k, v in values.items() if v == v]
    for i in range(0, len(items), 900):
        tracker.client.log_batch(tracker.run_id, metrics=items[i:i + 900])


def previous_profile(tracker: Tracker, artifact: str) -> tuple[str, dict[str, Any]] | None:
    """``(run id, profile)`` of the latest finished profile run of the experiment other than this one."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = '{PROFILE_KIND}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    for run in runs:
        if run.info.run_id == tracker.run_id:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = tracker.client.download_artifacts(run.info.run_id, artifact, tmp)
            except Exception:  # a run without the artifact: look further back
                continue
            return run.info.run_id, json.loads(Path(local).read_text())
    return None


def log_profile(cfg: FederationConfig, profile) -> str:
    """Record a :class:`~fedmine.schema.profiler.FederatedProfile` as a profile run; return its id.

    Compares it with the latest earlier profile run (``profile.drift`` is
    filled in), logs ``drift.<org>.<feature>`` and ``psi.<org>.<feature>``
    metrics, the number of flags, and the report (HTML, PNGs, JSON) under
    ``profile/``.
    """
    from fedmine.schema.drift import drift
    from fedmine.schema.profiler import PROFILE_DIR, PROFILE_JSON, write_report

    tracker = start_profile_run(cfg)
    try:
        before = previous_profile(tracker, f"{PROFILE_DIR}/{PROFILE_JSON}")
        if before is not None:
            profile.drift = drift(before[1], profile.as_dict())
            profile.notices.append(f"drift measured against profile run {before[0]}")
        metrics = {"profile.flags": float(len(profile.flags))}
        for org, view in profile.organisations.items():
            for name, entry in view["features"].items():
                if "psi" in entry:
                    metrics[f"psi.{org}.{name}"] = entry["psi"]
        for org, feats in profile.drift.items():
            for name, value in feats.items():
                metrics[f"drift.{org}.{name}"] = value
        log_metrics(tracker, metrics)
        with tempfile.TemporaryDirectory() as tmp:
            write_report(profile, tmp)
            tracker.log_artifacts(tmp, PROFILE_DIR)
        tracker.finish("FINISHED")
    except BaseException as exc:
        tracker.fail(exc)
        raise
    return tracker.run_id
