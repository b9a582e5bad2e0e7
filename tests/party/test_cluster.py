"""An organisation whose rows are partitions on a real Dask LocalCluster: the same model as one process, bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedmine import connectors
from fedmine.config import config_from_dict
from fedmine.coordinator.training import Coordinator
from fedmine.errors import ConfigError
from fedmine.party.cluster import ClusterParty
from fedmine.party.organisation import Party
from fedmine.schema import harmonise

REGIONS = ["north", "south", "east", "west"]


def write_dataset(folder, n, seed, *, row_group_size=150):
    """A hive-partitioned Parquet folder (region=.../part.parquet), several row groups per file."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    x[rng.random(n) < 0.07, 0] = np.nan
    kind = rng.choice(["gold", "silver", "bronze"], n)
    region = rng.choice(REGIONS, n)
    f = np.nan_to_num(x[:, 0]) - x[:, 1] + 0.7 * (kind == "gold") + 0.4 * (region == "east")
    y = (rng.random(n) < 1 / (1 + np.exp(-f))).astype(np.int64)
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2] * 100, "kind": kind, "region": region, "label": y})
    pq.write_to_dataset(
        pa.Table.from_pandas(frame, preserve_index=False),
        str(folder),
        partition_cols=["region"],
        row_group_size=row_group_size,
    )
    return folder


def federation(tmp_path, orgs, *, cluster_orgs, rounds=4, **training):
    organisations = {}
    for i, org in enumerate(orgs):
        folder = write_dataset(tmp_path / org, 700 + 150 * i, seed=i)
        spec = {
            "source": str(folder),
            "rename": {"a": "age", "b": "debt", "c": "income", "label": "default"},
            "scale": {"income": 0.01},
        }
        if org in cluster_orgs:
            spec["compute"] = {"dask": "local", "workers": 2, "partition_rows": 120}
        organisations[org] = spec
    return config_from_dict(
        {
            "name": "dask-party",
            "label": "default",
            "objective": "binary",
            "features": {
                "age": {},
                "debt": {},
                "income": {},
                "kind": {"type": "category", "categories": ["bronze", "silver", "gold"]},
                "region": {"type": "category", "categories": REGIONS},
            },
            "organisations": organisations,
            "training": {
                "strategy": "histogram",
                "rounds": rounds,
                "num_leaves": 7,
                "min_data_in_leaf": 5,
                "validation_fraction": 0.2,
                "bagging_fraction": 0.8,
                "bagging_freq": 1,
                **training,
            },
        }
    )


def single_process(cfg, org):
    spec = cfg.organisations[org]
    frame = connectors.load(spec.source, spec.read, base_dir=cfg.base_dir, org=org)
    return Party.for_organisation(cfg, org, harmonise(frame, cfg, org))


def train(cfg, parties):
    coord = Coordinator(cfg, parties)
    coord.start()
    history = []
    for r in range(1, cfg.training.rounds + 1):  # metrics and bytes of every round (not its seconds)
        history.append({k: v for k, v in coord.run_round(r).flat().items() if "seconds" not in k})
    return coord.model_text(), history


@pytest.mark.parametrize("n_orgs", [1, 3])
def test_cluster_party_trains_the_single_process_model(tmp_path, dask_cluster, n_orgs):
    orgs = ["bank", "shop", "telco"][:n_orgs]
    cfg = federation(tmp_path, orgs, cluster_orgs={"bank"})
    assert cfg.secure_aggregation is (n_orgs > 1)
    cluster = ClusterParty.for_organisation(cfg, "bank", client=dask_cluster)
    assert len(cluster.partitions_.plans) >= 4
    assert len(set(cluster.partitions_.workers())) == 2  # partitions on both worker processes
    alone = single_process(cfg, "bank")
    assert cluster.row_counts()["n_rows"] == alone.row_counts()["n_rows"]
    assert np.array_equal(cluster.label_totals(), alone.label_totals())
    others = [single_process(cfg, o) for o in orgs[1:]]
    text_cluster, hist_cluster = train(cfg, [cluster, *others])
    text_alone, hist_alone = train(cfg, [alone, *[single_process(cfg, o) for o in orgs[1:]]])
    assert text_cluster is not None and text_cluster.count("Tree=") == cfg.training.rounds
    assert text_cluster == text_alone
    assert hist_cluster == hist_alone  # validation metrics of every round, global and the organisation's own


def test_compute_key_is_checked(tmp_path):
    cfg = federation(tmp_path, ["bank"], cluster_orgs={"bank"})
    raw = cfg.model_dump(mode="json", by_alias=True)
    raw["training"]["strategy"] = "bagging"
    with pytest.raises(
        ConfigError,
        match=r"^<config>: organisations\.bank\.compute: an organisation on a Dask cluster trains with "
        r"training\.strategy histogram, not bagging \(its rows never gather in one process for LightGBM\)$",
    ):
        config_from_dict(raw)
    raw["training"]["strategy"] = "histogram"
    raw["organisations"]["bank"]["compute"] = {"dask": "spark://x:1"}
    with pytest.raises(
        ConfigError,
        match=r"organisations\.bank\.compute\.dask: 'spark://x:1' is not allowed; allowed: local, or tcp://host:port",
    ):
        config_from_dict(raw)
    raw["organisations"]["bank"]["compute"] = {"dask": "tcp://scheduler:8786", "workers": 4}
    with pytest.raises(
        ConfigError, match=r"workers sets up a local cluster \(dask: local\); tcp://scheduler:8786 has its own workers"
    ):
        config_from_dict(raw)


def kill_on(party, call, nth, *, partition=0):
    """Kill (SIGKILL) the worker process holding ``partition`` when the party receives its ``nth`` ``call``."""
    import os
    import signal

    original, seen = party.call, {"n": 0}

    def call_then_kill(name, *args, **kwargs):
        if name == call:
            seen["n"] += 1
            if seen["n"] == nth:
                os.kill(party.partitions_.workers()[partition], signal.SIGKILL)
        return original(name, *args, **kwargs)

    party.call = call_then_kill
    return seen


@pytest.mark.slow
def test_a_worker_killed_mid_tree_is_rebuilt_from_the_source_and_the_model_is_unchanged(tmp_path, dask_cluster):
    cfg = federation(tmp_path, ["bank", "shop"], cluster_orgs={"bank"}, rounds=5)
    cluster = ClusterParty.for_organisation(cfg, "bank", client=dask_cluster)
    before = cluster.partitions_.workers()
    seen = kill_on(cluster, "histograms", 9)  # in round 2 or 3, between two splits of a tree
    text_killed, hist_killed = train(cfg, [cluster, single_process(cfg, "shop")])
    assert seen["n"] > 9
    lost = [i for i, pid in enumerate(before) if pid == before[0]]
    assert sorted(cluster.partitions_.rebuilt_) == lost  # every partition of the killed worker, no other
    after = cluster.partitions_.workers()
    assert all(after[i] != before[0] for i in lost)
    text_alone, hist_alone = train(cfg, [single_process(cfg, "bank"), single_process(cfg, "shop")])
    assert text_killed == text_alone
    assert hist_killed == hist_alone


@pytest.mark.slow
def test_a_partition_that_cannot_be_rebuilt_fails_the_party_in_one_line(tmp_path, dask_cluster):
    import os

    from fedmine.errors import PartyError

    cfg = federation(tmp_path, ["bank", "shop"], cluster_orgs={"bank"}, rounds=3)
    cluster = ClusterParty.for_organisation(cfg, "bank", client=dask_cluster)
    part = cluster.partitions_.plans[0].part
    os.remove(part.path)  # the source lost a file since the training started
    kill_on(cluster, "histograms", 3)
    with pytest.raises(
        PartyError, match=rf"^party bank: partition 0 \({part.label}\)(, partition \d+ \([^)]*\))* lost with its worker"
    ) as info:
        train(cfg, [cluster, single_process(cfg, "shop")])
    assert "\n" not in str(info.value) and "file not found" in str(info.value)


def test_dp_noise_is_one_share_on_the_sum_the_single_process_draws(tmp_path, dask_cluster):
    from fedmine.gbdt import DPConfig
    from fedmine.gbdt.booster import train as train_engine
    from fedmine.gbdt.state import EngineGroup

    cfg = federation(tmp_path, ["bank"], cluster_orgs={"bank"}, rounds=3)
    params = cfg.training.engine_params(cfg.objective, cfg.num_class, "auc")
    models = []
    for party in (ClusterParty.for_organisation(cfg, "bank", client=dask_cluster), single_process(cfg, "bank")):
        group = EngineGroup([party.engine_state()], n_threads=1)
        model = train_engine(group, params, categorical=[3, 4], dp=DPConfig(), noise_multiplier=2.0, noise_seed=11)
        models.append(model)
    assert len(models[0].trees) == 3
    for a, b in zip(*(m.trees for m in models)):
        assert np.array_equal(a.nodes, b.nodes)  # the same noise, drawn once from the same rows' stream


def test_under_epsilon_the_cluster_party_sums_its_partitions_parts_of_the_dp_label_totals(tmp_path, dask_cluster):
    cfg = federation(tmp_path, ["bank"], cluster_orgs={"bank"}, rounds=2)
    cfg.objective = "regression"  # the 0/1 labels as real values, clipped to the declared range
    cfg.privacy.epsilon, cfg.privacy.gradient_bound = 1.0, 1.0
    cfg.privacy.label_min, cfg.privacy.label_max = -1.0, 0.5
    cluster = ClusterParty.for_organisation(cfg, "bank", client=dask_cluster)
    alone = single_process(cfg, "bank")
    dp = cluster.label_totals(label_range=(-1.0, 0.5))
    assert np.array_equal(dp, alone.label_totals(label_range=(-1.0, 0.5)))
    positives = int((alone._data.y_train == 1).sum())
    assert dp[2] == positives * 0.5 * 2**12  # each 1 clipped to 0.5, in units of 2**-12 (|label| <= 1)
