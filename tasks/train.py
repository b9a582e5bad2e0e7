"""Tasks of the coordinator: start the federation, run a round, train the baselines."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedmine.config import FederationConfig
from fedmine.federation.coordinator import Coordinator, RoundResult
from fedmine.federation.party import Party


@task(name="connect-party", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 10],
      task_run_name="connect-{org}")
def connect_party(cfg: FederationConfig, org: str):
    """The organisation's party server at its endpoint, over mutual TLS; it must answer ``describe``."""
    from fedmine.federation.remote import connect

    return connect(cfg, org)


@task(name="start-federation", cache_policy=NO_CACHE)
def start_federation(cfg: FederationConfig, parties: list[Party]) -> Coordinator:
    """Describe the parties, agree the base score, start every party."""
    coord = Coordinator(cfg, parties)
    coord.start()
    return coord


@task(name="round", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1,
      task_run_name="round-{round_id}")
def run_round(coord: Coordinator, round_id: int) -> RoundResult:
    """One boosting round over the parties, then validation metrics."""
    return coord.run_round(round_id)


@task(name="local-baselines", cache_policy=NO_CACHE, retries=1)
def local_baselines(coord: Coordinator) -> dict:
    """Each organisation alone, same parameters: the baseline the federation must beat."""
    return coord.local_baselines()
