"""The tuning flow: a federated hyperparameter search, each trial a training of the federation.

Recipe: check the ``tune`` space at its bounds, prepare every organisation
once (a subflow each, its rows stay there) or reach it at its party server,
start the tuning run; then, trial after trial, Optuna's TPE sampler proposes
parameters, the trial trains with them as an ordinary training of the config
(its own nested MLflow run, every round logged) and the median pruner stops it
after a round whose federation-wide validation metric lags the other trials'.
The best parameters end as an overlay for ``fedmine run --set``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from fedmine import progress
from fedmine.config import FederationConfig, load_config
from fedmine.coordinator.tuning import COMPLETE, PRUNED, Search, TrialRecord, trial_value
from fedmine.errors import ConfigError, output_path
from fedmine.flows.prepare import prepare_organisation
from fedmine.party.organisation import Party
from fedmine.party.policy import PartyPolicy
from fedmine.tasks.rounds import connect_party, start_federation, train_rounds
from fedmine.tracking import Tracker


@task(name="prepare", cache_policy=NO_CACHE, task_run_name="prepare-{org}")
def _prepare(cfg: FederationConfig, org: str) -> Party:
    return prepare_organisation(cfg, org)


def _run_trial(search: Search, trial, params: dict[str, Any], parties: list, parent: str) -> TrialRecord:
    """One trial: the config with ``params`` trained over ``parties`` in its own nested run, pruned if it lags."""
    t0 = time.perf_counter()
    cfg = search.trial_config(params)
    for party in parties:  # an in-process organisation answers by the trial's config (its local parameters)
        if isinstance(party, Party) and party.policy is not None:
            party.policy = PartyPolicy.from_config(cfg, party.name)
    tracker = Tracker(cfg)
    run_id = tracker.start_trial(parent, trial.number, params)
    try:
        coord = start_federation(cfg, parties)
        pruned: list[int] = []
        with progress.listening(search.pruning(trial, pruned)):
            train_rounds(coord, tracker, 1, cfg.training.rounds)
        receipt = coord.receipt()
        with tracker.writing("logging the trial's privacy receipt"):
            tracker.log_privacy(receipt.as_dict(), coord.notices, coord.dropped)
        early = bool(coord.stopped and not pruned and cfg.training.early_stopping_rounds)
        value = trial_value(coord.history, search.metric, early_stopped=early, higher_is_better=search.higher_is_better)
        record = TrialRecord(
            trial.number,
            dict(params),
            PRUNED if pruned else COMPLETE,
            value,
            coord.last_round,
            time.perf_counter() - t0,
            run_id,
            receipt.epsilon_total,
        )
        with tracker.writing("ending the trial's run"):
            tracker.finish_trial(record.state, value, coord.last_round)
        return record
    except BaseException as exc:
        tracker.fail(exc)
        raise


def privacy_over_trials(cfg: FederationConfig, records: list[TrialRecord]) -> dict[str, Any]:
    """What the search spent: each trial's epsilon and their sum (basic composition), or that no DP was on."""
    spent = [r.epsilon for r in records if r.epsilon is not None]
    out: dict[str, Any] = {
        "secure_aggregation": cfg.secure_aggregation,
        "mechanism": "none" if cfg.privacy.epsilon is None else "per trial",
        "trials": len(records),
    }
    if cfg.privacy.epsilon is not None:
        out.update(
            {
                "epsilon_budget_per_trial": cfg.privacy.epsilon,
                "epsilon_per_trial": [r.epsilon for r in records],
                "epsilon_total": float(sum(spent)),
                "delta_total": cfg.privacy.delta * len(spent),
                "covers": "histogram releases of every trial; the total adds the trials' epsilons and deltas "
                "(basic composition)",
            }
        )
    return out


@flow(name="federated-tuning", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=False)
def federated_tuning(
    config: str,
    trials: int | None = None,
    overrides: list[str] | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    """Search ``config``'s ``tune`` space with ``trials`` trials (default ``tune.trials``); return the summary.

    ``out`` is a YAML file for the best parameters (``fedmine run CONFIG --set @out``).
    """
    cfg = load_config(config, overrides)
    search = Search(str(config), cfg, list(overrides or []))
    search.check_space()
    assert cfg.tune is not None
    n_trials = trials if trials is not None else cfg.tune.trials
    if n_trials < 1:
        raise ConfigError(f"--trials {n_trials}: must be at least 1")
    if out:
        output_path(out, "--out")
    remote = [org for org, spec in cfg.organisations.items() if spec.endpoint]
    space = cfg.tune.space
    strategies = set(space["strategy"].choices or []) if "strategy" in space else {cfg.training.strategy}
    if remote and strategies - {"histogram"}:
        raise ConfigError(
            f"tune: {', '.join(remote)} answer at party servers, which train locally by their own config: "
            f"a search over the {', '.join(sorted(strategies - {'histogram'}))} strategy would not change them; "
            f"tune with training.strategy: histogram"
        )
    t0 = time.perf_counter()
    tracker = Tracker(cfg)
    tracker.start_tuning(tags={"fedmine.config": str(Path(config).resolve())})
    parties: list = []
    try:
        futures = [
            connect_party.submit(cfg, org) if spec.endpoint else _prepare.submit(cfg, org)
            for org, spec in cfg.organisations.items()
        ]
        parties = [f.result() for f in futures]
        for _ in range(n_trials):
            trial, params = search.ask()
            search.tell(trial, _run_trial(search, trial, params, parties, tracker.run_id))
        best = search.best()
        overlay = search.overlay_yaml(best.params) if best else None
        summary = {
            "run_id": tracker.run_id,
            "name": cfg.name,
            "metric": search.metric,
            "direction": "maximize" if search.higher_is_better else "minimize",
            "trials": [vars(r) for r in search.records],
            "best": vars(best) if best else None,
            "overrides": search.as_overrides(best.params) if best else [],
            "privacy": privacy_over_trials(cfg, search.records),
            "seconds": time.perf_counter() - t0,
        }
        with tracker.writing("logging the search"):
            tracker.log_tuning(summary, overlay)
            tracker.log_privacy(summary["privacy"], [], [])
        if out and overlay:
            Path(out).write_text(overlay)
        tracker.finish("FINISHED")
        return summary
    except BaseException as exc:
        tracker.fail(exc, config=config)
        raise
    finally:
        for party in parties:
            if hasattr(party, "close"):
                party.close()
