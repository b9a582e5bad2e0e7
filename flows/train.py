"""The flow users schedule: federated training from a config file.

Recipe: prepare every organisation concurrently (a subflow each), start the
federation, run the rounds (each one MLflow step), train each organisation's
local-only baseline, then evaluate, report and export the global model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from fedmine import report
from fedmine.config import FederationConfig, load_config
from fedmine.coordinator.vertical import check_resume
from fedmine.errors import ConfigError, output_path
from fedmine.flows.prepare import prepare_here, prepare_organisation
from fedmine.schema.check import log_check
from fedmine.tasks.rounds import (
    connect_party,
    intersect,
    local_baselines,
    resume_vertical,
    start_federation,
    start_vertical,
    train_rounds,
)
from fedmine.tracking import Tracker, summary_json


@task(name="prepare", cache_policy=NO_CACHE, task_run_name="prepare-{org}")
def _prepare(cfg: FederationConfig, org: str):  # an organisation on its Dask cluster: a subflow of its own
    return prepare_organisation(cfg, org)


def _prepare_all(cfg: FederationConfig) -> tuple[list[Any], dict[str, float]]:
    """Every organisation's party, in config order, and the seconds of each one prepared here (``<org>/<step>``).

    Party servers and Dask clusters are reached all at once, in the task
    runner, while the organisations prepared in this process take turns:
    one organisation's frames at a time sit in memory.
    """
    away = {}  # reached at a party server, or prepared on its own Dask cluster
    for org, spec in cfg.organisations.items():
        if spec.endpoint:
            away[org] = connect_party.submit(cfg, org)
        elif spec.compute is not None:
            away[org] = _prepare.submit(cfg, org)
    parties: dict[str, Any] = {}
    steps: dict[str, float] = {}
    for org in cfg.organisations:
        if org not in away:
            parties[org], seconds = prepare_here(cfg, org)
            steps.update({f"{org}/{step}": s for step, s in seconds.items()})
    parties.update({org: future.result() for org, future in away.items()})
    return [parties[org] for org in cfg.organisations], steps


@flow(name="federated-training", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=False)
def federated_training(
    config: str,
    overrides: list[str] | None = None,
    summary_path: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Train the federation described by ``config`` (a YAML path) and return its summary.

    ``resume`` is the MLflow run id of a training whose coordinator stopped:
    it continues from that run's last checkpoint and ends with the same model.
    """
    t_start = time.perf_counter()
    cfg = load_config(config, overrides)
    if summary_path:  # before any run exists: a summary that cannot be written stops nothing half-way
        output_path(summary_path, "summary_path")
    tracker = Tracker(cfg)
    if resume:
        checkpoint = tracker.resume(resume)
    else:
        checkpoint = None
        tracker.start(tags={"fedmine.config": str(Path(config).resolve())})
    parties: list[Any] = []
    phases: dict[str, float] = {}  # wall seconds of the training's steps, logged as phase/* at the end
    try:
        if checkpoint is not None:
            check_resume(cfg, checkpoint[0])  # the same partition and organisations, before any party is asked
        # each organisation: prepared here (a source) or reached at its party server (an endpoint)
        t_phase = time.perf_counter()
        parties, steps = _prepare_all(cfg)
        phases["prepare"] = time.perf_counter() - t_phase
        phases.update(steps)
        t_phase = time.perf_counter()
        first = 1
        if cfg.partition == "vertical":
            if checkpoint is not None:  # every organisation takes it up from its own disk, no new intersection
                coord = resume_vertical(cfg, parties, checkpoint[0])
                first = coord.last_round + 1
            else:
                coord = intersect(cfg, parties)  # its own step: the shared customers, before any round
                with tracker.writing("logging the intersection"):
                    tracker.log_metrics(coord.intersection_metrics(), step=0)
                coord = start_vertical(coord)
                tracker.start_organisation(coord.lead, rows=coord.shared_rows, report={})
        else:
            coord = start_federation(cfg, parties, None if checkpoint is None else checkpoint[0])
            reports = {name: d.get("report") or {} for name, d in coord.descriptions.items()}
            log_check(tracker, cfg, reports)
            for notice in coord.notices:
                get_run_logger().warning(notice)
            if checkpoint is None:
                for name, d in coord.descriptions.items():
                    rows = d["n_rows"] + d["n_valid"] if "n_rows" in d else None  # None: organisation_metrics: own
                    tracker.start_organisation(name, rows=rows, report=reports[name])
            else:
                first = coord.restore(*checkpoint)

        t_train = time.perf_counter()
        phases["start"] = t_train - t_phase
        train_rounds(coord, tracker, first, cfg.training.rounds)  # rounds tasks of a couple of seconds each
        train_seconds = phases["rounds"] = time.perf_counter() - t_train

        with tracker.writing("logging the privacy receipt"):
            tracker.log_privacy(coord.receipt().as_dict(), coord.notices, coord.dropped)
        t_phase = time.perf_counter()
        baselines = local_baselines(coord)
        with tracker.writing("logging the local-only baselines"):
            for org, b in baselines.items():
                tracker.log_baseline(org, b)
        phases["baselines"] = time.perf_counter() - t_phase
        t_phase = time.perf_counter()
        with tracker.writing("publishing the model and the report"):
            summary = report.publish(tracker, coord, baselines, train_seconds=train_seconds, started=t_start)
        phases["publish"] = time.perf_counter() - t_phase
        with tracker.writing("logging the phases' seconds"):
            tracker.log_metrics({f"phase/{name}": s for name, s in phases.items()}, step=0)
        if summary_path:
            try:
                Path(summary_path).write_text(summary_json(summary))
            except OSError as exc:
                raise ConfigError(f"summary_path {summary_path}: cannot write it: {exc.strerror or exc}") from None
        tracker.finish("FINISHED")
        return summary
    except BaseException as exc:
        tracker.fail(exc, config=config)  # a store that stays unwritable: one line, the run left for --resume
        raise
    finally:
        for party in parties:  # an organisation's Dask cluster started for this run stops with it
            getattr(party, "close", lambda: None)()
