"""Tasks of the coordinator: start the federation, run rounds, train the baselines."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedmine import progress
from fedmine.config import FederationConfig
from fedmine.coordinator.training import Coordinator
from fedmine.coordinator.vertical import VerticalCoordinator
from fedmine.party.organisation import Party
from fedmine.tracking import Tracker


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
def start_federation(cfg: FederationConfig, parties: list[Party], resume: dict | None = None) -> Coordinator:
    """Describe the parties, agree the base score, start every party (``resume``: a checkpoint's state)."""
    coord = Coordinator(cfg, parties)
    coord.start(resume=resume)
    return coord


@task(name="private-set-intersection", cache_policy=NO_CACHE)
def intersect(cfg: FederationConfig, parties: list[Party]) -> VerticalCoordinator:
    """Vertical federation: the organisations find their shared customers; the coordinator learns how many."""
    coord = VerticalCoordinator(cfg, parties)
    coord.intersect()
    return coord


@task(name="resume-vertical", cache_policy=NO_CACHE)
def resume_vertical(cfg: FederationConfig, parties: list[Party], state: dict) -> VerticalCoordinator:
    """A vertical training taken up from a checkpoint: every organisation reads its own saved state back."""
    coord = VerticalCoordinator(cfg, parties)
    coord.resume(state)
    return coord


@task(name="start-vertical", cache_policy=NO_CACHE)
def start_vertical(coord: VerticalCoordinator) -> VerticalCoordinator:
    """The label holder's key pair, the joined bins (each owner bins its own features) and the initial score."""
    coord.start()
    return coord


#: A rounds task runs rounds until this many seconds have passed (then the next task goes on): Prefect's
#: cost is paid per task, not per round, and the Prefect UI still shows the training's progress.
ROUNDS_TASK_SECONDS = 2.0


@task(name="rounds", cache_policy=NO_CACHE, task_run_name="rounds-from-{first}")
def run_rounds(coord: Coordinator | VerticalCoordinator, tracker: Tracker, first: int, last: int) -> int:
    """Boosting rounds ``first``, ``first + 1``, ... over the parties, each an MLflow step; the last one run.

    Each round grows the model (the coordinator's strategy), evaluates it, and
    is logged with its checkpoint. The task ends after ``last``, when the
    training stops, or after :data:`ROUNDS_TASK_SECONDS`.

    Not retried by Prefect: a blind retry would grow a round twice. Party
    failures are handled inside the coordinator: a party at an endpoint that
    comes back rejoins and the round is grown again from its start
    (``transport.rejoin_seconds``), or the party is left out
    (``privacy.on_party_failure: continue``), or the run fails.
    """
    t0 = time.monotonic()
    r = first
    while True:
        result = coord.run_round(r)
        with tracker.writing(f"logging round {r}"):
            tracker.log_round(r, result.flat(), result.org_metrics)
            # vertical: written with every round, so the label holder's saved rounds always include it
            tracker.save_checkpoint(*coord.checkpoint(), now=isinstance(coord, VerticalCoordinator))
        if progress.report(r, last, result.global_metrics):
            coord.stopped = True  # a listener asked to stop here (a pruned tuning trial)
        if r >= last or coord.stopped or time.monotonic() - t0 >= ROUNDS_TASK_SECONDS:
            return r
        r += 1


def train_rounds(coord: Coordinator, tracker: Tracker, first: int, last: int) -> None:
    """Rounds ``first`` to ``last`` in :func:`run_rounds` tasks until the training stops; the last written."""
    r = first
    while r <= last and not coord.stopped:
        r = run_rounds(coord, tracker, r, last) + 1
    with tracker.writing("logging the last rounds"):
        tracker.flush()


@task(name="local-baselines", cache_policy=NO_CACHE, retries=1)
def local_baselines(coord: Coordinator | VerticalCoordinator) -> dict:
    """Each organisation alone, same parameters: the baseline the federation must beat."""
    return coord.local_baselines()
