"""Tasks of the federated profile: a party inside each organisation, the profile at the coordinator."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedmine.config import FederationConfig
from fedmine.schema import HarmonisedFrame
from fedmine.schema.profiler import FederatedProfile, ProfileParty, profile_parties


@task(name="make-profile-party", cache_policy=NO_CACHE)
def make_profile_party(data: HarmonisedFrame, cfg: FederationConfig, org: str) -> ProfileParty:
    """Hold the organisation's canonical rows in a party that answers with aggregates only."""
    return ProfileParty(org, data, cfg)


@task(name="profile", cache_policy=NO_CACHE)
def run_profile(cfg: FederationConfig, parties: list[ProfileParty]) -> FederatedProfile:
    """Shared grid, summed (masked when secure aggregation is on) counts, each organisation's own view."""
    return profile_parties(cfg, parties)


@task(name="record-profile", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def record_profile(cfg: FederationConfig, profile: FederatedProfile) -> str:
    """The profile run in MLflow: drift against the previous one, PSI metrics, the HTML report."""
    from fedmine.tracking import log_profile

    return log_profile(cfg, profile)
