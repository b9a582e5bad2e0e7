"""An organisation on a Dask cluster behind `fedmine party serve`: prepared by a Prefect flow on its cluster.

The party server's preparation runs its partitions' loads as Prefect tasks on
the organisation's cluster (the session's LocalCluster, reached by its
scheduler's address), the coordinator trains over Arrow Flight with mutual
TLS, and the model is the same bits as every organisation in one process.
"""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fedmine import connectors
from fedmine.config import load_config
from fedmine.coordinator.training import Coordinator
from fedmine.transport.certs import init_ca, issue
from tests.flows.test_distributed import free_port, start_party, stop
from tests.party.test_cluster import single_process, write_dataset

pytestmark = pytest.mark.slow


def test_party_serve_with_a_cluster_organisation_trains_the_single_process_model(
    prefect_harness, dask_cluster, tmp_path, store
):
    import os

    from prefect.settings import PREFECT_API_URL

    from fedmine.flows.train import federated_training

    certs = tmp_path / "certs"
    init_ca(certs, federation="dask-party")
    for org in ("bank", "shop"):
        issue(certs, org, kind="party")
    issue(certs, "coordinator", kind="coordinator")
    raw = {
        "name": "dask-party",
        "label": "default",
        "objective": "binary",
        "features": {
            "age": {},
            "debt": {},
            "income": {},
            "kind": {"type": "category", "categories": ["bronze", "silver", "gold"]},
            "region": {"type": "category", "categories": ["north", "south", "east", "west"]},
        },
        "organisations": {
            org: {
                "source": str(write_dataset(tmp_path / org, 700 + 150 * i, seed=i)),
                "rename": {"a": "age", "b": "debt", "c": "income", "label": "default"},
                "scale": {"income": 0.01},
            }
            for i, org in enumerate(("bank", "shop"))
        },
        "training": {"strategy": "histogram", "rounds": 4, "num_leaves": 7, "min_data_in_leaf": 5},
        "transport": {"certs": str(certs), "timeout_seconds": 60, "retries": 2},
        "tracking": {"uri": store},
    }
    simulated = tmp_path / "simulated.yaml"
    simulated.write_text(yaml.safe_dump(raw, sort_keys=False))
    raw["organisations"]["bank"]["compute"] = {"dask": dask_cluster.scheduler.address, "partition_rows": 120}
    raw["organisations"]["bank"]["endpoint"] = f"grpc+tls://127.0.0.1:{free_port()}"
    served = tmp_path / "served.yaml"
    served.write_text(yaml.safe_dump(raw, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    seen = []
    bank = start_party(served, "bank", env, seen=seen)
    try:
        summary = federated_training(str(served))
    finally:
        stop([bank])
    n_parts = len(connectors.plan(raw["organisations"]["bank"]["source"], partition_rows=120))
    assert n_parts >= 4
    assert f"party bank: {n_parts} partitions on Dask {dask_cluster.scheduler.address}, dashboard http" in "".join(seen)

    cfg = load_config(simulated)
    coord = Coordinator(cfg, [single_process(cfg, "bank"), single_process(cfg, "shop")])
    coord.start()
    for r in range(1, cfg.training.rounds + 1):
        coord.run_round(r)
    with open(summary["model_file"]) as fh:
        assert fh.read() == coord.model_text()

    notes = summary["organisations"]["bank"]["notes"]
    assert notes[0].startswith("local-only baseline skipped: organisation bank holds its rows on a Dask cluster")
    client = MlflowClient(store)
    runs = client.search_runs(
        [client.get_run(summary["run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'",
    )
    tags = {r.data.tags.get("fedmine.organisation", r.info.run_name): r.data.tags for r in runs}
    assert any("fedmine.baseline.notice" in t for t in tags.values())

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:
        loads = prefect.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["load-partitions"])))
        assert loads and loads[0].state.is_completed()
        tasks = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[loads[0].id])))
    names = sorted(t.name for t in tasks)
    assert names == sorted(
        f"load-bank-partition-{i}" for i in range(n_parts)
    )  # one Prefect task per partition, on the cluster
    assert all(t.state.is_completed() for t in tasks)
