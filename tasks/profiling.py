"""Tasks of the federated profile at the coordinator: the profile over the parties, its MLflow run.

The parties are the training's: prepared inside each organisation
(flows/prepare.py) or reached at its party server (``connect-party``).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedmine.config import FederationConfig
from fedmine.schema.profiler import FederatedProfile, profile_parties


@task(name="profile", cache_policy=NO_CACHE)
def run_profile(cfg: FederationConfig, parties: list[Any]) -> FederatedProfile:
    """Shared grid, summed (masked when secure aggregation is on) counts, each organisation's own view."""
    return profile_parties(cfg, parties)


@task(name="record-profile", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def record_profile(cfg: FederationConfig, profile: FederatedProfile) -> str:
    """The profile run in MLflow: drift against the previous one, PSI metrics, the HTML report."""
    from fedmine.tracking import log_profile

    return log_profile(cfg, profile)
