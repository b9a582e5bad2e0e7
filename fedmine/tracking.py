"""The one place that talks to MLflow.

Layout of a training in MLflow:

- experiment = the federation's ``name``; store = ``tracking.uri``
  (default ``sqlite:///mlruns/mlflow.db``, artifacts beside the database);
- one parent run per training: parameters, the resolved config, the canonical
  schema, per-round metrics (``step`` = round): ``eval/<metric>``,
  ``eval/<organisation>/<metric>``, ``privacy/*``, ``seconds/*``,
  ``traffic/*``, ``train/*``; the final ``final/<metric>`` and
  ``gain/<organisation>``; the federation report; the model (lightgbm
  flavour), registered under ``name``;
- one nested run per organisation: its rows, its metrics of the global model
  per round (``eval/<metric>``) and at the end (``final/<metric>``), its
  local-only baseline (``local_only/<metric>``, learning curve
  ``local_only/curve/<metric>``).

Metric names are grouped by ``/``: the MLflow UI makes a section of each
prefix and orders the sections by name, so the validation metrics come first
(docs/tracking.md lists every name and the names they replace). The
experiment is tagged ``mlflow.experimentKind=custom_model_development`` (a
model-training experiment, not a GenAI one); :func:`run_url` links a run's
page in the UI's model-training view.

A federated profile (``fedmine profile``, the ``federated_profile`` flow) is
a run of the same experiment tagged ``fedmine.kind=profile``: ``drift/*``,
``psi/*`` and ``profile/flags`` metrics and the report under ``profile/``
(:func:`log_profile`); the latest earlier profile run is the baseline of its
drift.

An explanation (``fedmine explain``) is a run tagged ``fedmine.kind=explain``:
the federation's mean |SHAP| and the gain importance as metrics, the report
under ``explain/``, and each in-process organisation's own plots in its
nested run (:func:`log_explanation`).

A search (``fedmine tune``) is a run tagged ``fedmine.kind=tune`` with a
nested run per trial (``fedmine.kind=trial``): each trial's run holds what a
training's parent run holds (rounds, checkpoints, its privacy receipt) but no
model; the tuning run holds each trial's value (``tune/trial_value``, step =
trial), the best trial and its overlay (``tune/best.yaml``), and the privacy
spent over all trials.

A run that fails is marked FAILED with the error as a tag. Every call goes
through :class:`MlflowClient` with explicit run ids, so it is safe from any
thread; only :meth:`Tracker.log_model` uses MLflow's fluent API.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from fedmine.config import FederationConfig, resolved_dict
from fedmine.errors import ConfigError, TrackingError

# Errors are one line on stderr: no download progress bars there (MLflow draws them when tqdm is installed).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: Round metrics and checkpoints are written together at most this often (seconds): a round costs
#: the store nothing in between, and a checkpoint is never ahead of the metrics it follows.
FLUSH_SECONDS = 1.0

_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
#: The tag saying what a run records, and its value on profile runs.
KIND_TAG = "fedmine.kind"
PROFILE_KIND = "profile"
EXPLAIN_KIND = "explain"
#: The experiment tag MLflow reads for what an experiment is, and the value of a model-training experiment.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"
#: The UI's query parameter choosing its model-training view (MLflow 3's UI otherwise opens the GenAI view).
TRAINING_VIEW = "workflowType=machine_learning"
TUNE_KIND, TRIAL_KIND = "tune", "trial"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working folder), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def artifact_root(uri: str, artifacts: str | None) -> str | None:
    """Where artifacts go: ``tracking.artifacts`` or, for SQLite, ``artifacts/`` beside the database."""
    if artifacts:
        return artifacts if "://" in artifacts else Path(artifacts).resolve().as_uri()
    db = sqlite_path(uri)
    return (db.resolve().parent / "artifacts").as_uri() if db else None


def local_artifact_path(artifact_uri: str) -> Path | None:
    """A ``file://`` artifact URI as a local path."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(url2pathname(parsed.path))
    return None


def prepare_store(uri: str) -> None:
    """Create the folder of a SQLite store so a fresh clone can write to it."""
    db = sqlite_path(uri)
    if db is not None:
        db.resolve().parent.mkdir(parents=True, exist_ok=True)


def _quiet_store() -> None:
    """The store's failures reach the user as one TrackingError line, not as MLflow's logged tracebacks."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def open_store(cfg: FederationConfig) -> None:
    """Open the config's MLflow store now: its tables created or checked, its experiment looked up.

    MLflow builds one store object per URI in a process (for SQLite: its
    modules loaded, an engine, the schema's migrations checked, about 0.7 s;
    more on a new store), which the training's :class:`Tracker` then reuses,
    so its run starts at once. The CLI calls this while Prefect's API server
    starts. A store that cannot be opened is left as it is: the Tracker
    reports it, in its own words, when the training starts.
    """
    _quiet_store()
    try:
        prepare_store(cfg.tracking.uri)
        MlflowClient(tracking_uri=cfg.tracking.uri, registry_uri=cfg.tracking.uri).get_experiment_by_name(cfg.name)
    except Exception:  # the Tracker's to report
        return


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)[:6000]


class Tracker:
    """One training's MLflow records.

    Parameters
    ----------
    cfg : the federation config; ``cfg.tracking`` says where.
    """

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg = cfg
        self.uri = cfg.tracking.uri
        prepare_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        _quiet_store()
        self.run_id: str | None = None
        self.org_runs: dict[str, str] = {}
        self.experiment_id: str | None = None
        self._saved_arrays: dict[str, Any] = {}  # checkpoint arrays already written (never rewritten)
        self._checkpoints = 0  # checkpoint array files written
        self._pending: dict[str, list[Metric]] = {}  # round metrics not yet written, by run
        self._pending_state: dict[str, Any] | None = None  # the last checkpoint's state, not yet written
        self._pending_arrays: dict[str, Any] = {}  # its new arrays
        self._flushed = time.monotonic()

    # -- lifecycle -------------------------------------------------------
    def start(self, *, tags: dict[str, str] | None = None) -> str:
        """Create (or reuse) the experiment and start the parent run; return its id."""
        name = self.cfg.name
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                self.experiment_id = self.client.create_experiment(
                    name,
                    artifact_location=artifact_root(self.uri, self.cfg.tracking.artifacts),
                    tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT},
                )
            else:
                self.experiment_id = exp.experiment_id
                if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_EXPERIMENT:  # an experiment made before the tag
                    self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT)
        except Exception as exc:  # one conversion point for the store
            raise ConfigError(f"tracking.uri: cannot open MLflow store {self.uri!r}: {exc}".splitlines()[0]) from None
        t = self.cfg.training
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{t.strategy}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                "fedmine.strategy": t.strategy,
                "fedmine.organisations": ",".join(self.cfg.organisations),
                **(tags or {}),
            },
        )
        self.run_id = run.info.run_id
        params: dict[str, str] = {
            "objective": self.cfg.objective,
            "label": self.cfg.label,
            "organisations": str(len(self.cfg.organisations)),
            "features": str(len(self.cfg.features)),
        }
        _flatten("training", t.model_dump(), params)
        _flatten("privacy", self.cfg.privacy.model_dump(), params)
        params["privacy.secure_aggregation"] = str(self.cfg.secure_aggregation)
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        resolved = resolved_dict(self.cfg)
        self.client.log_dict(self.run_id, resolved, "config/federation.yaml")
        schema = {
            "label": self.cfg.label,
            "objective": self.cfg.objective,
            "classes": self.cfg.classes,
            "features": resolved["features"],
        }
        self.client.log_dict(self.run_id, schema, "config/canonical_schema.json")
        return self.run_id

    def resume(self, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reattach to a run of this federation; return its last checkpoint (state, arrays)."""
        import numpy as np

        try:
            run = self.client.get_run(run_id)
        except Exception:
            raise ConfigError(f"--resume {run_id}: no such run in {self.uri}") from None
        exp = self.client.get_experiment(run.info.experiment_id)
        if exp.name != self.cfg.name:
            raise ConfigError(
                f"--resume {run_id}: the run belongs to experiment {exp.name!r}, the config to {self.cfg.name!r}"
            )
        if run.info.status == "FINISHED":
            raise ConfigError(f"--resume {run_id}: the run has finished; nothing to resume")
        names = {a.path for a in self.client.list_artifacts(run_id, "checkpoint")}
        if "checkpoint/state.json" not in names:
            raise ConfigError(f"--resume {run_id}: the run has no checkpoint (it stopped before its first round)")
        self.experiment_id = exp.experiment_id
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "fedmine.resumed", "true")
        for child in self.client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"):
            self.org_runs[child.data.tags["fedmine.organisation"]] = child.info.run_id
            self.client.update_run(child.info.run_id, status="RUNNING")
        with tempfile.TemporaryDirectory() as tmp:
            state = json.loads(Path(self.client.download_artifacts(run_id, "checkpoint/state.json", tmp)).read_text())
            arrays: dict[str, Any] = {}
            parts = sorted(n for n in names if n.startswith("checkpoint/arrays") and n.endswith(".npz"))
            for name in parts:  # appended in order; a later part never repeats a key
                with np.load(self.client.download_artifacts(run_id, name, tmp)) as npz:
                    arrays.update({k: npz[k] for k in npz.files})
        self._saved_arrays = dict(arrays)
        self._checkpoints = len(parts)
        return state, arrays

    def save_checkpoint(self, state: dict[str, Any], arrays: dict[str, Any], *, now: bool = False) -> None:
        """The coordinator's state after a round; written with the round metrics at most every :data:`FLUSH_SECONDS`.

        Only arrays not saved before (a round's new trees) are written, as
        ``checkpoint/arrays-NNNNN.npz``, and ``state.json`` is replaced, so a
        checkpoint costs the same whatever the round number. An array once
        saved never changes: trees are only ever added, or dropped from the end
        (``state`` says how many count). The round metrics are written first,
        so a checkpoint is never ahead of them: a resume grows (and logs) again
        only rounds after it. ``now``: written at once, with the metrics held back.
        """
        self._pending_state = state
        self._pending_arrays.update({k: v for k, v in arrays.items() if k not in self._saved_arrays})
        if now or time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the round metrics and the last checkpoint held back since the previous flush."""
        for run_id, items in list(self._pending.items()):
            for i in range(0, len(items), _BATCH):
                self.client.log_batch(run_id, metrics=items[i : i + _BATCH])
            del self._pending[run_id]
        if self._pending_state is not None:
            self._write_checkpoint(self._pending_state, self._pending_arrays)
            self._pending_state, self._pending_arrays = None, {}
        self._flushed = time.monotonic()

    def _write_checkpoint(self, state: dict[str, Any], new: dict[str, Any]) -> None:
        import numpy as np

        if new:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"arrays-{self._checkpoints:05d}.npz"
                np.savez(path, **new)
                self.client.log_artifact(self.run_id, str(path), "checkpoint")
            self._saved_arrays.update(new)
            self._checkpoints += 1
        self.client.log_dict(self.run_id, state, "checkpoint/state.json")

    def start_profile(self) -> str:
        """Start a profile run in the federation's experiment (tagged ``fedmine.kind=profile``); return its id."""
        self.start(tags={KIND_TAG: PROFILE_KIND})
        self.client.set_tag(self.run_id, "mlflow.runName", f"profile-{time.strftime('%Y%m%d-%H%M%S')}")
        return self.run_id

    def start_tuning(self, *, tags: dict[str, str] | None = None) -> str:
        """Start a tuning run (tagged ``fedmine.kind=tune``), the parent of its trials' runs; return its id."""
        self.start(tags={KIND_TAG: TUNE_KIND, **(tags or {})})
        self.client.set_tag(self.run_id, "mlflow.runName", f"tune-{time.strftime('%Y%m%d-%H%M%S')}")
        return self.run_id

    def start_trial(self, parent: str, number: int, params: dict[str, Any]) -> str:
        """A trial's run, nested under the tuning run ``parent``: a training's records and ``tune.<key>`` params."""
        self.start(tags={"mlflow.parentRunId": parent, KIND_TAG: TRIAL_KIND, "fedmine.trial": str(number)})
        self.client.set_tag(self.run_id, "mlflow.runName", f"trial-{number}")
        self.client.log_batch(self.run_id, params=[Param(f"tune.{k}", str(v)) for k, v in params.items()])
        return self.run_id

    def finish_trial(self, state: str, value: float | None, rounds: int) -> None:
        """End a trial's run: its state (``complete``, ``pruned``) as a tag, ``tune/value`` and ``tune/rounds``."""
        self.flush()
        self.client.set_tag(self.run_id, "fedmine.trial.state", state)
        figures = {"tune/rounds": float(rounds)}
        if value is not None:
            figures["tune/value"] = float(value)
        self.log_metrics(figures)
        self.finish("FINISHED")

    def log_tuning(self, summary: dict[str, Any], overlay: str | None) -> None:
        """The search on its parent run: each trial's value (step = trial), the best trial, the overlay, the table."""
        for trial in summary["trials"]:
            if trial["value"] is not None:
                self._log_metrics(self.run_id, {"tune/trial_value": trial["value"]}, trial["number"])
        best = summary.get("best")
        if best is not None:
            self.log_metrics({"tune/best_value": best["value"], "tune/best_trial": float(best["number"])})
            self.client.log_batch(self.run_id, params=[Param(f"best.{k}", str(v)) for k, v in best["params"].items()])
            self.client.set_tag(self.run_id, "fedmine.tune.best_run", best["run_id"])
        self.client.log_dict(self.run_id, summary, "tune/trials.json")
        if overlay is not None:
            self.log_text(overlay, "tune/best.yaml")

    def previous_profile(self, artifact: str) -> tuple[str, dict[str, Any]] | None:
        """``(run id, JSON artifact)`` of the latest finished profile run of the experiment other than this one."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{KIND_TAG}` = '{PROFILE_KIND}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=5,
        )
        for run in runs:
            if run.info.run_id == self.run_id:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    local = self.client.download_artifacts(run.info.run_id, artifact, tmp)
                except Exception:  # a run without the artifact: look further back
                    continue
                return run.info.run_id, json.loads(Path(local).read_text())
        return None

    def start_organisation(self, org: str, *, rows: int | None, report: dict[str, Any] | None = None) -> str:
        """The nested run of one organisation (``rows`` None: the organisation keeps its row count)."""
        spec = self.cfg.organisations[org]
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"org:{org}",
            tags={
                "mlflow.parentRunId": self.run_id,
                "fedmine.organisation": org,
                "fedmine.industry": spec.industry or "",
            },
        )
        rid = run.info.run_id
        self.org_runs[org] = rid
        where = spec.endpoint or spec.source
        kind = where.split("://")[0] if "://" in where else Path(where).suffix
        self.client.log_batch(
            rid,
            params=[Param("organisation", org), Param("source_scheme", kind)]
            + ([Param("rows", str(rows))] if rows is not None else []),
        )
        if report:
            self.client.log_dict(rid, report, "harmonisation_report.json")
        return rid

    def finish(self, status: str = "FINISHED") -> None:
        """Write what is held back, then end the nested runs and the parent run with ``status``."""
        self.flush()
        for rid in self.org_runs.values():
            self.client.set_terminated(rid, status)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status)
        elif self.run_id:
            self.client.set_terminated(self.run_id, status)

    def fail(self, exc: BaseException, *, config: str = "CONFIG", wait_seconds: float = 30.0) -> None:
        """Mark the parent and nested runs FAILED, with the reason as a tag.

        When the store cannot be written (``exc`` itself may say so), the runs
        are marked once it is writable again, within ``wait_seconds``; else
        they are left RUNNING for ``fedmine run --resume`` and a
        :class:`TrackingError` says so in one line.
        """
        if not self.run_id:
            return
        reason = str(exc).splitlines()[0][:4000] if str(exc) else type(exc).__name__
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                self.client.set_tag(self.run_id, "fedmine.error", reason)
                self.finish("FAILED")
                return
            except Exception as store_exc:
                if time.monotonic() >= deadline:
                    raise TrackingError(
                        f"MLflow store {self.uri} is not writable ({_one_line(store_exc)}); run {self.run_id} is "
                        f"left RUNNING: `fedmine run {config} --resume {self.run_id}` continues it once the store "
                        f"is writable"
                    ) from None
                time.sleep(1.0)

    def writing(self, what: str):
        """A context in which a failed write to the store becomes one :class:`TrackingError` line."""
        return _Writing(self, what)

    # -- metrics ---------------------------------------------------------
    def _log_metrics(self, run_id: str, values: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in values.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + _BATCH])

    def log_metrics(self, values: dict[str, float], *, step: int = 0) -> None:
        """Metrics by name on the parent run (NaN values are left out)."""
        self._log_metrics(self.run_id, {k: v for k, v in values.items() if v == v}, step)

    def log_round(self, round_id: int, values: dict[str, float], org_values: dict[str, dict[str, float]]) -> None:
        """Metrics of one round (step = round): on the parent run, and each organisation's on its nested run.

        Held back with the round's checkpoint and written together by :meth:`flush`.
        """
        ts = int(time.time() * 1000)
        self._pending.setdefault(self.run_id, []).extend(Metric(k, float(v), ts, round_id) for k, v in values.items())
        for org, m in org_values.items():
            if org in self.org_runs and m:
                self._pending.setdefault(self.org_runs[org], []).extend(
                    Metric(f"eval/{k}", float(v), ts, round_id) for k, v in m.items()
                )

    def log_baseline(self, org: str, baseline: dict[str, Any]) -> None:
        """An organisation's local-only model: ``local_only/<m>`` (final) and ``local_only/curve/<m>``."""
        rid = self.org_runs[org]
        if baseline.get("notice"):  # no local-only model (an organisation on a cluster): say why
            self.client.set_tag(rid, "fedmine.baseline.notice", str(baseline["notice"])[:4000])
        final = {f"local_only/{k}": v for k, v in baseline["metrics"].items() if v == v}
        self._log_metrics(rid, final, 0)
        ts = int(time.time() * 1000)
        curve = [
            Metric(f"local_only/curve/{k}", float(v), ts, i + 1)
            for k, vals in baseline.get("curve", {}).items()
            for i, v in enumerate(vals)
        ]
        for i in range(0, len(curve), _BATCH):
            self.client.log_batch(rid, metrics=curve[i : i + _BATCH])

    def log_final(self, values: dict[str, float], org_values: dict[str, dict[str, float]]) -> None:
        """Final figures: on the parent (``final/*``, ``gain/*``) and nested runs (``final/*``), by MLflow name."""
        self._log_metrics(self.run_id, {k: v for k, v in values.items() if v == v}, 0)
        for org, m in org_values.items():
            if org in self.org_runs:
                self._log_metrics(self.org_runs[org], {k: v for k, v in m.items() if v == v}, 0)

    def log_privacy(self, receipt: dict[str, Any], notices: list[str], dropped: list[dict[str, Any]]) -> None:
        """The privacy receipt (artifact and tags), warnings given at start, parties left out."""
        self.client.log_dict(
            self.run_id, {"receipt": receipt, "notices": notices, "dropped": dropped}, "privacy_receipt.json"
        )
        tags = {f"privacy.{k}": str(v) for k, v in receipt.items() if not k.startswith("param.")}
        for i, notice in enumerate(notices):
            tags[f"fedmine.notice.{i}"] = notice[:4000]
        for d in dropped:
            tags[f"fedmine.dropped.{d['organisation']}"] = f"round {d['round']}: {d['reason']}"[:4000]
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    # -- artifacts -------------------------------------------------------
    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_artifacts(self, folder: str | Path, path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), path)

    def artifact_path(self, path: str) -> Path | None:
        """The local path of an artifact of the parent run (file stores only)."""
        base = local_artifact_path(self.client.get_run(self.run_id).info.artifact_uri)
        return base / path if base else None

    def log_model(self, model_text: str) -> str | None:
        """Log the global model with the lightgbm flavour and register it under ``name``.

        Returns the registered version (None when registration is off).
        """
        import lightgbm as lgb
        import numpy as np
        import pandas as pd

        booster = lgb.Booster(model_str=model_text)
        requirements = [
            f"lightgbm=={lgb.__version__}",
            f"numpy=={np.__version__}",
            f"pandas=={pd.__version__}",
            f"mlflow=={mlflow.__version__}",
        ]
        register = self.cfg.name if self.cfg.tracking.register_model else None
        self.log_text(model_text, "model.txt")
        # The fluent API needs the run active in this thread; finish() ends it.
        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            mlflow.start_run(run_id=self.run_id)
        info = mlflow.lightgbm.log_model(
            booster, name="model", pip_requirements=requirements, registered_model_name=register
        )
        version = getattr(info, "registered_model_version", None)
        return str(version) if version is not None else None


def log_profile(cfg: FederationConfig, profile) -> str:
    """Record a :class:`~fedmine.schema.profiler.FederatedProfile` as a profile run; return its id.

    Compares it with the latest earlier profile run (``profile.drift`` is
    filled in), logs ``drift/<org>/<feature>`` and ``psi/<org>/<feature>``
    metrics, the number of flags (``profile/flags``), and the report (HTML,
    PNGs, JSON) under ``profile/``.
    """
    from fedmine.schema.drift import drift
    from fedmine.schema.profiler import PROFILE_DIR, PROFILE_JSON, write_report

    tracker = Tracker(cfg)
    tracker.start_profile()
    try:
        before = tracker.previous_profile(f"{PROFILE_DIR}/{PROFILE_JSON}")
        if before is not None:
            profile.drift = drift(before[1], profile.as_dict())
            profile.notices.append(f"drift measured against profile run {before[0]}")
        metrics = {"profile/flags": float(len(profile.flags))}
        for org, view in profile.organisations.items():
            for name, entry in view["features"].items():
                if "psi" in entry:
                    metrics[f"psi/{org}/{name}"] = entry["psi"]
        for org, feats in profile.drift.items():
            for name, value in feats.items():
                metrics[f"drift/{org}/{name}"] = value
        tracker.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            write_report(profile, tmp)
            tracker.log_artifacts(tmp, PROFILE_DIR)
        tracker.finish("FINISHED")
    except BaseException as exc:
        tracker.fail(exc)
        raise
    return tracker.run_id


def log_explanation(
    cfg: FederationConfig, explanation, report_folder: str | Path, org_folders: dict[str, Path], *, model: str
) -> str:
    """Record a :class:`~fedmine.coordinator.explanation.Explanation` as a run (``fedmine.kind=explain``); its id.

    The parent run holds the federation's figures (``shap/<feature>``, or
    ``shap/<class>/<feature>`` for a multiclass model, and ``gain/<feature>``)
    and the report under ``explain/``; each organisation in ``org_folders``
    (those run in this process) gets a nested run with its own plots under
    ``explain/``.
    """
    tracker = Tracker(cfg)
    tracker.start(tags={KIND_TAG: EXPLAIN_KIND, "fedmine.model": model[:5000]})
    try:
        tracker.client.set_tag(tracker.run_id, "mlflow.runName", f"explain-{time.strftime('%Y%m%d-%H%M%S')}")
        single = len(explanation.outputs) == 1
        values = {"explain/rows": float(explanation.rows)}
        for j, out in enumerate(explanation.outputs):
            for i, feature in enumerate(explanation.features):
                values[f"shap/{feature}" if single else f"shap/{out}/{feature}"] = float(explanation.mean_abs[j, i])
        values.update({f"gain/{f}": float(g) for f, g in zip(explanation.features, explanation.gain)})
        tracker.log_metrics(values)
        tracker.log_artifacts(report_folder, "explain")
        for org, folder in org_folders.items():
            rid = tracker.start_organisation(org, rows=explanation.org_rows.get(org, 0))
            if Path(folder).is_dir():
                tracker.client.log_artifacts(rid, str(folder), "explain")
        tracker.finish("FINISHED")
    except BaseException as exc:
        tracker.fail(exc)
        raise
    return tracker.run_id


def run_url(base: str, experiment_id: str, run_id: str, *, tab: str = "model-metrics") -> str:
    """The page of a run in the MLflow UI at ``base`` (``http://127.0.0.1:5000``), in its model-training view.

    ``tab``: ``model-metrics`` (the per-round charts), ``overview`` or ``artifacts``.
    """
    page = "" if tab == "overview" else f"/{tab}"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{page}?{TRAINING_VIEW}"


def experiments_url(base: str) -> str:
    """The MLflow UI's experiment list at ``base``, in its model-training view."""
    return f"{base.rstrip('/')}/#/experiments?{TRAINING_VIEW}"


def load_model_text(model: str, tracking_uri: str) -> str:
    """Model text from a file, an MLflow run id or a model URI (``models:/name/1``, ``runs:/id/model``)."""
    path = Path(model)
    if path.is_file():
        return path.read_text()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        if "://" in model or model.startswith("models:/") or model.startswith("runs:/"):
            booster = mlflow.lightgbm.load_model(model)
            return booster.model_to_string()
        if len(model) == 32 and all(c in "0123456789abcdef" for c in model):
            with tempfile.TemporaryDirectory() as tmp:
                local = MlflowClient(tracking_uri).download_artifacts(model, "model.txt", tmp)
                return Path(local).read_text()
    except Exception as exc:
        raise ConfigError(f"--model {model}: cannot load it from {tracking_uri}: {str(exc).splitlines()[0]}") from None
    raise ConfigError(f"--model {model}: not a file, a run id or a model URI (models:/NAME/VERSION, runs:/ID/model)")


def model_federation(model: str, tracking_uri: str) -> str | None:
    """The federation a model loaded by :func:`load_model_text` belongs to, when MLflow says it.

    A model registered by :meth:`Tracker.log_model` carries the federation's
    ``name`` as its registered name (``models:/NAME/VERSION``); a run id or
    ``runs:/ID/model`` belongs to the run's experiment, also named after the
    federation. A file says nothing: None.
    """
    if Path(model).is_file():
        return None
    if model.startswith("models:/"):
        return model[len("models:/") :].split("/")[0].split("@")[0] or None
    run_id = model[len("runs:/") :].split("/")[0] if model.startswith("runs:/") else model
    if not (len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id)):
        return None
    client = MlflowClient(tracking_uri)
    try:
        return client.get_experiment(client.get_run(run_id).info.experiment_id).name
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--model {model}: cannot read its run from {tracking_uri}: {reason}") from None


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=False, default=float)


#: A database driver's error inside SQLAlchemy's (and MLflow's) message: "(sqlite3.OperationalError) full [SQL".
_DRIVER_ERROR = re.compile(r"\((\w+(?:\.\w+)*(?:Error|Exception))\) ([^\[]+)")


def _one_line(exc: BaseException) -> str:
    """The store's reason in one short line (the driver's error when there is one, no SQL)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    driver = _DRIVER_ERROR.search(text)
    if driver:
        text = f"{driver.group(1)}: {driver.group(2).strip()}"
    return text if len(text) <= 300 else text[:297] + "..."


class _Writing:
    """See :meth:`Tracker.writing`."""

    def __init__(self, tracker: Tracker, what: str) -> None:
        self.tracker, self.what = tracker, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, TrackingError) or not isinstance(exc, Exception):
            return False
        raise TrackingError(f"MLflow store {self.tracker.uri}: {self.what} failed: {_one_line(exc)}") from None
