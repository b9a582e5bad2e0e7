"""The vertical federation's cryptography at benchmark size: PSI, Paillier histograms, and a lattice scheme.

Usage::

    python benchmarks/vertical_crypto.py [--psi-ids 1000000] [--rows 100000 --features 10 --bins 32 --leaves 31]
        [--workers 2] [--short-exponent] [--skip-psi] [--skip-tree] [--skip-lattice]

Prints, with the machine's load average beside the figures (other work on a
shared machine slows every figure):

- PSI: two organisations of ``--psi-ids`` ids each, half of them shared, the
  whole message flow in one process (normalise, blind, reblind, intersect);
  total time and ids per second (goal: 1M x 2 in at most 120 s on 2 cores);
- Paillier primitives at 2048 bits: encryption per row (the key holder's CRT
  path and the public path), homomorphic addition, packing squaring,
  rerandomisation, decryption per ciphertext, bytes, bins per ciphertext;
- one tree's encrypted histograms, measured and estimated from the
  primitives: the label holder encrypts ``--rows`` rows once, the owner
  builds the encrypted histograms of the nodes a real LightGBM tree of
  ``--leaves`` leaves requests (its root, then the smaller child of every
  split, the owner's ``--features`` features binned in ``--bins``), the
  label holder decrypts; beside the plain histograms of the same nodes and
  LightGBM growing the tree on the joined table (ratios printed); bytes per
  tree (goal: at most 30 s per tree on 2 cores, stretch 5 s);
- BFV (SEAL through TenSEAL's ``sealapi``, when installed: ``pip install
  tenseal==0.3.18``) on the same histogram workload with coefficient encoding
  (one plaintext-ciphertext product per chunk of rows per feature, the bins'
  sums read from fixed coefficients, no rotations): its primitives measured,
  the tree extrapolated from them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fedmine.privacy import paillier, psi


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker pools): robust to other load."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


# ---------------------------------------------------------------------------
# PSI
# ---------------------------------------------------------------------------


def run_psi(n_ids: int, workers: int) -> None:
    rng = np.random.default_rng(0)
    a_ids = [f"Cust-{i:08d}" for i in rng.permutation(n_ids)]
    b_ids = [f" cust-{i:08d}" for i in rng.permutation(np.arange(n_ids // 2, n_ids // 2 + n_ids))]
    salt = "federation-salt:"
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    ka, kb = psi.PsiKey.generate(), psi.PsiKey.generate()
    xa, xb = psi.normalise_ids(a_ids, salt=salt), psi.normalise_ids(b_ids, salt=salt)
    t_norm = time.perf_counter() - t0
    a, t_a = timed(ka.blind, xa, workers=workers)  # A -> B
    b, t_b = timed(kb.blind, xb, workers=workers)  # B -> A
    ab, t_ab = timed(kb.reblind, a, workers=workers)  # B -> A, A's order
    ba, t_ba = timed(ka.reblind, b, workers=workers)  # A -> B, sorted before sending

    def sort(points):
        return np.sort(points.view("S32").ravel()).view(np.uint8).reshape(-1, 32)

    pos_a, t_ia = timed(psi.shared_positions, ab, [sort(ba)])
    pos_b, t_ib = timed(psi.shared_positions, ba, [sort(ab)])
    total, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    ok = len(pos_a) == n_ids // 2 and all(
        a_ids[i].strip().lower() == b_ids[j].strip().lower() for i, j in zip(pos_a, pos_b)
    )
    print(f"PSI  {n_ids:,} ids x 2 organisations, 50% shared, {workers} workers ({load()})")
    print(
        f"  normalise {t_norm:.1f} s, blind {t_a:.1f} + {t_b:.1f} s, reblind {t_ab:.1f} + {t_ba:.1f} s, "
        f"intersect {t_ia:.2f} + {t_ib:.2f} s"
    )
    ops = 4 * n_ids
    print(
        f"  total {total:.1f} s (goal <= 120 s): {2 * n_ids / total:,.0f} ids/s, "
        f"{ops / (t_a + t_b + t_ab + t_ba):,.0f} X25519 ops/s; shared {len(pos_a):,}, same rows both sides: {ok}"
    )
    print(
        f"  CPU time (all processes): {cpu:.1f} s, {cpu / workers:.1f} s per core on {workers} cores "
        f"({2 * n_ids / (cpu / workers):,.0f} ids/s): the wall time on an idle machine, at best"
    )


# ---------------------------------------------------------------------------
# Paillier primitives
# ---------------------------------------------------------------------------


def per_op(fn, count: int) -> float:
    t = time.process_time()
    fn(count)
    return (time.process_time() - t) / count


def primitives(keys: paillier.HomomorphicKeys) -> dict[str, float]:
    import gmpy2

    public = keys.public
    n2 = public.n2
    keys.tables()
    public.rerandomiser()
    cts = keys.encrypt_many(list(range(200)))
    short = paillier.HomomorphicKeys(keys._p, keys._q, public.h_s, short_exponent_bits=paillier.SHORT_EXPONENT_MIN)
    short.tables()
    out = {
        "encrypt (key holder)": per_op(lambda k: keys.encrypt_many(list(range(k))), 1000),
        "encrypt (key holder, short exponent)": per_op(lambda k: short.encrypt_many(list(range(k))), 1000),
        "encrypt (public)": per_op(lambda k: [public.encrypt(5) for _ in range(k)], 100),
        "addition": per_op(lambda k: [cts[i % 200] * cts[(i + 1) % 200] % n2 for i in range(k)], 100_000),
        "squaring": per_op(lambda k: [gmpy2.powmod(cts[0], 1 << k, n2)], 20_000),
        "rerandomise": per_op(lambda k: [public.encrypt(0) for _ in range(k)], 100),
        "decrypt": per_op(lambda k: [keys.decrypt(cts[i % 200]) for i in range(k)], 200),
    }
    return out


# ---------------------------------------------------------------------------
# one tree
# ---------------------------------------------------------------------------


def make_data(n_rows: int, n_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 2 * n_features))
    w = rng.normal(size=2 * n_features)
    z = X @ w / np.sqrt(2 * n_features) + 0.5 * np.sin(2 * X[:, 0]) * X[:, n_features]
    y = (z + rng.logistic(size=n_rows) * 0.7 > 0).astype(np.float64)
    return X, y


def lightgbm_tree(X, y, leaves: int, bins: int, threads: int):
    """LightGBM's first tree on the joined table: its time per tree, and the rows of each requested node."""
    import lightgbm as lgb

    params = dict(
        objective="binary", num_leaves=leaves, max_bin=bins - 1, learning_rate=0.1, verbose=-1,
        num_threads=threads, min_data_in_leaf=20,
    )  # fmt: skip
    data = lgb.Dataset(X, y, params=params).construct()
    t = time.perf_counter()
    booster = lgb.train(params, data, num_boost_round=10)
    per_tree = (time.perf_counter() - t) / 10
    tree = booster.dump_model(num_iteration=1)["tree_info"][0]["tree_structure"]
    leaf_of_row = booster.predict(X, pred_leaf=True, num_iteration=1).astype(np.int64).ravel()

    def leaves_under(node):
        if "leaf_index" in node:
            return [node["leaf_index"]]
        return leaves_under(node["left_child"]) + leaves_under(node["right_child"])

    def count(node):
        return node["leaf_count"] if "leaf_index" in node else node["internal_count"]

    requests = [np.arange(len(X), dtype=np.int64)]
    stack = [tree]
    while stack:
        node = stack.pop()
        if "leaf_index" in node:
            continue
        left, right = node["left_child"], node["right_child"]
        smaller = left if count(left) <= count(right) else right
        requests.append(np.flatnonzero(np.isin(leaf_of_row, leaves_under(smaller))).astype(np.int64))
        stack += [left, right]
    return per_tree, requests


def quantile_bins(X: np.ndarray, bins: int) -> np.ndarray:
    edges = np.quantile(X, np.linspace(0, 1, bins + 1)[1:-1], axis=0)
    out = np.empty(X.shape, dtype=np.uint8, order="F")
    for f in range(X.shape[1]):
        out[:, f] = np.searchsorted(edges[:, f], X[:, f])
    return out


def plain_histograms(grad, hess, bins, node_rows, n_bins):
    """The reference: int64 sums per (feature, bin) with np.add.at, feature-major."""
    offsets = np.concatenate([[0], np.cumsum(n_bins)[:-1]])
    g, h, c = (np.zeros(int(n_bins.sum()), dtype=np.int64) for _ in range(3))
    for f in range(bins.shape[1]):
        at = offsets[f] + bins[node_rows, f]
        np.add.at(g, at, grad[node_rows])
        np.add.at(h, at, hess[node_rows])
        np.add.at(c, at, 1)
    return g, h, c


def run_tree(args, keys: paillier.HomomorphicKeys, ops: dict[str, float]) -> list[np.ndarray]:
    from fedmine.gbdt.quantize import choose_scale, max_abs_quantized

    n, F, B = args.rows, args.features, args.bins
    X, y = make_data(n, F)
    lgb_tree, requests = lightgbm_tree(X, y, args.leaves, B, args.workers)
    bins = quantile_bins(X[:, F:], B)  # the owner's features
    n_bins = np.full(F, B, dtype=np.int64)
    # binary log-loss at the start: p = mean(y); the engine's fixed point (docs/gbdt.md)
    p = y.mean()
    g_scale, h_scale = choose_scale(1.0, n), choose_scale(0.25, n)
    grad = np.round((p - y) * g_scale).astype(np.int64)
    hess = np.round(np.full(n, p * (1 - p)) * h_scale).astype(np.int64)
    gb, hb = max_abs_quantized(1.0, g_scale), max_abs_quantized(0.25, h_scale)
    layout = paillier.Layout(gb, hb, n)
    slots = layout.slots(keys.public.bits)
    sizes = [len(r) for r in requests]
    print(
        f"TREE {n:,} rows, owner's {F} features x {B} bins, {args.leaves} leaves: {len(requests)} requests "
        f"(root + smaller children, {sum(sizes):,} rows in all, from LightGBM's first tree); "
        f"{layout.slot_bits}-bit bins, {slots} per ciphertext; {args.workers} workers ({load()})"
    )
    # estimate from the primitives (one core), divided by the workers
    n_ct = -(-F * B // slots)
    adds = 0
    for m in sizes:
        for group in paillier._groups(m, n_bins):
            adds += m + (2 * min(m, B * B) if len(group) == 2 else 0)
    est = {
        "encrypt": n * ops["encrypt (key holder)"],
        "histograms": adds * ops["addition"],
        "packing": len(sizes) * F * B * layout.slot_bits * ops["squaring"],
        "rerandomise": len(sizes) * n_ct * ops["rerandomise"],
        "decrypt": len(sizes) * n_ct * ops["decrypt"],
    }
    est_total = sum(est.values())
    print(
        "  estimate (one core): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in est.items())
        + f"; total {est_total:.1f} s, {est_total / args.workers:.1f} s on {args.workers} cores"
    )
    short = est_total - est["encrypt"] + n * ops["encrypt (key holder, short exponent)"]
    print(
        f"  with the opt-in {paillier.SHORT_EXPONENT_MIN}-bit exponent: encrypt "
        f"{n * ops['encrypt (key holder, short exponent)']:.1f} s, total {short:.1f} s, "
        f"{short / args.workers:.1f} s on {args.workers} cores"
    )
    # measured
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    rows, t_enc = timed(
        paillier.encrypt_rows, keys, grad, hess, grad_bound=gb, hess_bound=hb, max_rows=n, workers=args.workers
    )
    wire_rows = rows.to_array()
    received = paillier.EncryptedRows.from_array(keys.public, wire_rows)
    t_hist = t_dec = 0.0
    bytes_hist = 0
    exact = True
    with received:
        for node_rows in requests:
            packed, dt = timed(
                paillier.encrypted_histograms, keys.public, received, bins, node_rows, n_bins, workers=args.workers
            )
            t_hist += dt
            arr = packed.to_array()
            bytes_hist += arr.nbytes
            got, dt = timed(paillier.decrypt_histograms, keys, paillier.PackedHistograms.from_array(keys.public, arr))
            t_dec += dt
            want = plain_histograms(grad, hess, bins, node_rows, n_bins)
            exact &= all(np.array_equal(a, b) for a, b in zip(got, want))
    keys.close()  # the worker pools (the key holder's and the owner's): their CPU time counts once they exit
    keys.public.close()
    total, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    t = time.perf_counter()
    for node_rows in requests:
        plain_histograms(grad, hess, bins, node_rows, n_bins)
    t_plain = time.perf_counter() - t
    print(
        f"  measured: encrypt {t_enc:.1f} s, owner's histograms {t_hist:.1f} s, decrypt {t_dec:.1f} s; "
        f"total {total:.1f} s per tree (goal <= 30 s, stretch 5 s); exact: {exact}"
    )
    print(
        f"  CPU time of the tree (all processes, checks included): {cpu:.1f} s, {cpu / args.workers:.1f} s per core "
        f"on {args.workers} cores: the wall time on an idle machine, at best"
    )
    print(
        f"  beside: plain histograms of the same nodes {t_plain:.2f} s ({total / t_plain:,.0f}x), "
        f"LightGBM's whole tree on the joined table {lgb_tree * 1e3:.0f} ms ({total / lgb_tree:,.0f}x)"
    )
    print(
        f"  bytes per tree: rows {wire_rows.nbytes / 1e6:.1f} MB to each owner, histograms "
        f"{bytes_hist / 1e3:.0f} KB back ({len(requests)} nodes); public key {len(keys.public.to_bytes())} B"
    )
    return requests


# ---------------------------------------------------------------------------
# lattice
# ---------------------------------------------------------------------------


def run_lattice(args, requests) -> None:
    try:
        import tenseal.sealapi as seal
    except ImportError:
        print("BFV  skipped: pip install tenseal==0.3.18 to measure the lattice scheme")
        return
    N = 8192
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(N)
    parms.set_coeff_modulus(seal.CoeffModulus.BFVDefault(N, seal.SEC_LEVEL_TYPE.TC128))
    parms.set_plain_modulus(seal.PlainModulus.Batching(N, 40))
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    keygen = seal.KeyGenerator(ctx)
    pk = seal.PublicKey()
    keygen.create_public_key(pk)
    enc, dec, ev = seal.Encryptor(ctx, pk), seal.Decryptor(ctx, keygen.secret_key()), seal.Evaluator(ctx)
    B = args.bins
    C = N // B  # rows per ciphertext: bin b's sum lands at coefficient b*C + C-1
    rng = np.random.default_rng(0)

    def poly(coeffs) -> seal.Plaintext:
        terms = [f"{int(c):X}x^{i}" for i, c in reversed(list(enumerate(coeffs))) if c and i]
        if coeffs[0]:
            terms.append(f"{int(coeffs[0]):X}")
        return seal.Plaintext(" + ".join(terms) if terms else "0")

    vals = rng.integers(0, 2**21, C)
    data = poly(vals)
    ct = seal.Ciphertext()

    def clock(fn, k):
        t = time.process_time()
        for _ in range(k):
            fn()
        return (time.process_time() - t) / k

    t_enc = clock(lambda: enc.encrypt(data, ct), 20)
    row_bins = rng.integers(0, B, C)
    ind = np.zeros(N, dtype=np.int64)
    ind[row_bins * C + C - 1 - np.arange(C)] = 1
    t_pt = clock(lambda: poly(ind), 20)
    ipt = poly(ind)
    out = seal.Ciphertext()
    t_mul = clock(lambda: ev.multiply_plain(ct, ipt, out), 30)
    ct_ntt, pt_ntt = seal.Ciphertext(), seal.Plaintext()
    ev.transform_to_ntt(ct, ct_ntt)
    t_pt_ntt = clock(lambda: ev.transform_to_ntt(ipt, ct_ntt.parms_id(), pt_ntt), 30)
    t_mul_ntt = clock(lambda: ev.multiply_plain(ct_ntt, pt_ntt, out), 30)
    acc = seal.Ciphertext()
    ev.add(out, out, acc)
    t_add = clock(lambda: ev.add_inplace(acc, out), 200)
    res = seal.Plaintext()
    ev.multiply_plain(ct, ipt, out)
    dec.decrypt(out, res)
    exact = [res.data(b * C + C - 1) for b in range(B)] == [int(vals[row_bins == b].sum()) for b in range(B)]
    t_dec = clock(lambda: dec.decrypt(out, res), 20)
    with tempfile.TemporaryDirectory() as d:
        ct.save(os.path.join(d, "ct"))
        ct_bytes = os.path.getsize(os.path.join(d, "ct"))
    # 62-bit fixed-point sums in a 40-bit plaintext modulus: 3 limbs of 21 bits each for grad and for hess
    limbs = 6
    n, F = args.rows, args.features
    per_product = t_pt_ntt + t_mul_ntt + t_add  # the NTT path, plaintext building in C++ assumed free
    n_ct = -(-n // C) * limbs
    touched = sum(len(np.unique(r // C)) for r in requests)  # rows in the shared order: every chunk a node touches
    gathered = sum(-(-len(r) // C) for r in requests)  # rows re-encrypted per node in its own order
    est_enc = n_ct * t_enc
    est_dec = len(requests) * F * limbs * t_dec
    print(f"BFV  N={N}, 128-bit security (SEAL default moduli), 40-bit plaintext modulus ({load()})")
    print(
        f"  encrypt {t_enc * 1e3:.2f} ms per ciphertext ({C} rows), "
        f"indicator plaintext from Python {t_pt * 1e3:.2f} ms, "
        f"plain product {t_mul * 1e3:.2f} ms (NTT form: plaintext NTT {t_pt_ntt * 1e3:.2f} + product "
        f"{t_mul_ntt * 1e3:.2f} ms), addition {t_add * 1e3:.3f} ms, decrypt {t_dec * 1e3:.2f} ms, "
        f"{ct_bytes / 1e3:.0f} KB per ciphertext; exact: {exact}"
    )
    for label, chunks, extra in (
        ("rows in the shared order", touched, 0.0),
        ("rows re-encrypted per node", gathered, gathered * limbs * t_enc),
    ):
        est_hist = chunks * F * limbs * per_product
        total = est_enc + extra + est_hist + est_dec
        print(
            f"  tree estimate, {label} (one core, {limbs} limb polynomials for 62-bit grad and hess, no masking "
            f"or noise flooding): encrypt {est_enc + extra:.1f} s, histograms {est_hist:.1f} s "
            f"({chunks * F * limbs:,} products), decrypt {est_dec:.1f} s; total {total:.1f} s; "
            f"rows {(n_ct + gathered * limbs * (extra > 0)) * ct_bytes / 1e6:,.0f} MB to each owner"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--psi-ids", type=int, default=1_000_000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--bins", type=int, default=32)
    ap.add_argument("--leaves", type=int, default=31)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--short-exponent", action="store_true", help="measure the tree with the opt-in short exponent")
    ap.add_argument("--skip-psi", action="store_true")
    ap.add_argument("--skip-tree", action="store_true")
    ap.add_argument("--skip-lattice", action="store_true")
    args = ap.parse_args()
    if not args.skip_psi:
        run_psi(args.psi_ids, args.workers)
    short = paillier.SHORT_EXPONENT_MIN if args.short_exponent else None
    keys, t_key = timed(paillier.HomomorphicKeys.generate, short_exponent_bits=short)
    ops = primitives(keys)
    layout_note = f"{keys.public.bits}-bit n, {keys.public.ciphertext_bytes} B per ciphertext"
    print(f"PAILLIER {layout_note}, key generation {t_key:.2f} s ({load()}); per operation, one core:")
    print("  " + ", ".join(f"{k} {v * 1e6:,.1f} us" for k, v in ops.items()))
    requests = [np.arange(args.rows)]
    if not args.skip_tree:
        requests = run_tree(args, keys, ops)
    if not args.skip_lattice:
        run_lattice(args, requests)


if __name__ == "__main__":
    main()
