"""Paillier histograms: decryption gives exactly the plain sums, on edges and in a property test; arrays round-trip."""

from __future__ import annotations

import os

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmine.privacy import paillier
from fedmine.privacy.paillier import (
    EncryptedRows,
    HomomorphicError,
    HomomorphicKeys,
    HomomorphicPublic,
    Layout,
    PackedHistograms,
    decrypt_histograms,
    encrypt_rows,
    encrypted_histograms,
)


@pytest.fixture(scope="module")
def keys():
    keys = HomomorphicKeys.generate()
    yield keys
    keys.close()


def plain_histograms(grad, hess, bins, node_rows, n_bins):
    """The reference: np.add.at over the node's rows, feature-major."""
    offsets = np.concatenate([[0], np.cumsum(n_bins)[:-1]]).astype(np.int64)
    out = [np.zeros(int(np.sum(n_bins)), dtype=np.int64) for _ in range(3)]
    for f in range(len(n_bins)):
        at = offsets[f] + bins[node_rows, f].astype(np.int64)
        np.add.at(out[0], at, grad[node_rows])
        np.add.at(out[1], at, hess[node_rows])
        np.add.at(out[2], at, 1)
    return out


def roundtrip(keys, grad, hess, bins, node_rows, n_bins, *, grad_bound, hess_bound, max_rows, workers=1):
    """The whole flow, every message through its wire array."""
    public = HomomorphicPublic.from_bytes(keys.public.to_bytes())
    rows = encrypt_rows(
        keys, grad, hess, grad_bound=grad_bound, hess_bound=hess_bound, max_rows=max_rows, workers=workers
    )
    received = EncryptedRows.from_array(public, rows.to_array())
    with received:
        packed = encrypted_histograms(public, received, bins, node_rows, n_bins, workers=workers)
    return decrypt_histograms(keys, PackedHistograms.from_array(keys.public, packed.to_array())), packed


def random_case(seed, n_rows, n_bins, *, grad_bound=2**20, hess_bound=2**19, node=None):
    rng = np.random.default_rng(seed)
    grad = rng.integers(-grad_bound, grad_bound + 1, n_rows)
    hess = rng.integers(0, hess_bound + 1, n_rows)
    bins = np.stack([rng.integers(0, b, n_rows) for b in n_bins], axis=1).astype(np.uint8)
    node_rows = np.sort(rng.choice(n_rows, node if node is not None else n_rows, replace=False)).astype(np.int64)
    return grad, hess, bins, node_rows, np.asarray(n_bins)


def assert_exact(got, want):
    for g, w, name in zip(got, want, ("grad", "hess", "count")):
        assert g.dtype == np.int64, name
        np.testing.assert_array_equal(g, w, err_msg=name)


def test_keys_are_2048_bit_and_decrypt_what_they_encrypt(keys):
    assert keys.public.bits == 2048 and keys.public.ciphertext_bytes == 512
    ms = [0, 1, 2**2000 + 12345, int(keys.public.n) - 1]
    fast = keys.encrypt_many(ms)
    slow = [keys.public.encrypt(m) for m in ms]
    assert [int(keys.decrypt(c)) for c in fast + slow] == ms + ms
    assert len({int(c) for c in fast}) == 4 and fast[0] != keys.encrypt_many([0])[0]  # fresh randomness
    # the product of ciphertexts decrypts to the sum of plaintexts
    a, b = keys.encrypt_many([10**30, 7])
    assert keys.decrypt(a * b % keys.public.n2) == 10**30 + 7
    assert "secret" in repr(keys)
    with pytest.raises(HomomorphicError, match=r"^homomorphic keys: bits must be even and at least 2048, got 1024$"):
        HomomorphicKeys.generate(bits=1024)


def test_opt_in_short_exponent_encrypts_the_same_plaintexts(keys, monkeypatch):
    short = HomomorphicKeys(keys._p, keys._q, keys.public.h_s, short_exponent_bits=448)
    assert short.tables()[0].windows == 45 and keys.tables()[0].windows == 103
    cts = short.encrypt_many([0, 99, 2**1500])
    assert [int(keys.decrypt(c)) for c in cts] == [0, 99, 2**1500]
    # both halves use one short alpha: the randomness is h_s^alpha modulo n^2 for the digits drawn
    digits = np.random.default_rng(0).integers(0, 2**10, (1, 45)).astype(np.uint16)
    monkeypatch.setattr(paillier._FixedBase, "random_digits", lambda self, count: digits.copy())
    (c,) = short.encrypt_many([99])
    alpha = sum(int(d) << (10 * i) for i, d in enumerate(digits[0]))
    n, n2 = keys.public.n, keys.public.n2
    assert alpha.bit_length() <= 450 and c == (1 + 99 * n) * gmpy2.powmod(keys.public.h_s, alpha, n2) % n2
    with pytest.raises(HomomorphicError, match=r"^homomorphic keys: short_exponent_bits must be at least 448"):
        HomomorphicKeys(keys._p, keys._q, keys.public.h_s, short_exponent_bits=100)


def test_key_holder_randomness_is_an_n_th_residue_of_h_s(keys):
    """The CRT path gives (1 + m n) * r with r in the subgroup of h_s: c^(order of h_s) is (1 + n)^(m order)."""
    p, q, n2 = keys._p, keys._q, keys.public.n2
    lam = (p - 1) * (q - 1) // 2  # the order of h_s divides lcm(p - 1, q - 1) = (p - 1)(q - 1) / 2
    (c,) = keys.encrypt_many([5])
    assert gmpy2.powmod(c, lam, n2) == gmpy2.powmod(1 + keys.public.n, 5 * lam, n2)


def test_histograms_equal_plain_sums_with_negative_gradients_and_pairs(keys):
    grad, hess, bins, node_rows, n_bins = random_case(1, 900, [32, 5, 17, 32, 3])
    (got, packed) = roundtrip(
        keys, grad, hess, bins, node_rows, n_bins, grad_bound=2**20, hess_bound=2**19, max_rows=900
    )
    assert_exact(got, plain_histograms(grad, hess, bins, node_rows, n_bins))
    assert (grad < 0).any()
    slots = packed.layout.slots(2048)
    assert len(packed) == -(-89 // slots) and slots > 1  # many bins per ciphertext


def test_values_at_the_bounds_and_bins_with_zero_rows(keys):
    gb, hb, n = 2**45 - 1, 2**44, 64
    grad = np.array([gb, -gb] * (n // 2), dtype=np.int64)
    hess = np.full(n, hb, dtype=np.int64)
    bins = np.zeros((n, 2), dtype=np.uint8)
    bins[: n // 2, 1] = 3  # feature 1: bins 0 and 3 used, 1, 2 and 4 empty
    grad[: n // 2] = gb  # bin 3 of feature 1 holds the largest possible sum
    node_rows = np.arange(n, dtype=np.int64)
    n_bins = np.array([1, 5])
    (got, _) = roundtrip(keys, grad, hess, bins, node_rows, n_bins, grad_bound=gb, hess_bound=hb, max_rows=n)
    want = plain_histograms(grad, hess, bins, node_rows, n_bins)
    assert_exact(got, want)
    assert got[0][4] == n // 2 * gb and got[2][2] == 0


def test_largest_layout_that_int64_allows(keys):
    n = 4
    gb = hb = (2**63 - 1) // n  # max_rows * bound = int64 max
    grad = np.array([gb, gb, -gb, gb], dtype=np.int64)
    hess = np.full(n, hb, dtype=np.int64)
    bins = np.zeros((n, 1), dtype=np.uint8)
    rows = np.arange(n, dtype=np.int64)
    (got, _) = roundtrip(keys, grad, hess, bins, rows, np.array([1]), grad_bound=gb, hess_bound=hb, max_rows=n)
    assert got[0].tolist() == [2 * gb] and got[1].tolist() == [n * hb] and got[2].tolist() == [n]
    with pytest.raises(HomomorphicError, match=r"^homomorphic rows: max_rows \* bound must fit int64"):
        encrypt_rows(keys, grad, hess, grad_bound=gb + 1, hess_bound=hb, max_rows=n, workers=1)


def test_empty_node_and_node_subsets(keys):
    grad, hess, bins, _, n_bins = random_case(2, 200, [4, 6])
    rows = encrypt_rows(keys, grad, hess, grad_bound=2**20, hess_bound=2**19, max_rows=200, workers=1)
    for node_rows in (np.array([], dtype=np.int64), np.array([7], dtype=np.int64), np.arange(0, 200, 3)):
        packed = encrypted_histograms(keys.public, rows, bins, node_rows, n_bins, workers=1)
        assert_exact(decrypt_histograms(keys, packed), plain_histograms(grad, hess, bins, node_rows, n_bins))
    empty = encrypted_histograms(keys.public, rows, bins, np.array([], dtype=np.int64), n_bins, workers=1)
    assert all(c != 1 for c in empty.ciphertexts)  # rerandomised: no tell-tale identity for empty bins


def test_packed_ciphertexts_are_rerandomised(keys):
    """The same node twice gives other ciphertexts (fresh h_s^beta) with the same sums."""
    grad, hess, bins, node_rows, n_bins = random_case(3, 100, [3])
    rows = encrypt_rows(keys, grad, hess, grad_bound=2**20, hess_bound=2**19, max_rows=100, workers=1)
    a = encrypted_histograms(keys.public, rows, bins, node_rows, n_bins, workers=1)
    b = encrypted_histograms(keys.public, rows, bins, node_rows, n_bins, workers=1)
    assert a.ciphertexts != b.ciphertexts
    assert_exact(decrypt_histograms(keys, a), decrypt_histograms(keys, b))


def test_uint16_bins_and_fortran_order(keys):
    grad, hess, bins, node_rows, n_bins = random_case(4, 300, [300, 2], node=250)
    wide = np.asfortranarray(bins.astype(np.uint16))
    wide[:, 0] = np.arange(300) % 300
    (got, _) = roundtrip(keys, grad, hess, wide, node_rows, n_bins, grad_bound=2**20, hess_bound=2**19, max_rows=300)
    assert_exact(got, plain_histograms(grad, hess, wide, node_rows, n_bins))


def test_worker_processes_give_the_same_sums(keys, monkeypatch):
    monkeypatch.setattr(paillier, "PARALLEL_MIN_ROWS", 50)
    grad, hess, bins, node_rows, n_bins = random_case(5, 240, [8, 8, 4], node=200)
    (got, _packed) = roundtrip(
        keys, grad, hess, bins, node_rows, n_bins, grad_bound=2**20, hess_bound=2**19, max_rows=240, workers=2
    )
    assert_exact(got, plain_histograms(grad, hess, bins, node_rows, n_bins))


def test_digits_are_the_base_2_to_the_window_digits():
    rng = np.random.default_rng(7)
    values = [int.from_bytes(rng.bytes(128), "little") for _ in range(5000)] + [0, 2**1024 - 1]
    for window, windows in ((10, 103), (13, 79)):
        got = paillier._digits(values, window, windows)
        want = [[(v >> (window * i)) & ((1 << window) - 1) for i in range(windows)] for v in values]
        assert got.tolist() == want


def test_randomisers_made_ahead_and_an_owner_pool_kept_across_trees(keys, monkeypatch):
    monkeypatch.setattr(paillier, "PARALLEL_MIN_ROWS", 50)
    holder = HomomorphicKeys(keys._p, keys._q, keys.public.h_s)
    public = HomomorphicPublic.from_bytes(keys.public.to_bytes())
    try:
        holder.prepare(240, workers=2, batches=2)
        assert len(holder._ahead) == 2
        pools, files = [], []
        for seed in (8, 9):  # two trees: the first's randomisers made ahead, the second's too
            grad, hess, bins, node_rows, n_bins = random_case(seed, 240, [8, 8, 4], node=200)
            rows = encrypt_rows(holder, grad, hess, grad_bound=2**20, hess_bound=2**19, max_rows=240, workers=2)
            received = EncryptedRows.from_array(public, rows.to_array())
            packed = encrypted_histograms(public, received, bins, node_rows, n_bins, workers=2)
            assert_exact(decrypt_histograms(keys, packed), plain_histograms(grad, hess, bins, node_rows, n_bins))
            pools.append(public._pool[1])
            files.append(received._file)
            assert os.path.exists(files[-1])
            received.close()
            assert not os.path.exists(files[-1])
        assert holder._ahead == [] and pools[0] is pools[1] and files[0] != files[1]
        # a batch of another size is not what was made ahead: made then, and right
        holder.prepare(300, workers=2)
        rows = encrypt_rows(holder, grad, hess, grad_bound=2**20, hess_bound=2**19, max_rows=240, workers=2)
        assert holder._ahead == []
        v = rows.layout.encode(grad, hess)
        assert [int(keys.decrypt(c)) for c in rows.ciphertexts] == v
    finally:
        holder.close()
        public.close()


def test_bounds_and_shapes_are_checked(keys):
    ok = dict(grad_bound=10, hess_bound=10, max_rows=3, workers=1)
    g, h = np.array([1, -2, 3]), np.array([0, 1, 2])
    with pytest.raises(HomomorphicError, match=r"^homomorphic rows: a gradient is outside \[-2, 2\]$"):
        encrypt_rows(keys, g, h, **{**ok, "grad_bound": 2})
    with pytest.raises(HomomorphicError, match=r"^homomorphic rows: a hessian is outside \[0, 10\]$"):
        encrypt_rows(keys, g, np.array([0, -1, 2]), **ok)
    with pytest.raises(HomomorphicError, match=r"^homomorphic rows: 3 rows, more than max_rows 2$"):
        encrypt_rows(keys, g, h, **{**ok, "max_rows": 2})
    with pytest.raises(HomomorphicError, match=r"grad and hess must be int64 arrays of one shape \(n_rows,\)"):
        encrypt_rows(keys, g.astype(np.int32), h, **ok)
    rows = encrypt_rows(keys, g, h, **ok)
    bins = np.array([[0], [1], [2]], dtype=np.uint8)
    with pytest.raises(HomomorphicError, match=r"^encrypted histograms: a bin index is >= its feature's n_bins$"):
        encrypted_histograms(keys.public, rows, bins, np.arange(3), np.array([2]), workers=1)
    with pytest.raises(HomomorphicError, match=r"^encrypted histograms: node_rows must lie in \[0, 3\)$"):
        encrypted_histograms(keys.public, rows, bins, np.array([3]), np.array([3]), workers=1)
    with pytest.raises(HomomorphicError, match=r"bins must be uint8 or uint16 of shape \(3, n_features\)"):
        encrypted_histograms(keys.public, rows, bins.astype(np.int64), np.arange(3), np.array([3]), workers=1)


def test_arrays_under_another_key_or_malformed_are_refused(keys):
    other = HomomorphicKeys.generate()
    g, h = np.array([1, 2]), np.array([0, 1])
    arr = encrypt_rows(keys, g, h, grad_bound=2, hess_bound=1, max_rows=2, workers=1).to_array()
    assert arr.dtype == np.uint8 and arr.shape == (3, 512)
    with pytest.raises(HomomorphicError, match=r"^encrypted rows: encrypted under another key"):
        EncryptedRows.from_array(other.public, arr)
    with pytest.raises(HomomorphicError, match=r"^encrypted rows: header says 2 rows, the array has 1$"):
        EncryptedRows.from_array(keys.public, arr[:2])
    with pytest.raises(HomomorphicError, match=r"^packed histograms: not a fedmine array of this kind"):
        PackedHistograms.from_array(keys.public, arr)
    with pytest.raises(HomomorphicError, match=r"must be a uint8 array of shape \(k, 512\), got uint8 \(3, 511\)"):
        EncryptedRows.from_array(keys.public, arr[:, :511])
    with pytest.raises(HomomorphicError, match=r"^homomorphic public key: not a fedmine public key"):
        HomomorphicPublic.from_bytes(b"nonsense")
    assert HomomorphicPublic.from_bytes(keys.public.to_bytes()) == keys.public


def test_answers_no_honest_owner_sends_are_refused(keys):
    grad, hess, bins, node_rows, n_bins = random_case(6, 50, [3, 4])
    rows = encrypt_rows(keys, grad, hess, grad_bound=2**20, hess_bound=2**19, max_rows=50, workers=1)
    packed = encrypted_histograms(keys.public, rows, bins, node_rows, n_bins, workers=1)
    n, n2 = keys.public.n, keys.public.n2
    too_big = PackedHistograms(keys.public, packed.layout, n_bins, [(1 + (n - 1) * n) % n2])
    with pytest.raises(HomomorphicError, match=r"^decrypt histograms: ciphertext 0 holds more than its \d+ bins$"):
        decrypt_histograms(keys, too_big)
    # one more row in feature 0's bin 0 only: the features' counts disagree
    extra = packed.ciphertexts[0] * keys.encrypt_many([1])[0] % n2
    with pytest.raises(HomomorphicError, match=r"^decrypt histograms: the features count \[50, 51\] rows"):
        decrypt_histograms(keys, PackedHistograms(keys.public, packed.layout, n_bins, [extra]))
    # a count of one with a hessian no row can have
    bad = packed.ciphertexts[0] * keys.encrypt_many([(2**24) << packed.layout.count_bits])[0] % n2
    with pytest.raises(HomomorphicError, match=r"^decrypt histograms: bin 0 decodes outside the layout's bounds"):
        decrypt_histograms(keys, PackedHistograms(keys.public, packed.layout, n_bins, [bad]))


def test_layout_fields_hold_any_sum_of_max_rows():
    lay = Layout(grad_bound=5, hess_bound=3, max_rows=7)
    assert (lay.grad_bits, lay.hess_bits, lay.count_bits) == ((7 * 10).bit_length(), (7 * 3).bit_length(), 3)
    total = sum(lay.encode(np.array([5] * 7), np.array([3] * 7)))
    assert lay.decode(total) == (35, 21, 7)
    total = sum(lay.encode(np.array([-5] * 7), np.array([0] * 7)))
    assert lay.decode(total) == (-35, 0, 7)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 40),
    st.lists(st.integers(1, 9), min_size=1, max_size=4),
    st.integers(0, 2**62),
    st.integers(0, 2**30),
    st.data(),
)
def test_property_exact_sums(keys, n_rows, n_bins, grad_bound, hess_bound, data):
    grad_bound = min(grad_bound, (2**63 - 1) // n_rows)
    grad = np.array(data.draw(st.lists(st.integers(-grad_bound, grad_bound), min_size=n_rows, max_size=n_rows)))
    hess = np.array(data.draw(st.lists(st.integers(0, hess_bound), min_size=n_rows, max_size=n_rows)))
    bins = np.array(
        [[data.draw(st.integers(0, b - 1)) for b in n_bins] for _ in range(n_rows)], dtype=np.uint8
    ).reshape(n_rows, len(n_bins))
    node_rows = np.array(sorted(data.draw(st.sets(st.integers(0, n_rows - 1)))), dtype=np.int64)
    grad, hess = grad.astype(np.int64), hess.astype(np.int64)
    rows = encrypt_rows(keys, grad, hess, grad_bound=grad_bound, hess_bound=hess_bound, max_rows=n_rows, workers=1)
    packed = encrypted_histograms(keys.public, rows, bins, node_rows, np.array(n_bins), workers=1)
    assert_exact(decrypt_histograms(keys, packed), plain_histograms(grad, hess, bins, node_rows, np.array(n_bins)))
