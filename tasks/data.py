"""Tasks that run inside one organisation: load, harmonise, split into a party."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from fedmine import connectors
from fedmine.config import FederationConfig
from fedmine.party.organisation import Party
from fedmine.schema import HarmonisedFrame, harmonise


@task(
    name="load-source",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=lambda task, run, state: _worth_retrying(state),
)
def load_source(cfg: FederationConfig, org: str) -> pd.DataFrame:
    """The organisation's raw rows from its source (never leaves the organisation's subflow)."""
    spec = cfg.organisations[org]
    if spec.source is None:
        from fedmine.errors import ConfigError

        raise ConfigError(
            f"organisations.{org}.source: not set; the organisation's data is read where it lives "
            f"(its party server has it); here only organisations with a source can be prepared"
        )
    return connectors.load(spec.source, spec.read, base_dir=cfg.base_dir, org=org)


@task(name="harmonise", cache_policy=NO_CACHE)
def harmonise_frame(frame: pd.DataFrame, cfg: FederationConfig, org: str) -> HarmonisedFrame:
    """Map the raw rows onto the canonical schema and check them."""
    return harmonise(frame, cfg, org)


@task(name="make-party", cache_policy=NO_CACHE)
def make_party(data: HarmonisedFrame, cfg: FederationConfig, org: str) -> Party:
    """Split train/validation with the seed and hold the rows in a party that enforces the organisation's policy."""
    return Party.for_organisation(cfg, org, data)


@task(name="plan-partitions", cache_policy=NO_CACHE)
def plan_partitions(cfg: FederationConfig, org: str) -> tuple[Any, Any]:
    """The organisation's partitions planned from its source's metadata, its Dask cluster reached, an actor each.

    Returns the party's :class:`~fedmine.party.partitions.PartitionedState`
    (its actors placed on the workers, nothing read yet) and the LocalCluster
    started for it (None for a scheduler's address).
    """
    from prefect import get_run_logger

    from fedmine.party.cluster import ClusterParty

    state, cluster = ClusterParty.plan(cfg, org)
    try:
        state.place()
    except BaseException:
        ClusterParty.stop(state, cluster)
        raise
    get_run_logger().info(
        "organisation %s: %d partitions on %s (scheduler %s); Dask dashboard %s",
        org,
        len(state.plans),
        cfg.organisations[org].compute.dask,  # type: ignore[union-attr]
        state.client.scheduler.address,
        state.client.dashboard_link,
    )
    return state, cluster


@task(name="load-partition", cache_policy=NO_CACHE, task_run_name="load-{org}-partition-{index}")
def load_partition(actor: Any, org: str, index: int) -> dict[str, Any]:
    """One partition read, harmonised and split on the worker holding it (this task runs on the cluster)."""
    return actor.load().result()


@task(name="make-cluster-party", cache_policy=NO_CACHE)
def make_cluster_party(cfg: FederationConfig, org: str, state: Any, cluster: Any, infos: list) -> Party:
    """The organisation's party over its loaded partitions (it enforces the organisation's policy)."""
    from fedmine.party.cluster import ClusterParty

    return ClusterParty.from_partitions(cfg, org, state, infos, cluster=cluster)


@task(name="make-vertical-party", cache_policy=NO_CACHE)
def make_vertical_party(frame: pd.DataFrame, cfg: FederationConfig, org: str) -> Party:
    """Vertical federation: the organisation's ids read and normalised, its own features harmonised, in a party."""
    from fedmine.party.vertical import vertical_party

    return vertical_party(cfg, org, frame)


def _worth_retrying(state) -> bool:
    """A source that could not be reached is tried again; bad input (a missing file, a bad scheme) is not."""
    from fedmine.errors import ConnectorError, FedmineError

    try:
        state.result()
    except ConnectorError as exc:
        return exc.transient
    except FedmineError:
        return False
    except Exception:
        return True
    return False
