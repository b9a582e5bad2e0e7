"""`fedmine run` as a user runs it, against LightGBM on the pooled rows.

Usage::

    python benchmarks/fedmine_run.py [--case large|small|all] [--rows N] [--orgs K] [--rounds R]
        [--workdir DIR] [--no-warmup] [--keep]

Cases:

- ``large``: 1,000,000 rows x 28 float features (HIGGS-like, as
  histogram_vs_lightgbm.make_data) with 2% missing values, 4 label-skewed
  organisations, 100 rounds, 31 leaves, 255 bins, no validation rows.
- ``small``: 26,000 rows x 14 features (8 categorical with 2 to 16 levels and
  6 numeric, like a census-income table), 4 label-skewed organisations, 100
  rounds, 31 leaves, no validation rows.

For each case it writes every organisation's rows as a Parquet file and a
federation.yaml (``strategy: histogram``, secure aggregation on, the default
with 2+ organisations) into a folder, then runs, each in its own process:

1. ``python -m fedmine.cli run federation.yaml --summary-json summary.json``:
   the whole command's wall time and peak RSS, the summary's
   ``train_seconds`` and ``total_seconds``, and phases read from the MLflow
   run the command recorded (run, metric and artifact timestamps, per-round
   ``seconds/*`` metrics);
2. LightGBM on the pooled rows: read the same Parquet files with pyarrow,
   concatenate, then ``lgb.Dataset`` construction + ``lgb.train`` with the same
   parameters (``num_threads: 2``, deterministic, row- or column-wise as
   LightGBM picks);
3. the engine alone: the same Parquet files read the same way, one
   ``EngineState`` per organisation summed in process
   (``fedmine.gbdt.train_partitioned``: no federation layer, no masks, no
   MLflow), binning included, beside LightGBM's binning + training.

Every command's CPU seconds (user + system, the process and its children) are
printed beside its wall seconds, and the load average before each: the
machine may be shared. KB per tree are the bytes both ways over the rounds;
beside them, what the same rounds would have sent with every histogram in the
full layout (``max_bin + 1`` bins per feature, three int64 per bin), from the
``train/histogram_nodes`` and ``train/histogram_bytes`` metrics.

Peak RSS is the largest process of each command (``/usr/bin/time -v``, else
``getrusage(RUSAGE_CHILDREN)`` of a wrapper). Before the measured run, a
warm-up ``fedmine run`` on 2,000 rows per organisation and 2 rounds fills
numba's on-disk cache, so compilation is not counted (``--no-warmup`` counts it).
Exits non-zero, with the tail of its stderr, when a command fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from histogram_vs_lightgbm import make_data  # noqa: E402

LABEL = "label"
SEED = 7  # fedmine's default training.seed
MIN_DATA_IN_LEAF = 20  # fedmine's default training.min_data_in_leaf (docs/config.md)
TIME = "/usr/bin/time"

# census-income-like categorical features: name -> number of levels
CATEGORICAL = {
    "workclass": 8,
    "education": 16,
    "marital_status": 7,
    "occupation": 14,
    "relationship": 6,
    "race": 5,
    "sex": 2,
    "native_region": 10,
}
NUMERIC = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]

CASES = {
    "large": dict(rows=1_000_000, orgs=4, rounds=100),
    "small": dict(rows=26_000, orgs=4, rounds=100),
}

GOALS = {  # (label, figure key, bound)
    "large": [
        ("train_seconds / LightGBM binning+training", "train_ratio", 1.0),
        ("engine alone / LightGBM binning+training", "engine_ratio", 0.8),
        ("whole command / LightGBM read+binning+training", "wall_ratio", 2.5),
        ("KB per tree / full layout's", "bytes_ratio", 0.5),
        ("peak RSS fedmine / LightGBM", "rss_ratio", 1.3),
    ],
    "small": [
        ("train_seconds", "train_seconds", 3.0),
        ("KB per tree / full layout's", "bytes_ratio", 0.25),
        ("per round outside the engine (MLflow logging, checkpoint, progress)", "outside_ms", 10.0),
    ],
}
UNITS = {"train_seconds": " s", "outside_ms": " ms"}  # the other figures are ratios


# -- data --------------------------------------------------------------------
def make_large(n_rows: int, seed: int = 0):
    """HIGGS-like: 28 dense floats, 2% of the values missing at random; a frame and the feature specs."""
    import pandas as pd

    X, y = make_data(n_rows, 28, seed=seed)
    rng = np.random.default_rng(seed + 1)
    X[rng.random(X.shape) < 0.02] = np.nan
    names = [f"f{i}" for i in range(X.shape[1])]
    frame = pd.DataFrame(X, columns=names)
    frame[LABEL] = y.astype(np.int64)
    return frame, {n: {"type": "float"} for n in names}


def make_small(n_rows: int, seed: int = 0):
    """Census-income-like: 8 categorical (2-16 levels, text) and 6 numeric features; a frame and the specs."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    effects = np.random.default_rng(4321)  # the same task for every seed
    z = np.zeros(n_rows)
    data, specs = {}, {}
    for name, levels in CATEGORICAL.items():
        cats = [f"{name}_{i}" for i in range(levels)]
        p = rng.dirichlet(np.full(levels, 2.0))
        codes = rng.choice(levels, size=n_rows, p=p)
        z += effects.normal(scale=0.6, size=levels)[codes]
        values = np.array(cats, dtype=object)[codes]
        if name in ("workclass", "occupation"):  # unknown, as '?' in the census table
            values[rng.random(n_rows) < 0.05] = None
        data[name] = values
        specs[name] = {"type": "category", "categories": cats}
    age = np.clip(rng.normal(39, 13, n_rows), 17, 90).round()
    education_num = np.clip(rng.normal(10, 2.5, n_rows), 1, 16).round()
    hours = np.clip(rng.normal(40, 12, n_rows), 1, 99).round()
    gain = np.where(rng.random(n_rows) < 0.08, rng.lognormal(8, 1.2, n_rows), 0.0).round()
    loss = np.where(rng.random(n_rows) < 0.05, rng.lognormal(7.3, 0.4, n_rows), 0.0).round()
    fnlwgt = rng.lognormal(12, 0.5, n_rows).round()
    z += 0.04 * (age - 39) - 0.0006 * (age - 45) ** 2 + 0.3 * (education_num - 10) + 0.03 * (hours - 40)
    z += 0.6 * (gain > 5000) + 0.4 * (loss > 1500)
    y = (z + rng.logistic(size=n_rows) > 1.2).astype(np.int64)
    for name, v in zip(NUMERIC, [age, fnlwgt, education_num, gain, loss, hours]):
        data[name] = v
        specs[name] = {"type": "float"}
    frame = pd.DataFrame(data)
    frame[LABEL] = y
    return frame, specs


def split_label_skewed(y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Sort rows by label plus noise and cut into k parts: the parts' positive rates differ."""
    rng = np.random.default_rng(seed + 2)
    order = np.argsort(y + rng.normal(scale=0.6, size=len(y)), kind="stable")
    return [np.sort(p) for p in np.array_split(order, k)]


def write_case(folder: str, frame, specs: dict, k: int, rounds: int, name: str, subset: int | None = None) -> str:
    """Write k organisations' Parquet files and a federation.yaml into folder; return the config path."""
    import yaml

    os.makedirs(folder, exist_ok=True)
    orgs = {}
    for i, rows in enumerate(split_label_skewed(frame[LABEL].to_numpy(), k)):
        if subset is not None:
            rows = rows[:: max(1, len(rows) // subset)][:subset]
        path = os.path.join(folder, f"org{i}.parquet")
        frame.iloc[rows].reset_index(drop=True).to_parquet(path, index=False)
        orgs[f"org{i}"] = {"source": path}
    cfg = {
        "name": name,
        "objective": "binary",
        "label": LABEL,
        "features": specs,
        "organisations": orgs,
        "training": {
            "strategy": "histogram",
            "rounds": rounds,
            "learning_rate": 0.1,
            "num_leaves": 31,
            "max_bin": 255,
            "min_data_in_leaf": MIN_DATA_IN_LEAF,
            "validation_fraction": 0,
            "seed": SEED,
        },
        "tracking": {"uri": f"sqlite:///{os.path.join(os.path.abspath(folder), 'mlflow.db')}"},
    }
    path = os.path.join(folder, "federation.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


# -- running and measuring -----------------------------------------------------
def run_measured(cmd: list[str], cwd: str, tag: str) -> dict:
    """Run cmd in cwd: wall seconds, peak RSS (MB, largest process), stdout; exit on failure."""
    out_path, err_path = os.path.join(cwd, f"{tag}.stdout"), os.path.join(cwd, f"{tag}.stderr")
    rss_path = os.path.join(cwd, f"{tag}.rss")
    if os.access(TIME, os.X_OK):
        full = [TIME, "-v", "-o", rss_path] + cmd
    else:
        wrapper = (
            "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write('Maximum resident set size (kbytes): %d\\n' % "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
        )
        full = [sys.executable, "-c", wrapper, rss_path] + cmd
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(HERE), os.environ.get("PYTHONPATH")]))
    )
    started = time.time()
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out_path, "w") as out, open(err_path, "w") as err:
        rc = subprocess.call(full, cwd=cwd, stdout=out, stderr=err, env=env)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if rc != 0:
        with open(err_path) as f:
            tail = f.readlines()[-40:]
        sys.stderr.write(f"error: {tag} failed with exit code {rc}: {' '.join(cmd)}\n--- stderr (tail) ---\n")
        sys.stderr.write("".join(tail))
        sys.exit(rc if 0 < rc < 256 else 1)
    rss = float("nan")
    with open(rss_path) as f:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read())
        if m:
            rss = int(m.group(1)) / 1024
    with open(out_path) as f:
        stdout = f.read()
    return {"wall": wall, "cpu": cpu, "rss_mb": rss, "stdout": stdout, "started": started}


def run_fedmine(config: str, folder: str, tag: str) -> dict:
    summary_path = os.path.join(folder, f"{tag}-summary.json")
    res = run_measured(
        [sys.executable, "-m", "fedmine.cli", "run", config, "--summary-json", summary_path], folder, tag
    )
    with open(summary_path) as f:
        res["summary"] = json.load(f)
    return res


def mlflow_phases(db: str, run_id: str, started: float, wall: float, train_seconds: float) -> dict:
    """Seconds per phase of the fedmine command, from the timestamps of the MLflow run it recorded.

    Marks: the parent run's start and end, its organisations' nested runs'
    start (after every organisation is prepared and the federation started),
    the first round's metrics (logged when it ends, ``seconds/round`` after it
    began), the logged model's creation (after the local-only baselines) and
    last update, and the registered model version's creation.
    """
    nan = float("nan")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:

        def one(sql: str, *params):
            row = con.execute(sql, params).fetchone()
            return row[0] if row and row[0] is not None else None

        start_ms = one("SELECT start_time FROM runs WHERE run_uuid = ?", run_id)
        end_ms = one("SELECT end_time FROM runs WHERE run_uuid = ?", run_id)
        orgs_ms = one(
            "SELECT MAX(r.start_time) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'mlflow.parentRunId' AND t.value = ?",
            run_id,
        )
        sums = dict(
            con.execute(
                "SELECT key, SUM(value) FROM metrics WHERE run_uuid = ? AND key IN ('seconds/round', "
                "'seconds/party', 'seconds/aggregation', 'seconds/split_finding', 'train/histogram_exchanges', "
                "'train/histogram_nodes', 'train/histogram_bytes') "
                "GROUP BY key",
                (run_id,),
            ).fetchall()
        )
        first = con.execute(
            "SELECT timestamp, value FROM metrics WHERE run_uuid = ? AND key = 'seconds/round' ORDER BY step LIMIT 1",
            (run_id,),
        ).fetchone()
        model_ms = one("SELECT MIN(creation_timestamp_ms) FROM logged_models WHERE source_run_id = ?", run_id)
        saved_ms = one("SELECT MAX(last_updated_timestamp_ms) FROM logged_models WHERE source_run_id = ?", run_id)
        version_ms = one("SELECT MIN(creation_time) FROM model_versions WHERE run_id = ?", run_id)
    finally:
        con.close()

    def span(a, b) -> float:
        return (b - a) / 1000 if a is not None and b is not None else nan

    t0 = started * 1000
    train_start = first[0] - first[1] * 1000 if first else None
    train_end = train_start + train_seconds * 1000 if train_start is not None else None
    rounds = sums.get("seconds/round", nan)
    phases = {
        "start-up: interpreter, imports, Prefect, MLflow run": span(t0, start_ms),
        "prepare organisations + start federation": span(start_ms, orgs_ms),
        "  then nested runs until the first round": span(orgs_ms, train_start),
        "training (train_seconds)": train_seconds,
        "  rounds: engine + evaluation (sum of seconds/round)": rounds,
        "    parties' histograms (seconds/party)": sums.get("seconds/party", nan),
        "    aggregation (seconds/aggregation)": sums.get("seconds/aggregation", nan),
        "    split finding (seconds/split_finding)": sums.get("seconds/split_finding", nan),
        "  per-round MLflow logging + checkpoints": train_seconds - rounds,
        "local-only baselines, model text": span(train_end, model_ms),
        "model logged (MLflow lightgbm flavour)": span(model_ms, saved_ms),
        "  model registered": span(saved_ms, version_ms),
        "summary, report, artifacts, runs ended": span(version_ms or saved_ms, end_ms),
        "shut-down: flow end, Prefect, exit": wall - span(t0, end_ms),
    }
    return {
        "phases": phases,
        "histogram_exchanges": sums.get("train/histogram_exchanges", nan),
        "histogram_nodes": sums.get("train/histogram_nodes", nan),
        "histogram_bytes": sums.get("train/histogram_bytes", nan),
        "outside_rounds": train_seconds - rounds,  # per-round MLflow logging, checkpoints, progress
    }


def read_rows(table, spec: dict):
    """Float64 features (categories as codes, NaN when missing or unknown) and labels of a pyarrow table."""
    import pandas as pd

    cols = []
    for name in spec["features"]:
        col = table.column(name)
        cats = spec["categories"].get(name)
        if cats is not None:
            codes = pd.Categorical(col.to_pandas(), categories=cats).codes.astype(np.float64)
            codes[codes < 0] = np.nan
            cols.append(codes)
        else:
            cols.append(col.to_numpy(zero_copy_only=False).astype(np.float64))
    return np.column_stack(cols), table.column(LABEL).to_numpy().astype(np.float64)


def engine_child(spec_path: str) -> None:
    """Child process: the engine alone over the organisations' rows (in process, summed), binning included."""
    with open(spec_path) as f:
        spec = json.load(f)
    import pyarrow.parquet as pq

    from fedmine.gbdt import train_partitioned

    parts = [read_rows(pq.read_table(p), spec) for p in spec["sources"]]
    categorical = [i for i, n in enumerate(spec["features"]) if n in spec["categories"]]
    params = dict(
        objective="binary",
        num_leaves=31,
        learning_rate=0.1,
        max_bin=255,
        min_data_in_leaf=MIN_DATA_IN_LEAF,
        num_boost_round=spec["rounds"],
        seed=SEED,
    )
    warm = [(X[:500], y[:500]) for X, y in parts]  # numba's cache filled before the clock starts
    train_partitioned(warm, dict(params, num_boost_round=2), categorical=categorical)
    t0 = time.perf_counter()
    c0 = time.process_time()
    model = train_partitioned(parts, params, categorical=categorical)
    print(
        json.dumps(
            {"training": time.perf_counter() - t0, "cpu_training": time.process_time() - c0, "trees": len(model.trees)}
        )
    )


def lightgbm_child(spec_path: str) -> None:
    """Child process: read the organisations' Parquet files, pool them, bin and train; print figures as JSON."""
    with open(spec_path) as f:
        spec = json.load(f)
    t_import = time.perf_counter()
    import lightgbm as lgb
    import pandas  # noqa: F401  (read_rows needs it: imported before the clock starts)
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    X, y = read_rows(pa.concat_tables([pq.read_table(p) for p in spec["sources"]]), spec)
    features = spec["features"]
    read = time.perf_counter() - t0
    params = dict(
        objective="binary",
        num_leaves=31,
        learning_rate=0.1,
        max_bin=255,
        min_data_in_leaf=MIN_DATA_IN_LEAF,
        num_threads=2,
        deterministic=True,
        seed=SEED,
        verbosity=-1,
    )
    categorical = [i for i, n in enumerate(features) if n in spec["categories"]]
    t1 = time.perf_counter()
    ds = lgb.Dataset(X, y, feature_name=features, categorical_feature=categorical or "auto", params={"max_bin": 255})
    ds.construct()
    t2 = time.perf_counter()
    booster = lgb.train(params, ds, num_boost_round=spec["rounds"])
    t3 = time.perf_counter()
    print(
        json.dumps(
            {
                "import": t0 - t_import,
                "read": read,
                "binning": t2 - t1,
                "training": t3 - t2,
                "trees": booster.num_trees(),
                "rows": int(X.shape[0]),
            }
        )
    )


def run_child(kind: str, folder: str, sources: list[str], specs: dict, rounds: int) -> dict:
    """``kind`` ("lightgbm" or "engine") in its own process over the organisations' Parquet files."""
    spec = {
        "sources": sources,
        "features": list(specs),
        "rounds": rounds,
        "categories": {n: s["categories"] for n, s in specs.items() if s["type"] == "category"},
    }
    spec_path = os.path.join(folder, f"{kind}.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    res = run_measured([sys.executable, os.path.abspath(__file__), f"--{kind}-child", spec_path], folder, kind)
    res.update(json.loads(res["stdout"].strip().splitlines()[-1]))
    return res


def run_lightgbm(folder: str, sources: list[str], specs: dict, rounds: int, tag: str) -> dict:
    return run_child("lightgbm", folder, sources, specs, rounds)


# -- report --------------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def full_layout_bytes(bytes_total: float, phases: dict | str, n_features: int, max_bin: int = 255) -> float:
    """The rounds' bytes had every histogram travelled in the full layout: (max_bin + 1) bins x 3 int64 per feature."""
    if isinstance(phases, str):
        return float("nan")
    full = phases["histogram_nodes"] * n_features * (max_bin + 1) * 3 * 8
    return bytes_total - phases["histogram_bytes"] + full


def print_case(
    case: str, n_rows: int, k: int, rounds: int, fed: dict, lgbm: dict, engine: dict, phases: dict | str
) -> dict:
    s = fed["summary"]
    lgb_train = lgbm["binning"] + lgbm["training"]
    lgb_all = lgbm["read"] + lgb_train
    rows_by_org = {o: v["rows"] for o, v in s["organisations"].items()}
    bytes_total = s.get("bytes_sent", 0) + s.get("bytes_received", 0)
    n_trees = max(int(s["rounds"]), 1)
    full = full_layout_bytes(bytes_total, phases, engine["n_features"])
    fig = {
        "train_seconds": s["train_seconds"],
        "train_ratio": ratio(s["train_seconds"], lgb_train),
        "engine_ratio": ratio(engine["training"], lgb_train),
        "wall_ratio": ratio(fed["wall"], lgb_all),
        "bytes_ratio": ratio(bytes_total, full),
        "rss_ratio": ratio(fed["rss_mb"], lgbm["rss_mb"]),
        "outside_ms": float("nan") if isinstance(phases, str) else 1000 * phases["outside_rounds"] / n_trees,
    }
    print(
        f"\n== {case}: {n_rows:,} rows, {k} organisations, {rounds} rounds, 31 leaves, 255 bins, histogram "
        f"(secure aggregation {'on' if s.get('privacy', {}).get('secure_aggregation') else 'off'}) =="
    )
    print("rows per organisation: " + ", ".join(f"{o} {n:,}" for o, n in rows_by_org.items()))
    print(f"{'':<34}{'fedmine':>12}{'LightGBM':>12}{'ratio':>8}")
    print(
        f"{'training (s)':<34}{s['train_seconds']:>12.2f}{lgb_train:>12.2f}{fig['train_ratio']:>8.2f}"
        f"   fedmine train_seconds; LightGBM Dataset + train"
    )
    print(
        f"{'engine alone (s)':<34}{engine['training']:>12.2f}{lgb_train:>12.2f}{fig['engine_ratio']:>8.2f}"
        f"   train_partitioned over the {k} organisations' rows in process, binning included"
    )
    print(
        f"{'whole command (s)':<34}{fed['wall']:>12.2f}{lgb_all:>12.2f}{fig['wall_ratio']:>8.2f}"
        f"   fedmine run wall; LightGBM read + Dataset + train"
    )
    print(
        f"{'CPU s, whole process':<34}{fed['cpu']:>12.2f}{lgbm['cpu']:>12.2f}{ratio(fed['cpu'], lgbm['cpu']):>8.2f}"
        f"   user + system, with children (engine alone: {engine['cpu']:.2f} s in training, "
        f"{engine['cpu_total']:.2f} s whole process)"
    )
    print(
        f"{'peak RSS (MB)':<34}{fed['rss_mb']:>12.0f}{lgbm['rss_mb']:>12.0f}{fig['rss_ratio']:>8.2f}   largest process"
    )
    print(f"{'rounds / trees':<34}{s['rounds']:>12}{lgbm['trees']:>12}")
    print(
        f"{'KB per tree (both ways)':<34}{bytes_total / n_trees / 1024:>12.0f}"
        f"   parties sent {s.get('bytes_sent', 0):,} B, received {s.get('bytes_received', 0):,} B"
    )
    print(
        f"{'  in the full layout':<34}{full / n_trees / 1024:>12.0f}{'':>12}{fig['bytes_ratio']:>8.2f}"
        f"   every histogram with max_bin + 1 bins per feature, 3 int64 per bin"
    )
    print(
        f"LightGBM: read {lgbm['read']:.2f} s, Dataset (binning) {lgbm['binning']:.2f} s, "
        f"train {lgbm['training']:.2f} s (imports {lgbm['import']:.2f} s; the process's wall {lgbm['wall']:.2f} s)"
    )
    print(
        f"summary: train_seconds {s['train_seconds']:.2f} s, total_seconds {s['total_seconds']:.2f} s "
        f"(flow start to summary written); the command outside the flow: {fed['wall'] - s['total_seconds']:.2f} s"
    )
    if isinstance(phases, str):
        print(f"phases: not available ({phases})")
    else:
        print("phases of `fedmine run` (s, from the MLflow run's timestamps):")
        for name, sec in phases["phases"].items():
            print(f"  {name:<56}{sec:>8.2f}")
        print(f"  histogram exchanges per tree: {phases['histogram_exchanges'] / n_trees:.1f}")
    print("goals:")
    for label, key, bound in GOALS[case]:
        value = fig[key]
        unit = UNITS.get(key, "x")
        print(f"  {label} <= {bound:g}{unit}: {value:.2f}{unit}  {'MET' if value <= bound else 'NOT MET'}")
    return fig


def source_version() -> str:
    """The repository's commit, with "+changes" when tracked files differ from it ("unknown" outside git)."""
    top = os.path.dirname(HERE)
    try:
        commit = subprocess.run(
            ["git", "-C", top, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", top, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["all", *CASES], default="all")
    ap.add_argument("--rows", type=int, help="rows of the case (all organisations)")
    ap.add_argument("--orgs", type=int, help="organisations")
    ap.add_argument("--rounds", type=int, help="boosting rounds")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run fedmine and LightGBM this many times, alternately; report the fastest run of each",
    )
    ap.add_argument("--workdir", help="folder for data, configs, MLflow (default: a temporary folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--no-warmup", action="store_true", help="count numba compilation (no warm-up run)")
    ap.add_argument("--lightgbm-child", help=argparse.SUPPRESS)
    ap.add_argument("--engine-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.lightgbm_child:
        lightgbm_child(args.lightgbm_child)
        return 0
    if args.engine_child:
        engine_child(args.engine_child)
        return 0
    for name, value in (
        ("--rows", args.rows),
        ("--orgs", args.orgs),
        ("--rounds", args.rounds),
        ("--repeat", args.repeat),
    ):
        if value is not None and value < 1:
            ap.error(f"{name} must be >= 1")

    root = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="fedmine-run-")
    os.makedirs(root, exist_ok=True)
    cases = list(CASES) if args.case == "all" else [args.case]
    import lightgbm

    print(
        f"fedmine {source_version()}, python {sys.version.split()[0]}, lightgbm {lightgbm.__version__}, "
        f"{os.cpu_count()} cores, load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    try:
        for case in cases:
            n_rows = args.rows or CASES[case]["rows"]
            k = args.orgs or CASES[case]["orgs"]
            rounds = args.rounds or CASES[case]["rounds"]
            folder = os.path.join(root, case)
            if os.path.exists(folder):
                shutil.rmtree(folder)
            frame, specs = (make_large if case == "large" else make_small)(n_rows)
            config = write_case(folder, frame, specs, k, rounds, f"bench-{case}")
            sources = [os.path.join(folder, f"org{i}.parquet") for i in range(k)]
            if not args.no_warmup:
                warm = write_case(
                    os.path.join(folder, "warmup"), frame, specs, k, 2, f"bench-{case}-warmup", subset=2000
                )
                run_fedmine(warm, os.path.join(folder, "warmup"), "fedmine-warmup")
            del frame
            runs = []
            for i in range(args.repeat):  # alternately, so both see the same load
                load = os.getloadavg()[0]
                fed = run_fedmine(config, folder, f"fedmine-{i}")
                lgbm = run_lightgbm(folder, sources, specs, rounds, f"lightgbm-{i}")
                engine = run_child("engine", folder, sources, specs, rounds)
                engine.update(cpu_total=engine["cpu"], cpu=engine.pop("cpu_training"), n_features=len(specs))
                runs.append((load, fed, lgbm, engine))
            fed = min((r[1] for r in runs), key=lambda r: r["wall"])
            lgbm = min((r[2] for r in runs), key=lambda r: r["read"] + r["binning"] + r["training"])
            engine = min((r[3] for r in runs), key=lambda r: r["training"])
            try:
                phases = mlflow_phases(
                    os.path.join(folder, "mlflow.db"),
                    fed["summary"]["run_id"],
                    fed["started"],
                    fed["wall"],
                    fed["summary"]["train_seconds"],
                )
            except Exception as exc:  # the timeline is extra; the figures above stand without it
                phases = f"{type(exc).__name__}: {exc}"
            print_case(case, n_rows, k, rounds, fed, lgbm, engine, phases)
            print(
                "runs (1-minute load average before each; the table shows the fastest fedmine run and the "
                "fastest LightGBM run):"
                if len(runs) > 1
                else "run (1-minute load average before it):"
            )
            for i, (load, f, g, e) in enumerate(runs):
                print(
                    f"  {i + 1}: load {load:.2f}; fedmine train_seconds {f['summary']['train_seconds']:.2f} s, "
                    f"wall {f['wall']:.2f} s, CPU {f['cpu']:.2f} s, {f['rss_mb']:.0f} MB; LightGBM binning+training "
                    f"{g['binning'] + g['training']:.2f} s, read+binning+training "
                    f"{g['read'] + g['binning'] + g['training']:.2f} s, CPU {g['cpu']:.2f} s, {g['rss_mb']:.0f} MB; "
                    f"engine alone {e['training']:.2f} s, CPU {e['cpu']:.2f} s"
                )
            print(f"load average after the case {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep:
            print(f"files kept in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
