"""Per-organisation preparation: a subflow that runs inside the organisation.

The raw frame is loaded, harmonised and split here; only the party (holding
canonical rows it never sends) leaves the subflow.
"""

from __future__ import annotations

from prefect import flow
from prefect.futures import PrefectFuture

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
    return prepared(submit_preparation(cfg, org))


def submit_preparation(cfg: FederationConfig, org: str, *, after: PrefectFuture | None = None) -> list[PrefectFuture]:
    """The preparation's tasks, submitted to the running flow's task runner: [load, harmonise, party].

    :func:`prepared` waits for the party. Not for an organisation with
    ``compute:``. ``after``: a future the load waits for, so that organisations
    prepared in one process take turns.
    """
    wait = [] if after is None else [after]
    raw = load_source.with_options(task_run_name=f"load-source-{org}").submit(cfg, org, wait_for=wait)
    if cfg.partition == "vertical":  # its ids and its own columns; the rows are aligned later, privately
        return [raw, make_vertical_party.with_options(task_run_name=f"make-vertical-party-{org}").submit(raw, cfg, org)]
    data = harmonise_frame.with_options(task_run_name=f"harmonise-{org}").submit(raw, cfg, org)
    return [raw, data, make_party.with_options(task_run_name=f"make-party-{org}").submit(data, cfg, org)]


def prepared(chain: list[PrefectFuture]) -> Party:
    """The party at the end of a :func:`submit_preparation` chain; a failed step raises its own error."""
    for future in chain:  # in order: a step after a failed one never runs, so its result would say only that
        party = future.result()
    return party


def preparation_seconds(futures: list[PrefectFuture], submitted: float) -> dict[str, float]:
    """Wall seconds of a finished :func:`submit_preparation` chain: ``load`` and ``harmonise`` (mapping, split, party).

    ``submitted``: ``time.time()`` when the chain could start; each step
    ends when its task's final state was set.
    """
    ends = [f.state.timestamp.timestamp() for f in futures]
    return {"load": ends[0] - submitted, "harmonise": ends[-1] - ends[0]}


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
