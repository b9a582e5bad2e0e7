"""The federated profile flow: schedule it to watch each organisation's data drift.

Recipe: inside each organisation (a subflow each, concurrently) load the
source and harmonise it with the training's own tasks, keeping the rows in a
profile party; then profile the parties together and record the profile run
in MLflow (drift against the previous profile run, PSI flags, HTML report).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from fedmine.config import FederationConfig, load_config
from fedmine.schema.profiler import ProfileParty
from fedmine.tasks.data import harmonise_frame, load_source
from fedmine.tasks.profiling import make_profile_party, record_profile, run_profile


@flow(name="profile-organisation", flow_run_name="profile-{org}", validate_parameters=False)
def profile_organisation(cfg: FederationConfig, org: str) -> ProfileParty:
    """Load and harmonise the organisation's rows; only the party (answering with aggregates) leaves."""
    raw = load_source(cfg, org)
    canonical = harmonise_frame(raw, cfg, org)
    return make_profile_party(canonical, cfg, org)


@task(name="prepare-profile", cache_policy=NO_CACHE, task_run_name="prepare-profile-{org}")
def _prepare(cfg: FederationConfig, org: str) -> ProfileParty:
    return profile_organisation(cfg, org)


@flow(name="federated-profile", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=False)
def federated_profile(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Profile the federation in ``config``; return the run id, the flags and the drift."""
    cfg = load_config(config, overrides)
    futures = [_prepare.submit(cfg, org) for org in cfg.organisations]
    parties = [f.result() for f in futures]
    profile = run_profile(cfg, parties)
    run_id = record_profile(cfg, profile)
    return {"run_id": run_id, "flags": profile.flags, "drift": profile.drift}
