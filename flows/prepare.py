"""Per-organisation preparation: a subflow that runs inside the organisation.

The raw frame is loaded, harmonised and split here; only the party (holding
canonical rows it never sends) leaves the subflow.
"""

from __future__ import annotations

import time

from prefect import flow

from fedmine.config import FederationConfig
from fedmine.party.organisation import Party
from fedmine.tasks.data import (
    harmonise_frame,
    load_partition,
    load_source,
    make_cluster_party,
    make_party,
    make_vertical_party,
    plan_partitions,
)


@flow(name="prepare-organisation", flow_run_name="prepare-{org}", validate_parameters=False)
def prepare_organisation(cfg: FederationConfig, org: str) -> Party:
    """Load the organisation's source, map it onto the canonical schema, split it.

    An organisation with ``compute:`` reads, maps and splits its source in
    partitions on its Dask cluster's workers instead.
    """
    if cfg.organisations[org].compute is not None:
        return prepare_on_cluster(cfg, org)
    return prepare_here(cfg, org)[0]


def prepare_here(cfg: FederationConfig, org: str) -> tuple[Party, dict[str, float]]:
    """The preparation's tasks, run in turn in the calling flow: the party and the seconds of each step.

    The steps are ``load`` and ``harmonise``; ``harmonise`` counts the mapping, the split and the party. Each frame is
    dropped as soon as the next step has what it needs (the tasks are called,
    not submitted: no future keeps a frame alive for the rest of the run).
    Not for an organisation with ``compute:``.
    """
    t0 = time.perf_counter()
    raw = load_source.with_options(task_run_name=f"load-source-{org}")(cfg, org)
    t1 = time.perf_counter()
    if cfg.partition == "vertical":  # its ids and its own columns; the rows are aligned later, privately
        party = make_vertical_party.with_options(task_run_name=f"make-vertical-party-{org}")(raw, cfg, org)
    else:
        data = harmonise_frame.with_options(task_run_name=f"harmonise-{org}")(raw, cfg, org)
        del raw
        party = make_party.with_options(task_run_name=f"make-party-{org}")(data, cfg, org)
    return party, {"load": t1 - t0, "harmonise": time.perf_counter() - t1}


def prepare_on_cluster(cfg: FederationConfig, org: str) -> Party:
    """An organisation with ``compute:``: its partitions planned, each loaded by a task on its own Dask cluster.

    The partition tasks run in a subflow whose task runner is the cluster's
    (prefect-dask), so the Prefect UI shows one task per partition; the party
    holds the partitions afterwards (in the workers' memory).
    """
    from prefect_dask import DaskTaskRunner

    from fedmine.party.cluster import ClusterParty

    state, cluster = plan_partitions(cfg, org)
    try:
        runner = DaskTaskRunner(address=state.client.scheduler.address)
        infos = load_partitions.with_options(task_runner=runner)(state.actors(), org)
    except BaseException:
        ClusterParty.stop(state, cluster)
        raise
    return make_cluster_party(cfg, org, state, cluster, infos)


@flow(name="load-partitions", flow_run_name="load-{org}-partitions", validate_parameters=False)
def load_partitions(actors: list, org: str) -> list[dict]:
    """Every partition of ``org`` loaded by its own task, on the cluster the flow's task runner names."""
    futures = [load_partition.submit(actor, org, i) for i, actor in enumerate(actors)]
    return [f.result() for f in futures]
