"""How `fedmine run` cost grows with rows and with organisations, beside LightGBM on the same rows.

Usage::

    python benchmarks/scaling.py [--rounds R] [--rows 250000,1000000,4000000] [--orgs 2,4,8,16]
        [--workdir DIR] [--keep]

Two series of the large case of benchmarks/fedmine_run.py (HIGGS-like, 28
float features, 2% missing values, label-skewed organisations, 31 leaves,
255 bins, ``strategy: histogram`` with secure aggregation, no validation
rows):

- rows: 250k, 1M and 4M rows in total over 4 organisations;
- organisations: 2, 4, 8 and 16 organisations sharing 1M rows.

Each point runs ``fedmine run`` in its own process and LightGBM on the pooled
rows (read the same Parquet files, ``lgb.Dataset`` + ``lgb.train``, 2 threads)
in another, and prints per tree: the rounds' seconds (engine, parties,
masking, split finding, evaluation: the sum of the run's round seconds over
the rounds), ``train_seconds`` (rounds plus the federation's setup: bins,
label statistics, secure-aggregation keys), LightGBM's training, the ratio,
the KB crossing the organisations' boundary and the histogram exchanges. One
warm-up run fills numba's cache first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fedmine_run import (  # noqa: E402
    make_large,
    mlflow_phases,
    ratio,
    run_fedmine,
    run_lightgbm,
    source_version,
    write_case,
)


def point(root: str, n_rows: int, k: int, rounds: int) -> dict:
    """One (rows, organisations) point: fedmine and LightGBM figures per tree."""
    folder = os.path.join(root, f"rows{n_rows}-orgs{k}")
    if os.path.exists(folder):
        shutil.rmtree(folder)
    frame, specs = make_large(n_rows)
    config = write_case(folder, frame, specs, k, rounds, f"scaling-{n_rows}-{k}")
    sources = [os.path.join(folder, f"org{i}.parquet") for i in range(k)]
    del frame
    load = os.getloadavg()[0]
    fed = run_fedmine(config, folder, "fedmine")
    lgbm = run_lightgbm(folder, sources, specs, rounds, "lightgbm")
    s = fed["summary"]
    trees = max(int(s["rounds"]), 1)
    try:
        phases = mlflow_phases(
            os.path.join(folder, "mlflow.db"), s["run_id"], fed["started"], fed["wall"], s["train_seconds"]
        )
        round_s = next(v for k, v in phases["phases"].items() if k.startswith("  rounds:"))
        exchanges = phases["histogram_exchanges"] / trees
    except Exception:  # the run's timeline is extra; train_seconds stands without it
        round_s, exchanges = float("nan"), float("nan")
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "rows": n_rows,
        "orgs": k,
        "load": load,
        "round_per_tree": round_s / trees,
        "train_per_tree": s["train_seconds"] / trees,
        "train_seconds": s["train_seconds"],
        "lgb_per_tree": lgbm["training"] / max(lgbm["trees"], 1),
        "lgb_train": lgbm["binning"] + lgbm["training"],
        "kb_per_tree": (s.get("bytes_sent", 0) + s.get("bytes_received", 0)) / trees / 1024,
        "exchanges": exchanges,
        "rss_mb": fed["rss_mb"],
        "lgb_rss_mb": lgbm["rss_mb"],
    }


def print_table(title: str, points: list[dict]) -> None:
    print(f"\n{title}")
    head = (
        f"{'rows':>10}{'orgs':>6}{'rounds s/tree':>15}{'LightGBM s/tree':>17}{'ratio':>7}"
        f"{'train_seconds':>15}{'LGB bin+train':>15}{'ratio':>7}{'KB/tree':>10}{'exch/tree':>11}"
        f"{'RSS MB':>8}{'LGB MB':>8}{'load':>6}"
    )
    print(head)
    print("-" * len(head))
    for p in points:
        print(
            f"{p['rows']:>10,}{p['orgs']:>6}{p['round_per_tree']:>15.3f}{p['lgb_per_tree']:>17.3f}"
            f"{ratio(p['round_per_tree'], p['lgb_per_tree']):>7.2f}{p['train_seconds']:>15.2f}"
            f"{p['lgb_train']:>15.2f}{ratio(p['train_seconds'], p['lgb_train']):>7.2f}{p['kb_per_tree']:>10,.0f}"
            f"{p['exchanges']:>11.1f}{p['rss_mb']:>8.0f}{p['lgb_rss_mb']:>8.0f}{p['load']:>6.2f}"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="boosting rounds per point (default 20)")
    ap.add_argument("--rows", default="250000,1000000,4000000", help="total rows of the rows series (4 organisations)")
    ap.add_argument("--orgs", default="2,4,8,16", help="organisations of the organisations series (1M rows)")
    ap.add_argument("--series-rows", type=int, default=1_000_000, help="rows of the organisations series")
    ap.add_argument("--workdir", help="folder for data, configs, MLflow (default: a temporary folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    try:
        rows = [int(x) for x in args.rows.split(",") if x]
        orgs = [int(x) for x in args.orgs.split(",") if x]
    except ValueError:
        ap.error("--rows and --orgs are comma-separated integers")
    if args.rounds < 1 or any(r < 1000 for r in rows) or any(k < 1 for k in orgs):
        ap.error("--rounds >= 1, every --rows >= 1000, every --orgs >= 1")
    root = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="fedmine-scaling-")
    os.makedirs(root, exist_ok=True)
    import lightgbm

    print(
        f"fedmine {source_version()}, lightgbm {lightgbm.__version__}, {os.cpu_count()} cores, "
        f"{args.rounds} rounds per point, 31 leaves, 255 bins, histogram with secure aggregation"
    )
    try:
        frame, specs = make_large(8000)
        warm = write_case(os.path.join(root, "warmup"), frame, specs, 2, 2, "scaling-warmup")
        run_fedmine(warm, os.path.join(root, "warmup"), "fedmine-warmup")
        by_rows = [point(root, n, 4, args.rounds) for n in rows]
        print_table("rows (4 organisations)", by_rows)
        cached = {(p["rows"], p["orgs"]): p for p in by_rows}
        by_orgs = [cached.get((args.series_rows, k)) or point(root, args.series_rows, k, args.rounds) for k in orgs]
        print_table(f"organisations ({args.series_rows:,} rows in total)", by_orgs)
        print(
            "\nrounds s/tree: the run's round seconds over its rounds (parties' histograms, masks, split finding, "
            "evaluation); train_seconds adds the setup (bins, label statistics, keys); LightGBM s/tree: lgb.train "
            "over its trees; KB/tree: bytes both ways across the organisations' boundary over the rounds."
        )
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
