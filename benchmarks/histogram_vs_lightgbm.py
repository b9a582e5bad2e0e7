"""The histogram engine over K in-process parties against lightgbm.train on pooled rows.

Usage::

    python benchmarks/histogram_vs_lightgbm.py --rows 1000000 --features 28 --parties 4 \
        [--rounds 100 --num-leaves 31 --max-bin 255 --threads 2] [--secure-aggregation] [--transport flight]

Generates a binary task (HIGGS-like: dense floats, a nonlinear signal), trains
both with the same parameters, each in its own child process, and prints
training wall time (binning included for both), their ratio, the peak resident
memory training added on top of the input arrays ("+peak MB"), test AUC, and
what crossed the engine's aggregation boundary per tree (histograms up, node
ids and splits down, summed over parties) and how many histogram exchanges.

With ``--secure-aggregation`` it also trains through the federation layer
(each party a ``Party`` behind a ``Link``), once plain and once with
pairwise masks on every summed answer, and prints the secure/plain ratio.

With ``--transport flight`` every party runs in its own process behind an
Arrow Flight server with mutual TLS on 127.0.0.1, and the same training is
driven over the network; it prints the flight/in-process ratio and the round
trips per tree.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def make_data(n_rows: int, n_features: int, seed: int = 0):
    w = np.random.default_rng(12345).normal(size=n_features) / np.sqrt(n_features)  # the same task for every seed
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    z = X @ w + 0.5 * np.sin(2 * X[:, 0]) * X[:, 1] + 0.3 * (X[:, 2] > 0.5) - 0.3 * np.abs(X[:, 3])
    y = (z + rng.logistic(size=n_rows) * 0.7 > 0).astype(np.float64)
    X = np.round(X, 3)
    return X, y


def auc(y, s) -> float:
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    n_pos = y.sum()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos)))


class RssPeak:
    """Peak resident memory above the level at entry, sampled every 2 ms (includes C++ allocations)."""

    def __enter__(self):
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def run_lightgbm(args, X, y, Xt, yt, out):
    import lightgbm as lgb

    params = dict(
        objective="binary",
        num_leaves=args.num_leaves,
        max_bin=args.max_bin,
        learning_rate=0.1,
        num_threads=args.threads,
        verbose=-1,
        min_data_in_leaf=20,
        seed=0,
    )
    with RssPeak() as mem:
        t0 = time.perf_counter()
        c0 = time.process_time()
        booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=args.rounds)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    out.put(
        dict(
            name="lightgbm",
            wall=wall,
            cpu=cpu,
            peak=mem.extra_mb,
            auc=auc(yt, booster.predict(Xt, raw_score=True)),
            bytes_per_tree=0,
            exchanges=0,
        )
    )


def run_engine(args, X, y, Xt, yt, out):
    import numba

    numba.set_num_threads(args.threads)
    from fedmine.gbdt import predict_raw, train_partitioned

    params = dict(
        objective="binary",
        num_leaves=args.num_leaves,
        max_bin=args.max_bin,
        learning_rate=0.1,
        min_data_in_leaf=20,
        num_boost_round=args.rounds,
    )
    # warm the numba cache on a tiny run so compile time is not counted
    train_partitioned([(X[:2000], y[:2000])], dict(params, num_boost_round=2))
    parts = np.array_split(np.arange(X.shape[0]), args.parties)
    data = [(X[p], y[p]) for p in parts]
    with RssPeak() as mem:
        t0 = time.perf_counter()
        c0 = time.process_time()
        model, group = train_partitioned(data, params, return_group=True)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    raw = predict_raw(model.trees, Xt, init_scores=model.init_scores)[0]
    src = group.source
    n_trees = max(len(model.trees), 1)
    out.put(
        dict(
            name="engine",
            wall=wall,
            cpu=cpu,
            peak=mem.extra_mb,
            auc=auc(yt, raw),
            bytes_per_tree=(src.bytes_to_coordinator_ + src.bytes_to_parties_) / n_trees,
            exchanges=src.exchanges_ / n_trees,
        )
    )


def serve_one(args):
    """Child process of ``--transport flight``: one party's rows behind a Flight server with mutual TLS."""
    import numba

    numba.set_num_threads(max(1, args.threads // 2))
    from fedmine.party.organisation import Party, TrainValidRows
    from fedmine.party.server import run_party_server, serve_party
    from fedmine.transport.certs import server_tls

    X = np.load(os.path.join(args.serve_party, "X.npy"))
    y = np.load(os.path.join(args.serve_party, "y.npy"))
    name = os.path.basename(args.serve_party)
    party = Party(
        name,
        TrainValidRows(X, y, X[:0], y[:0]),
        objective="binary",
        num_class=1,
        feature_names=[f"f{i}" for i in range(X.shape[1])],
        categorical=[],
    )
    server = serve_party(party, port=args.port, tls=server_tls(args.certs, name))
    run_party_server(server, ready=lambda: print("ready", flush=True))


def flight_parties(args, X, y, workdir):
    """Start one Flight server process per party; return (remote parties, processes)."""
    import socket
    import subprocess

    from fedmine.coordinator.client import RemoteParty
    from fedmine.transport.certs import client_tls, init_ca, issue

    certs = os.path.join(workdir, "certs")
    init_ca(certs, federation="benchmark")
    issue(certs, "coordinator", kind="coordinator")
    remotes, procs = [], []
    for i, p in enumerate(np.array_split(np.arange(X.shape[0]), args.parties)):
        name = f"party{i}"
        issue(certs, name, kind="party")
        folder = os.path.join(workdir, name)
        os.makedirs(folder)
        np.save(os.path.join(folder, "X.npy"), X[p])
        np.save(os.path.join(folder, "y.npy"), y[p])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-party",
                folder,
                "--port",
                str(port),
                "--certs",
                certs,
                "--threads",
                str(args.threads),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        procs.append(proc)
        remotes.append(RemoteParty(name, f"grpc+tls://127.0.0.1:{port}", tls=client_tls(certs, "coordinator")))
    return remotes, procs


def run_federation(args, X, y, Xt, yt, out, secure: bool, transport: str = "inprocess"):
    """The engine driven as the histogram strategy drives it: parties behind Links, masks optional."""
    import tempfile

    import numba

    numba.set_num_threads(args.threads)
    from fedmine.coordinator.link import Link
    from fedmine.coordinator.strategies import FederationGroup
    from fedmine.gbdt import predict_raw, train_partitioned
    from fedmine.gbdt.booster import Trainer
    from fedmine.party.organisation import Party, TrainValidRows

    params = dict(
        objective="binary",
        num_leaves=args.num_leaves,
        max_bin=args.max_bin,
        learning_rate=0.1,
        min_data_in_leaf=20,
        num_boost_round=args.rounds,
    )
    train_partitioned([(X[:2000], y[:2000])], dict(params, num_boost_round=2))
    names = [f"party{i}" for i in range(args.parties)]
    parts = np.array_split(np.arange(X.shape[0]), args.parties)
    features = [f"f{i}" for i in range(X.shape[1])]
    procs = []
    if transport == "flight":
        workdir = tempfile.mkdtemp()
        parties, procs = flight_parties(args, X, y, workdir)
    else:
        parties = [
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
    links = [Link(p) for p in parties]
    if secure:
        keys = {link.name: link.call("secure_setup", "benchmark") for link in links}
        for link in links:
            link.call("secure_peers", keys)
    with RssPeak() as mem:
        t0 = time.perf_counter()
        c0 = time.process_time()
        group = FederationGroup.of(links, objective="binary", n_threads=args.parties)  # as the strategy batches
        trainer = Trainer(group, params, prefetch=True)
        trainer.start()
        calls0 = {link.name: link.calls for link in links}  # the rounds' round trips, not the setup's
        while not trainer.done:
            trainer.step()
        model = trainer.finish()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    for proc in procs:
        proc.terminate()
        proc.wait()
    raw = predict_raw(model.trees, Xt, init_scores=model.init_scores)[0]
    n_trees = max(len(model.trees), 1)
    name = ("fedmine+secagg" if secure else "fedmine") + ("/flight" if transport == "flight" else "")
    out.put(
        dict(
            name=name,
            wall=wall,
            cpu=cpu,
            peak=mem.extra_mb,
            auc=auc(yt, raw),
            bytes_per_tree=sum(link.bytes_sent + link.bytes_received for link in links) / n_trees,
            exchanges=group.source.exchanges_ / n_trees,
            round_trips=max(link.calls - calls0[link.name] for link in links) / n_trees,
        )
    )


def run_federation_plain(args, X, y, Xt, yt, out):
    run_federation(args, X, y, Xt, yt, out, secure=False)


def run_federation_secure(args, X, y, Xt, yt, out):
    run_federation(args, X, y, Xt, yt, out, secure=True)


def run_federation_flight(args, X, y, Xt, yt, out):
    run_federation(args, X, y, Xt, yt, out, secure=False, transport="flight")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=28)
    ap.add_argument("--parties", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--num-leaves", type=int, default=31)
    ap.add_argument("--max-bin", type=int, default=255)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["lightgbm", "engine"], default=None)
    ap.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="also train through the federation layer, plain and with secure aggregation",
    )
    ap.add_argument(
        "--transport",
        choices=["inprocess", "flight"],
        default="inprocess",
        help="flight: also train with every party in its own process behind Flight with mutual TLS",
    )
    ap.add_argument("--serve-party", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--certs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_party:
        return serve_one(args)

    X, y = make_data(args.rows, args.features)
    Xt, yt = make_data(max(args.rows // 10, 10_000), args.features, seed=1)
    ctx = mp.get_context("spawn")
    results = {}
    runners = [("lightgbm", run_lightgbm), ("engine", run_engine)]
    if args.secure_aggregation or args.transport == "flight":
        runners += [("fedmine", run_federation_plain)]
    if args.secure_aggregation:
        runners += [("fedmine+secagg", run_federation_secure)]
    if args.transport == "flight":
        runners += [("fedmine/flight", run_federation_flight)]
    for name, fn in runners:
        if args.only and args.only != name:
            continue
        q = ctx.Queue()
        proc = ctx.Process(target=fn, args=(args, X, y, Xt, yt, q))
        proc.start()
        results[name] = q.get()
        proc.join()

    print(
        f"rows={args.rows} features={args.features} parties={args.parties} rounds={args.rounds} "
        f"num_leaves={args.num_leaves} max_bin={args.max_bin} threads={args.threads}"
    )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores shared: CPU s are comparable)")
    print(
        f"{'':<15}{'train s':>10}{'ratio':>8}{'CPU s':>8}{'ratio':>8}{'+peak MB':>10}{'AUC':>9}"
        f"{'KB/tree':>10}{'exch/tree':>11}"
    )
    ref = results.get("lightgbm", {}).get("wall")
    ref_cpu = results.get("lightgbm", {}).get("cpu")
    for name, r in results.items():
        ratio = r["wall"] / ref if ref else float("nan")
        cpu_ratio = r["cpu"] / ref_cpu if ref_cpu else float("nan")
        print(
            f"{name:<15}{r['wall']:>10.2f}{ratio:>8.2f}{r['cpu']:>8.2f}{cpu_ratio:>8.2f}{r['peak']:>10.0f}"
            f"{r['auc']:>9.4f}{r['bytes_per_tree'] / 1024:>10.0f}{r['exchanges']:>11.1f}"
        )
    if "fedmine" in results and "fedmine+secagg" in results:
        s, p = results["fedmine+secagg"], results["fedmine"]
        print(f"secure aggregation / plain: {s['wall'] / p['wall']:.2f} wall, {s['cpu'] / p['cpu']:.2f} CPU")
    if "fedmine" in results and "fedmine/flight" in results:
        print(
            f"flight with mutual TLS / in-process: "
            f"{results['fedmine/flight']['wall'] / results['fedmine']['wall']:.2f}; "
            f"round trips per organisation per tree: {results['fedmine/flight']['round_trips']:.2f}"
        )


if __name__ == "__main__":
    main()
