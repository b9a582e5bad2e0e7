"""Vertical federation end to end: time per tree beside LightGBM on the joined table, and PSI throughput.

Usage::

    python benchmarks/vertical.py [--rows 100000] [--features 10] [--bins 32] [--leaves 31] [--trees 2]
        [--psi-ids 100000] [--key-bits 2048] [--skip-psi] [--skip-tree] [--in-process]

Two organisations share ``--rows`` customers: the label holder with
``--features`` features and the label, one owner with ``--features`` more.
fedmine's vertical training (the label holder's :class:`~fedmine.party.label_holder.LabelHolder`
and the owner's :class:`~fedmine.party.feature_owner.FeatureOwner`, in one
process, through the same calls the coordinator carries, Paillier at
``--key-bits``) grows ``--trees`` trees of ``--leaves`` leaves over ``--bins``
bins; LightGBM grows the same number of trees on the joined table with the
same parameters, in the same run. Printed: seconds per tree of each, their
ratio, the per-tree figure extrapolated to 100 trees, and whether the
vertical model equals fedmine's engine on the joined table. The PSI part
intersects two sets of ``--psi-ids`` ids (half shared) with the product's
calls and prints ids per second. The machine's load average is printed
beside the figures: on a shared machine every figure is slower.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _live_children_cpu(pid: int) -> float:
    """CPU seconds of the running descendants of ``pid`` (the worker pools), from /proc (0 where it is absent)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            try:
                with open(f"/proc/{kid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick + _live_children_cpu(kid)
            except (OSError, IndexError, ValueError):
                continue
    return total


def cpu() -> float:
    """CPU seconds of this process and its worker processes, running or finished (robust to a shared machine's load)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + _live_children_cpu(os.getpid())


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def data(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2 * k))
    logit = X[:, :k].sum(axis=1) * 0.3 + X[:, k:].sum(axis=1) * 0.3 + np.sin(X[:, 0] * X[:, k])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return X, y


def bench_tree(args) -> None:
    import lightgbm as lgb

    from fedmine.gbdt import to_lightgbm_text, train_pooled
    from fedmine.party.feature_owner import FeatureOwner
    from fedmine.party.label_holder import LabelHolder
    from fedmine.privacy import paillier

    n, k = args.rows, args.features
    X, y = data(n, k)
    params = dict(
        objective="binary",
        num_boost_round=args.trees,
        num_leaves=args.leaves,
        max_bin=args.bins,
        learning_rate=0.1,
        min_data_in_leaf=20,
        num_threads=2,
    )
    names = [f"f{i}" for i in range(2 * k)]
    lead_idx, owner_idx = np.arange(k), np.arange(k, 2 * k)
    owner = FeatureOwner("owner", X[:, owner_idx], X[:0, owner_idx], cipher=paillier)
    lead = LabelHolder(
        "lead",
        X[:, lead_idx],
        y,
        X[:0, lead_idx],
        y[:0],
        own=lead_idx,
        owners={"owner": owner_idx},
        feature_names=names,
        categorical=[],
        objective="binary",
        num_class=1,
        cipher=paillier,
        key_bits=args.key_bits,
    )
    calls = {
        "owner_bins": owner.bins,
        "owner_gradients": owner.gradients,
        "owner_histograms": owner.histograms,
        "owner_split": owner.split,
        "owner_decisions": owner.decisions,
        "owner_thresholds": owner.thresholds,
    }

    def ask(requests):
        return [calls[name](*a, **kw) for _, name, a, kw in requests]

    print(
        f"vertical: {n:,} shared rows, 2 organisations x {k} features, {args.bins} bins, {args.leaves} leaves, "
        f"Paillier {args.key_bits} bits ({load()})"
    )
    t0 = time.perf_counter()
    lead.begin(ask, params)
    t_begin = time.perf_counter() - t0
    per_tree, cpu_tree = [], []
    for _ in range(args.trees):
        t, c = time.perf_counter(), cpu()
        lead.round(ask)
        per_tree.append(time.perf_counter() - t)
        cpu_tree.append(cpu() - c)
    owner.publish_thresholds = True
    model = lead.model(ask, publish=True)
    print(
        f"  fedmine vertical: begin (key, bins, initial score) {t_begin:.2f} s; per tree "
        + ", ".join(f"{s:.2f}" for s in per_tree)
        + " s wall, "
        + ", ".join(f"{s:.2f}" for s in cpu_tree)
        + f" s CPU ({load()})"
    )

    joined = train_pooled(X, y, params, feature_names=names)
    same = to_lightgbm_text(model, names) == to_lightgbm_text(joined, names)
    lgb_params = {k2: v for k2, v in params.items() if k2 != "num_boost_round"} | {"verbosity": -1}
    ds = lgb.Dataset(X, label=y, params={"max_bin": args.bins, "verbosity": -1})
    ds.construct()
    t, c = time.perf_counter(), cpu()
    lgb.train(lgb_params, ds, num_boost_round=args.trees)
    lgb_tree = (time.perf_counter() - t) / args.trees
    lgb_cpu = (cpu() - c) / args.trees
    tree, tree_cpu = float(np.mean(per_tree)), float(np.mean(cpu_tree))
    print(f"  LightGBM on the joined table: {lgb_tree:.4f} s per tree wall, {lgb_cpu:.4f} s CPU")
    print(
        f"  per tree: fedmine vertical {tree:.2f} s, LightGBM {lgb_tree:.4f} s, ratio {tree / lgb_tree:,.0f}x (wall); "
        + (
            f"CPU {tree_cpu:.2f} s against {lgb_cpu:.4f} s, ratio {tree_cpu / max(lgb_cpu, 1e-9):,.0f}x; "
            f"about {tree_cpu / 2:.1f} s per tree on 2 idle cores if the work spread over both"
            if args.in_process
            else f"CPU of all processes {tree_cpu:.2f} s (the worker pools' included), at best "
            f"{tree_cpu / 2:.1f} s per tree on 2 idle cores"
        )
    )
    print(
        f"  100 trees, extrapolated from {args.trees}: fedmine vertical {100 * tree + t_begin:.0f} s "
        f"(goal: at most 30 s per tree on 2 cores; stretch 5 s)"
    )
    print(f"  the vertical model equals fedmine's engine on the joined table: {same}")


def bench_psi(args) -> None:
    from fedmine.privacy import psi

    n = args.psi_ids
    a = [f"C{i:09d}" for i in range(n)]
    b = [f"C{i:09d}" for i in range(n // 2, n + n // 2)]
    t0 = time.perf_counter()
    ka, kb = psi.PsiKey.generate(), psi.PsiKey.generate()
    ia, ib = psi.normalise_ids(a, salt="s"), psi.normalise_ids(b, salt="s")
    pa, pb = ka.blind(ia), kb.blind(ib)
    fa, fb = kb.reblind(pa), ka.reblind(pb)
    shared_a = psi.shared_positions(fa, [np.sort(fb.view("S32").ravel()).view(np.uint8).reshape(-1, 32)])
    shared_b = psi.shared_positions(fb, [fa])
    seconds = time.perf_counter() - t0
    assert len(shared_a) == len(shared_b) == n // 2
    print(
        f"PSI: 2 x {n:,} ids, {n // 2:,} shared: {seconds:.1f} s, {2 * n / seconds:,.0f} ids per second "
        f"(goal: 1M per organisation in at most 120 s on 2 cores; {load()})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--bins", type=int, default=32)
    p.add_argument("--leaves", type=int, default=31)
    p.add_argument("--trees", type=int, default=2)
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--psi-ids", type=int, default=100_000)
    p.add_argument("--skip-psi", action="store_true")
    p.add_argument("--skip-tree", action="store_true", help="measure the intersection only")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="keep the homomorphic work in one process per party (no worker pools): its CPU time is all counted",
    )
    args = p.parse_args()
    if args.in_process:
        from fedmine.party import feature_owner

        feature_owner.POOL_MIN_ROWS = 1 << 62
    if not args.skip_psi:
        bench_psi(args)
    if not args.skip_tree:
        bench_tree(args)


if __name__ == "__main__":
    main()
