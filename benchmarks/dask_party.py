"""An organisation on a 2-worker Dask LocalCluster against the same organisation in one process.

Usage::

    python benchmarks/dask_party.py [--rows 4000000] [--features 28] [--others 200000] [--rounds 10]
        [--workers 2] [--partition-rows 1000000] [--workdir DIR] [--keep]

A 3-organisation federation (histogram strategy, secure aggregation on, 20%
validation rows, 31 leaves, 255 bins): ``big`` holds ``--rows`` rows x
``--features`` float features as a folder of Parquet files (hive-partitioned
by a ``shard`` key, row groups of 250,000 rows); ``left`` and ``right`` hold
``--others`` rows each as Parquet files, in one process in both runs. Each
run is its own process, side by side in one invocation:

1. ``single``: ``big`` read with ``connectors.load``, harmonised and split in
   the process, as ``fedmine run`` prepares it;
2. ``dask``: ``big`` with ``compute: {dask: local, workers: 2}``: read,
   harmonised and split in partitions of at most ``--partition-rows`` rows on
   the workers, which hold them across rounds.

Both train the same rounds with the coordinator in the run's process. Printed:
preparation and training seconds and their ratio (dask / single), peak RSS
of the run's process and of each worker (``getrusage`` max RSS), the ratio of
each worker's peak to the single process's, whether the two models are the
same bits, and per-partition rates (rows per second of histogram work,
seconds per round trip) that docs/scale.md extrapolates from. The machine's
load (``uptime``) is printed beside the figures: the cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from histogram_vs_lightgbm import make_data  # noqa: E402

GOAL_MEMORY = 0.6  # each worker's peak RSS at most this times the single process's
GOAL_TIME = 1.3  # the dask run's time at most this times the single process's
ROW_GROUP = 250_000


def write_data(folder: str, *, rows: int, features: int, others: int) -> None:
    """``big/shard=K/part.parquet`` (8 shards) and ``left.parquet``, ``right.parquet``; written a shard at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"f{j}" for j in range(features)]
    shards = 8
    for k, chunk in enumerate(np.array_split(np.arange(rows), shards)):
        X, y = make_data(len(chunk), features, seed=100 + k)
        table = pa.table({**{n: X[:, j] for j, n in enumerate(names)}, "label": y})
        os.makedirs(os.path.join(folder, "big", f"shard={k}"), exist_ok=True)
        pq.write_table(table, os.path.join(folder, "big", f"shard={k}", "part.parquet"), row_group_size=ROW_GROUP)
    for i, org in enumerate(("left", "right")):
        X, y = make_data(others, features, seed=i + 1)
        table = pa.table({**{n: X[:, j] for j, n in enumerate(names)}, "label": y})
        pq.write_table(table, os.path.join(folder, f"{org}.parquet"), row_group_size=ROW_GROUP)


def config(folder: str, *, features: int, rounds: int, dask: bool, workers: int, partition_rows: int):
    from fedmine.config import config_from_dict

    big: dict = {"source": os.path.join(folder, "big")}
    if dask:
        big["compute"] = {"dask": "local", "workers": workers, "partition_rows": partition_rows}
    return config_from_dict(
        {
            "name": "dask-bench",
            "label": "label",
            "objective": "binary",
            "features": {f"f{j}": {} for j in range(features)},
            "organisations": {
                "big": big,
                "left": {"source": os.path.join(folder, "left.parquet")},
                "right": {"source": os.path.join(folder, "right.parquet")},
            },
            "training": {
                "strategy": "histogram",
                "rounds": rounds,
                "num_leaves": 31,
                "validation_fraction": 0.2,
            },
        }
    )


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args) -> dict:
    """One run (in this process): prepare the three parties, train, report figures as JSON."""
    from fedmine import connectors
    from fedmine.coordinator.training import Coordinator
    from fedmine.party.organisation import Party
    from fedmine.schema import harmonise

    dask = args.run == "dask"
    cfg = config(
        args.workdir,
        features=args.features,
        rounds=args.rounds,
        dask=dask,
        workers=args.workers,
        partition_rows=args.partition_rows,
    )

    def single(org: str) -> Party:
        spec = cfg.organisations[org]
        frame = connectors.load(spec.source, spec.read, org=org)
        return Party.for_organisation(cfg, org, harmonise(frame, cfg, org))

    parties = [single("left"), single("right")]
    t1 = time.perf_counter()
    if dask:
        from fedmine.party.cluster import ClusterParty, connect

        client, cluster = connect(cfg.organisations["big"].compute, org="big")
        t_ready = time.perf_counter()
        big = ClusterParty.for_organisation(cfg, "big", client=client)
        big.cluster = cluster  # closed with the party
        big.prepare_seconds_ = time.perf_counter() - t_ready
    else:
        big = single("big")
    t2 = time.perf_counter()
    cluster_seconds = 0.0
    if dask:  # the cluster's start is counted apart: an organisation's cluster usually runs already
        cluster_seconds = t2 - t1 - big.prepare_seconds_
        t1 = t2 - big.prepare_seconds_
    calls: dict[str, float] = {}  # seconds the coordinator waited for big, per call of the protocol table
    answer = big.call

    def timed(name, *a, **k):
        t = time.perf_counter()
        try:
            return answer(name, *a, **k)
        finally:
            calls[name] = calls.get(name, 0.0) + time.perf_counter() - t

    big.call = timed
    coord = Coordinator(cfg, [big, *parties])
    coord.start()
    exchanges = 0
    for r in range(1, cfg.training.rounds + 1):
        flat = coord.run_round(r).flat()
        exchanges += flat.get("train/histogram_exchanges", flat.get("histogram_exchanges", 0))
    text = coord.model_text() or ""
    t3 = time.perf_counter()
    out = {
        "prepare_seconds": t2 - t1,
        "cluster_start_seconds": cluster_seconds,
        "train_seconds": t3 - t2,
        "exchanges_per_round": exchanges / cfg.training.rounds,
        "process_peak_mb": maxrss_mb(),
        "big_calls": calls,
        "bytes_from_big": next(link.bytes_sent for link in coord.links if link.name == "big"),
    }
    with open(os.path.join(args.workdir, f"model-{args.run}.txt"), "w") as fh:
        fh.write(text)
    if dask:
        out["worker_peak_mb"] = sorted(big.client.run(maxrss_mb).values())
        out["partitions"] = big.partitions_.stats()
        big.close()
    return out


def side_by_side(args) -> int:
    workdir = args.workdir or tempfile.mkdtemp(prefix="fedmine-dask-bench-")
    os.makedirs(workdir, exist_ok=True)
    t = time.perf_counter()
    if not os.path.exists(os.path.join(workdir, "big")):
        write_data(workdir, rows=args.rows, features=args.features, others=args.others)
    print(f"data: {args.rows:,} rows x {args.features} features in big, {args.others:,} in left and right "
          f"({time.perf_counter() - t:.1f} s to write) in {workdir}")  # fmt: skip
    common = [
        *("--rows", str(args.rows), "--features", str(args.features), "--others", str(args.others)),
        *("--rounds", str(args.rounds), "--workers", str(args.workers)),
        *("--partition-rows", str(args.partition_rows), "--workdir", workdir),
    ]
    results = {}
    for name in ("single", "dask"):
        cmd = [sys.executable, os.path.abspath(__file__), "--run", name, *common]
        load = os.getloadavg()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{name} run failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        results[name]["load"] = load
    s, d = results["single"], results["dask"]
    models = []
    for name in ("single", "dask"):
        with open(os.path.join(workdir, f"model-{name}.txt")) as fh:
            models.append(fh.read())
    same = models[0] == models[1]
    print(f"{'':28}{'single':>12}{'dask':>12}{'ratio':>9}")
    for key in ("prepare_seconds", "train_seconds"):
        print(f"{key:28}{s[key]:12.2f}{d[key]:12.2f}{d[key] / s[key]:9.2f}")
    total_s, total_d = s["prepare_seconds"] + s["train_seconds"], d["prepare_seconds"] + d["train_seconds"]
    print(f"{'prepare + train seconds':28}{total_s:12.2f}{total_d:12.2f}{total_d / total_s:9.2f}   goal <= {GOAL_TIME}")
    print(f"{'run process peak MB':28}{s['process_peak_mb']:12.0f}{d['process_peak_mb']:12.0f}"
          f"{d['process_peak_mb'] / s['process_peak_mb']:9.2f}")  # fmt: skip
    for i, w in enumerate(d["worker_peak_mb"]):
        print(f"{f'worker {i} peak MB':28}{'':12}{w:12.0f}{w / s['process_peak_mb']:9.2f}   goal <= {GOAL_MEMORY}")
    print(f"{'dask cluster start seconds':28}{'':12}{d['cluster_start_seconds']:12.2f}   (not counted above)")
    print(f"{'histogram exchanges / round':28}{s['exchanges_per_round']:12.1f}{d['exchanges_per_round']:12.1f}")
    print(f"{'bytes big -> coordinator':28}{s['bytes_from_big']:12,}{d['bytes_from_big']:12,}")
    print("seconds the coordinator waited for big, by call:")
    for name in sorted(d["big_calls"], key=lambda n: -d["big_calls"][n])[:8]:
        a, b = s["big_calls"].get(name, 0.0), d["big_calls"][name]
        print(f"  {name:26}{a:12.2f}{b:12.2f}{b / a if a else float('nan'):9.2f}")
    print(f"same model, bit for bit: {same}")
    print(
        f"load average (1 min) before each run: single {s['load'][0]:.1f}, dask {d['load'][0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    print("per partition (dask run):")
    rounds = args.rounds
    rates = []
    for i, p in enumerate(d["partitions"]):

        def total(kind, names, p=p):
            return sum(p[kind].get(n, 0.0) for n in names)

        hist, grad = ("split_histograms", "histograms"), ("begin_round", "start_trees")
        calls = sum(p["calls"].get(n, 0) for n in hist)
        print(
            f"  {i}: {p['rows']:>9,} rows; histograms {total('seconds', hist) / rounds:6.3f} s/tree "
            f"({total('cpu', hist) / rounds:6.3f} CPU s) over {calls / rounds:.0f} requests; "
            f"gradients {total('seconds', grad) / rounds:6.3f} s/tree ({total('cpu', grad) / rounds:6.3f} CPU s); "
            f"bins {p['seconds'].get('set_bins', 0):.2f} s ({p['cpu'].get('set_bins', 0):.2f} CPU s)"
        )
        rates.append((total("cpu", hist) + total("cpu", grad)) / rounds / max(p["rows"], 1))
    print(
        f"CPU per training row per tree (histograms + gradients), mean over partitions: {np.mean(rates) * 1e9:.0f} ns"
    )
    time_ok = total_d / total_s <= GOAL_TIME
    mem_ok = all(w / s["process_peak_mb"] <= GOAL_MEMORY for w in d["worker_peak_mb"])
    print(f"goals: time {'met' if time_ok else 'NOT met'}, worker memory {'met' if mem_ok else 'NOT met'}")
    with open(os.path.join(workdir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if same else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--features", type=int, default=28)
    parser.add_argument("--others", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partition-rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--run", choices=["single", "dask"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run(args)))
        return 0
    return side_by_side(args)


if __name__ == "__main__":
    sys.exit(main())
