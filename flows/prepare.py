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
    t0 = time.perf_counter()
    if cfg.organisations[org].compute is not None:
        party = prepare_on_cluster(cfg, org)
        party.prepare_seconds = {"load": time.perf_counter() - t0}  # read, mapped and split on its workers
        return party
    raw = load_source(cfg, org)
    t1 = time.perf_counter()
    if cfg.partition == "vertical":  # its ids and its own columns; the rows are aligned later, privately
        party = make_vertical_party(raw, cfg, org)
    else:
        party = make_party(harmonise_frame(raw, cfg, org), cfg, org)
    party.prepare_seconds = {"load": t1 - t0, "harmonise": time.perf_counter() - t1}
    return party


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
