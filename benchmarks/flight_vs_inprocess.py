"""The histogram strategy over Arrow Flight with mutual TLS on loopback against the same training in process.

Usage::

    python benchmarks/flight_vs_inprocess.py --rows 1000000 --features 28 --parties 4 \
        [--rounds 100 --num-leaves 31 --max-bin 255 --threads 2] [--lookahead 2,7] [--no-secure-aggregation]

Both runs go through the coordinator as ``fedmine run`` drives it
(:class:`~fedmine.coordinator.training.Coordinator`, the histogram strategy,
secure aggregation on by default, an evaluation every round), on the same
HIGGS-like rows split over ``--parties`` organisations:

- ``in-process``: every organisation's ``Party`` in the coordinator's process;
- ``flight``: every organisation in its own process behind a Flight server with
  mutual TLS on 127.0.0.1, reached through ``RemoteParty``.

For each ``--lookahead`` it prints wall seconds of the training (start, rounds,
model), CPU seconds (the coordinator's process, and under flight the party
processes too, from /proc during the training; "coord CPU" is the
coordinator's process alone), KB per tree both ways,
histogram exchanges per tree, round trips per organisation per tree (every
call an organisation answered, a batch counted once, of the busiest
organisation), whether the two models are the same bits, and the
flight / in-process ratio. The machine's load (``uptime``) is printed before and
after: figures taken while other work runs are not comparable with idle ones.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import resource
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from histogram_vs_lightgbm import make_data


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def features(n: int) -> list[str]:
    return [f"f{i}" for i in range(n)]


def make_party(name: str, X, y):
    from fedmine.party.organisation import Party, TrainValidRows

    return Party(
        name,
        TrainValidRows(X, y, X[:0], y[:0]),
        objective="binary",
        num_class=1,
        feature_names=features(X.shape[1]),
        categorical=[],
    )


def config(args, names: list[str], lookahead: int):
    from fedmine.config import config_from_dict

    return config_from_dict(
        {
            "name": "benchmark",
            "label": "y",
            "objective": "binary",
            "features": {f: {} for f in features(args.features)},
            "organisations": {n: {"source": f"{n}.parquet"} for n in names},
            "privacy": {"secure_aggregation": not args.no_secure_aggregation},
            "training": {
                "strategy": "histogram",
                "rounds": args.rounds,
                "num_leaves": args.num_leaves,
                "max_bin": args.max_bin,
                "learning_rate": 0.1,
                "min_data_in_leaf": 20,
                "validation_fraction": 0.0,
                "lookahead": lookahead,
                "num_threads": args.threads,
            },
        }
    )


def warm(X, y) -> None:
    """Compile (or load) the numba kernels on a tiny run, so no run counts it."""
    from fedmine.gbdt import train_partitioned

    train_partitioned([(X[:2000], y[:2000])], dict(objective="binary", num_leaves=7, num_boost_round=2))


def serve_one(args) -> None:
    """Child process: one organisation's rows behind a Flight server with mutual TLS."""
    import numba

    numba.set_num_threads(max(1, args.threads // 2))
    from fedmine.party.server import run_party_server, serve_party
    from fedmine.transport.certs import server_tls

    X = np.load(os.path.join(args.serve_party, "X.npy"))
    y = np.load(os.path.join(args.serve_party, "y.npy"))
    warm(X, y)
    name = os.path.basename(args.serve_party)
    server = serve_party(make_party(name, X, y), port=args.port, tls=server_tls(args.certs, name))
    run_party_server(server, ready=lambda: print("ready", flush=True))


def start_servers(args, parts, workdir: str):
    """One Flight server process per organisation; (remote parties, processes)."""
    from fedmine.coordinator.client import RemoteParty
    from fedmine.transport.certs import client_tls, init_ca, issue

    certs = os.path.join(workdir, "certs")
    init_ca(certs, federation="benchmark")
    issue(certs, "coordinator", kind="coordinator")
    remotes, procs = [], []
    for name, (X, y) in parts.items():
        issue(certs, name, kind="party")
        folder = os.path.join(workdir, name)
        os.makedirs(folder)
        np.save(os.path.join(folder, "X.npy"), X)
        np.save(os.path.join(folder, "y.npy"), y)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, __file__, "--serve-party", folder, "--port", str(port), "--certs", certs]
        proc = subprocess.Popen([*cmd, "--threads", str(args.threads)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
    for name, proc in zip(parts, procs):
        assert proc.stdout.readline().strip() == "ready", name
        remotes.append(RemoteParty(name, f"grpc+tls://127.0.0.1:{port_of(proc)}", tls=client_tls(certs, "coordinator")))
    return remotes, procs


def port_of(proc) -> int:
    return int(proc.args[proc.args.index("--port") + 1])


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args, X, y, transport: str, lookahead: int, out) -> None:
    """One training through the coordinator; its figures on ``out``."""
    import numba

    numba.set_num_threads(args.threads)
    from fedmine.coordinator.training import Coordinator

    warm(X, y)
    names = [f"party{i}" for i in range(args.parties)]
    parts = {n: (X[p], y[p]) for n, p in zip(names, np.array_split(np.arange(X.shape[0]), args.parties))}
    procs = []
    if transport == "flight":
        parties, procs = start_servers(args, parts, tempfile.mkdtemp())
    else:
        parties = [make_party(n, *xy) for n, xy in parts.items()]
    coord = Coordinator(config(args, names, lookahead), parties)
    own0, parties0 = time.process_time(), sum(cpu_of(p.pid) for p in procs)
    t0 = time.perf_counter()
    coord.start()
    calls0 = {link.name: link.calls for link in coord.links}
    results = []
    for r in range(1, args.rounds + 1):
        results.append(coord.run_round(r))
        if results[-1].stopped:
            break
    text = coord.model_text()
    wall = time.perf_counter() - t0
    own, party_cpu = time.process_time() - own0, sum(cpu_of(p.pid) for p in procs) - parties0
    for proc in procs:
        proc.terminate()
        proc.wait()
    n_trees = max(coord.strategy.num_trees(coord._ctx), 1)
    trips = max(link.calls - calls0[link.name] for link in coord.links)
    out.put(
        dict(
            transport=transport,
            lookahead=lookahead,
            wall=wall,
            cpu=own + party_cpu,
            coordinator_cpu=own,
            kb_per_tree=sum(r.bytes_sent + r.bytes_received for r in results) / n_trees / 1024,
            exchanges=sum(r.stats.get("train/histogram_exchanges", 0.0) for r in results) / n_trees,
            trips=trips / n_trees,
            party_seconds=sum(r.stats.get("seconds/party", 0.0) for r in results),
            model=text,
        )
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=28)
    ap.add_argument("--parties", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--num-leaves", type=int, default=31)
    ap.add_argument("--max-bin", type=int, default=255)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lookahead", default=None, help="comma-separated lookaheads to measure (default: the default)")
    ap.add_argument("--only", choices=["inprocess", "flight"], default=None)
    ap.add_argument("--no-secure-aggregation", action="store_true")
    ap.add_argument("--serve-party", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--certs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_party:
        return serve_one(args)
    from fedmine.gbdt.params import Params

    lookaheads = [int(v) for v in args.lookahead.split(",")] if args.lookahead else [Params().lookahead]
    X, y = make_data(args.rows, args.features)
    print(f"load before: {load()}", flush=True)
    ctx = mp.get_context("spawn")
    results = []
    for lookahead in lookaheads:
        for transport in ("inprocess", "flight"):
            if args.only and args.only != transport:
                continue
            q = ctx.Queue()
            proc = ctx.Process(target=run, args=(args, X, y, transport, lookahead, q))
            proc.start()
            while True:
                try:
                    results.append(q.get(timeout=5))
                    break
                except queue.Empty:
                    if not proc.is_alive():
                        raise SystemExit(f"the {transport} run failed (exit code {proc.exitcode})") from None
            proc.join()
    print(f"load after: {load()}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"rows={args.rows} features={args.features} parties={args.parties} rounds={args.rounds} "
        f"num_leaves={args.num_leaves} max_bin={args.max_bin} threads={args.threads} "
        f"secure_aggregation={not args.no_secure_aggregation}; all runs' CPU {usage.ru_utime + usage.ru_stime:.1f} s"
    )
    print(
        f"{'transport':<11}{'lookahead':>10}{'train s':>9}{'CPU s':>8}{'coord CPU':>10}{'KB/tree':>9}{'exch/tree':>10}"
        f"{'trips/org/tree':>15}{'party s':>9}"
    )
    for r in results:
        print(
            f"{r['transport']:<11}{r['lookahead']:>10}{r['wall']:>9.2f}{r['cpu']:>8.1f}{r['coordinator_cpu']:>10.1f}"
            f"{r['kb_per_tree']:>9.0f}{r['exchanges']:>10.2f}{r['trips']:>15.2f}{r['party_seconds']:>9.2f}"
        )
    for lookahead in lookaheads:
        pair = {r["transport"]: r for r in results if r["lookahead"] == lookahead}
        if len(pair) == 2:
            a, b = pair["inprocess"], pair["flight"]
            same = "same model" if a["model"] == b["model"] else "MODELS DIFFER"
            print(f"lookahead {lookahead}: flight with mutual TLS / in-process: {b['wall'] / a['wall']:.2f} ({same})")


if __name__ == "__main__":
    main()
