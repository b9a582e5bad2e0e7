"""The federated profile flow: schedule it to watch each organisation's data drift.

Recipe: each organisation is prepared inside it with the training's own
subflow (load, harmonise, split: its rows stay there) when it has a
``source``, or reached at its party server when it has an ``endpoint``; then
the parties answer the profile's calls of the protocol table with aggregates
only, and the profile run is recorded in MLflow (drift against the previous
profile run, PSI flags, HTML report).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from fedmine.config import FederationConfig, load_config
from fedmine.flows.prepare import prepare_organisation
from fedmine.party.organisation import Party
from fedmine.tasks.profiling import record_profile, run_profile
from fedmine.tasks.rounds import connect_party


@task(name="prepare-profile", cache_policy=NO_CACHE, task_run_name="prepare-profile-{org}")
def _prepare(cfg: FederationConfig, org: str) -> Party:
    return prepare_organisation(cfg, org)


@flow(name="federated-profile", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=False)
def federated_profile(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Profile the federation in ``config``; return the run id, the flags and the drift."""
    cfg = load_config(config, overrides)
    cfg.privacy.check_outside_budget("profile")  # before any organisation's rows are read
    futures = [
        connect_party.submit(cfg, org) if spec.endpoint else _prepare.submit(cfg, org)
        for org, spec in cfg.organisations.items()
    ]
    parties = [f.result() for f in futures]
    try:
        profile = run_profile(cfg, parties)
    finally:
        for party in parties:
            if hasattr(party, "close"):  # a party server's client
                party.close()
    run_id = record_profile(cfg, profile)
    return {"run_id": run_id, "flags": profile.flags, "drift": profile.drift}
