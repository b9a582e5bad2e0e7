"""Tasks of the coordinator: start the federation, run a round, train the baselines."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedmine.config import FederationConfig
from fedmine.coordinator.training import Coordinator, RoundResult
from fedmine.party.organisation import Party


@task(
    name="connect-party",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[2, 5, 10],
    task_run_name="connect-{org}",
)
def connect_party(cfg: FederationConfig, org: str):
    """The organisation's party server at its endpoint, over mutual TLS; it must answer ``describe``."""
    from fedmine.coordinator.client import connect

    return connect(cfg, org)


@task(name="start-federation", cache_policy=NO_CACHE)
def start_federation(cfg: FederationConfig, parties: list[Party]) -> Coordinator:
    """Describe the parties, agree the base score, start every party."""
    coord = Coordinator(cfg, parties)
    coord.start()
    return coord


@task(name="round", cache_policy=NO_CACHE, task_run_name="round-{round_id}")
def run_round(coord: Coordinator, round_id: int) -> RoundResult:
    """One boosting round over the parties, then validation metrics.

    Not retried by Prefect: a blind retry would grow the round twice. Party
    failures are handled inside the coordinator: a party at an endpoint that
    comes back rejoins and the round is grown again from its start
    (``transport.rejoin_seconds``), or the party is left out
    (``privacy.on_party_failure: continue``), or the run fails.
    """
    return coord.run_round(round_id)


@task(name="local-baselines", cache_policy=NO_CACHE, retries=1)
def local_baselines(coord: Coordinator) -> dict:
    """Each organisation alone, same parameters: the baseline the federation must beat."""
    return coord.local_baselines()
