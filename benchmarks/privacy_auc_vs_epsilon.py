"""AUC against the differential-privacy budget on real data (HIGGS subset), histogram strategy.

Usage::

    python benchmarks/privacy_auc_vs_epsilon.py [--epsilons 1 4 16 inf] [--parties 4] [--rounds 30]
        [--tracking-uri sqlite:///mlruns/mlflow.db]

Splits LightGBM's binary example (7,000 training rows, 28 features; 500 test
rows) over K organisations, trains the histogram strategy with secure
aggregation at each epsilon (inf: no noise) and prints test AUC, the epsilon
the accountant reports and the noise multiplier. The table and a plot of AUC
against epsilon are logged to MLflow (experiment ``fedmine-benchmarks``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "lightgbm")


def load(name):
    arr = np.loadtxt(os.path.join(DATA, name), delimiter="\t")
    return arr[:, 1:], arr[:, 0]


def train(X, y, parties, rounds, epsilon, *, num_leaves=7, max_bin=16, learning_rate=0.3):
    from fedmine.config import config_from_dict
    from fedmine.coordinator.training import Coordinator
    from fedmine.party.organisation import Party, TrainValidRows

    names = [f"org{i}" for i in range(parties)]
    features = [f"f{i}" for i in range(X.shape[1])]
    privacy = {"secure_aggregation": True}
    if math.isfinite(epsilon):
        privacy["epsilon"] = epsilon
    cfg = config_from_dict(
        {
            "name": "privacy-benchmark",
            "label": "y",
            "features": {f: {} for f in features},
            "organisations": {n: {"source": f"{n}.csv"} for n in names},
            "training": {
                "strategy": "histogram",
                "rounds": rounds,
                "num_leaves": num_leaves,
                "max_bin": max_bin,
                "learning_rate": learning_rate,
                "lookahead": 0,
                "validation_fraction": 0.0,
            },
            "privacy": privacy,
        }
    )
    parts = np.array_split(np.random.default_rng(0).permutation(len(y)), parties)
    members = [
        Party(
            n,
            TrainValidRows(X[p], y[p], X[:0], y[:0]),
            objective="binary",
            num_class=1,
            feature_names=features,
            categorical=[],
        )
        for n, p in zip(names, parts)
    ]
    coord = Coordinator(cfg, members)
    coord.start()
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        if coord.run_round(r).stopped:
            break
    return coord, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1, 4, 16, math.inf])
    ap.add_argument("--parties", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--num-leaves", type=int, default=7)
    ap.add_argument("--max-bin", type=int, default=16)
    ap.add_argument("--learning-rate", type=float, default=0.3)
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    args = ap.parse_args(argv)
    import lightgbm as lgb

    from fedmine.metrics import auc

    X, y = load("binary.train")
    Xt, yt = load("binary.test")
    rows = []
    for eps in args.epsilons:
        coord, wall = train(
            X,
            y,
            args.parties,
            args.rounds,
            eps,
            num_leaves=args.num_leaves,
            max_bin=args.max_bin,
            learning_rate=args.learning_rate,
        )
        model = lgb.Booster(model_str=coord.model_text())
        receipt = coord.receipt().as_dict()
        rows.append(
            (
                eps,
                auc(yt, model.predict(Xt)),
                receipt.get("epsilon_total"),
                receipt.get("param.noise_multiplier"),
                coord.last_round,
                wall,
            )
        )
    print(
        f"parties={args.parties} rounds={args.rounds} num_leaves={args.num_leaves} max_bin={args.max_bin} "
        f"learning_rate={args.learning_rate} rows={len(y)} (HIGGS subset), secure aggregation on"
    )
    print(f"{'epsilon':>9}{'test AUC':>10}{'spent':>9}{'noise z':>10}{'rounds':>8}{'seconds':>9}")
    for eps, a, spent, z, r, wall in rows:
        print(
            f"{eps:>9g}{a:>10.4f}{(spent if spent is not None else float('nan')):>9.3f}"
            f"{(z if z is not None else float('nan')):>10.3g}{r:>8}{wall:>9.2f}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from fedmine.tracking import artifact_root, prepare_store

    prepare_store(args.tracking_uri)
    mlflow.set_tracking_uri(args.tracking_uri)
    if mlflow.get_experiment_by_name("fedmine-benchmarks") is None:
        mlflow.create_experiment("fedmine-benchmarks", artifact_location=artifact_root(args.tracking_uri, None))
    mlflow.set_experiment("fedmine-benchmarks")
    with mlflow.start_run(run_name="privacy-auc-vs-epsilon"), tempfile.TemporaryDirectory() as tmp:
        finite = [r for r in rows if math.isfinite(r[0])]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.semilogx([r[0] for r in finite], [r[1] for r in finite], "o-", label="differential privacy")
        for r in rows:
            if not math.isfinite(r[0]):
                ax.axhline(r[1], color="grey", ls="--", label="no noise")
        ax.set_xlabel("epsilon (delta 1e-6)")
        ax.set_ylabel("test AUC")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(tmp, "auc_vs_epsilon.png"), dpi=110)
        mlflow.log_artifact(os.path.join(tmp, "auc_vs_epsilon.png"))
        for eps, a, *_ in rows:
            mlflow.log_metric("test_auc", a, step=0 if not math.isfinite(eps) else int(eps))
        mlflow.log_text("\n".join(f"{r[0]}\t{r[1]:.4f}" for r in rows), "auc_vs_epsilon.tsv")


if __name__ == "__main__":
    main()
