"""Secure aggregation: masks cancel exactly, look uniform alone, and are never reused."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedmine.errors import ConfigError
from fedmine.privacy.secure_agg import (
    MAX_STREAM_ENTRIES,
    KeyPair,
    Masker,
    SecureAggregationError,
    SecureAggregationWarning,
    generate_keypair,
    mask_stream,
    message_nonce,
    pairwise_seed,
    require_min_parties,
    unmask_sum,
)

I64 = np.iinfo(np.int64)
NAMES = ("alpha", "bravo", "charlie", "delta")


def federation(names=NAMES, training_id="train-1"):
    keys = {n: generate_keypair() for n in names}
    public = {n: keys[n].public_bytes for n in names}
    return keys, {n: Masker(n, keys[n], public, training_id) for n in names}


@pytest.fixture(scope="module")
def four():
    return federation()


def edge_arrays(n_parties, shape, seed=0):
    """Arrays with negative values and values near the int64 edge whose true sum still fits int64."""
    rng = np.random.default_rng(seed)
    xs = [
        rng.integers(I64.min // n_parties, I64.max // n_parties, size=shape, dtype=np.int64) for _ in range(n_parties)
    ]
    for i, x in enumerate(xs[1:], start=1):
        x.flat[0], x.flat[1] = 2**40 + i, -(2**40) - i
    xs[0].flat[0] = I64.max - sum(int(x.flat[0]) for x in xs[1:])  # the sum is exactly int64 max
    xs[0].flat[1] = I64.min - sum(int(x.flat[1]) for x in xs[1:])  # the sum is exactly int64 min
    for x, v in itertools.zip_longest(xs, (I64.max, I64.max, -I64.max), fillvalue=0):
        x.flat[2] = v  # partial sums overflow int64, the total (int64 max) does not
    return xs


def exact_sum(xs):
    return np.array([sum(int(x.flat[i]) for x in xs) for i in range(xs[0].size)], dtype=object).reshape(xs[0].shape)


# ---------------------------------------------------------------------------
# masks cancel
# ---------------------------------------------------------------------------


def test_masks_cancel_exactly_near_the_int64_edge(four):
    _, maskers = four
    xs = edge_arrays(len(NAMES), (7, 5, 3))
    total = unmask_sum([maskers[n].mask(x, "round-0/batch-0") for n, x in zip(NAMES, xs)])
    assert total.dtype == np.int64 and total.shape == (7, 5, 3)
    assert total.astype(object).tolist() == exact_sum(xs).tolist()
    assert total.flat[0] == I64.max and total.flat[1] == I64.min


def test_masks_cancel_on_a_histogram_batch_shape(four):
    _, maskers = four
    rng = np.random.default_rng(1)
    xs = [rng.integers(-(2**40), 2**40, size=(3, 28, 256, 3), dtype=np.int64) for _ in NAMES]
    total = unmask_sum([maskers[n].mask(x, 7) for n, x in zip(NAMES, xs)])
    np.testing.assert_array_equal(total, np.sum(xs, axis=0))


def test_any_party_order_gives_the_same_sum():
    names = ("x", "y", "z")
    xs = edge_arrays(3, (11,), seed=2)
    expected = exact_sum(xs).tolist()
    for order in itertools.permutations(range(3)):
        keys = {n: generate_keypair() for n in names}
        # peers listed in a permuted order, masked in that order, summed in that order
        public = {names[i]: keys[names[i]].public_bytes for i in order}
        maskers = {n: Masker(n, keys[n], public, "t") for n in (names[i] for i in order)}
        masked = [maskers[names[i]].mask(xs[i], 0) for i in order]
        assert unmask_sum(masked).astype(object).tolist() == expected
        assert unmask_sum(masked[::-1]).astype(object).tolist() == expected


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(-(I64.max // 3), I64.max // 3), min_size=4, max_size=4), min_size=3, max_size=3))
def test_masks_cancel_for_any_values(rows):
    _, maskers = federation(NAMES[:3], training_id="hyp")
    xs = [np.array(r, dtype=np.int64) for r in rows]
    total = unmask_sum([maskers[n].mask(x, "m") for n, x in zip(NAMES[:3], xs)])
    assert total.tolist() == [sum(c) for c in zip(*rows)]


def fixed_keypair(seed: int) -> KeyPair:
    private = X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return KeyPair(private=private, public_bytes=private.public_key().public_bytes_raw())


def test_a_single_message_looks_uniform():
    keys = {n: fixed_keypair(i + 1) for i, n in enumerate(NAMES)}  # fixed keys: a deterministic test
    public = {n: k.public_bytes for n, k in keys.items()}
    maskers = {n: Masker(n, keys[n], public, "uniform") for n in NAMES}
    zeros = np.zeros(1 << 16, dtype=np.int64)  # the mask alone: the worst case for hiding
    masked = maskers["bravo"].mask(zeros, "uniformity")
    top = (masked >> np.uint64(56)).astype(np.int64)
    assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > 0.001
    low = (masked & np.uint64(0xFF)).astype(np.int64)
    assert stats.chisquare(np.bincount(low, minlength=256)).pvalue > 0.001
    bits = np.unpackbits(masked.view(np.uint8)).reshape(-1, 64).sum(axis=0)  # per bit position
    assert stats.chisquare(np.stack([bits, masked.size - bits])).pvalue.min() > 0.001 / 64


def test_masked_message_reveals_nothing_of_a_constant_input(four):
    _, maskers = four
    a = maskers["alpha"].mask(np.full(1 << 14, 5, dtype=np.int64), "c1")
    b = maskers["alpha"].mask(np.full(1 << 14, 5, dtype=np.int64), "c2")
    assert not np.array_equal(a, b)  # fresh mask per message
    assert len(np.unique(a)) == a.size


def test_mask_agrees_with_a_plain_python_twin():
    keys, maskers = federation(training_id="twin")
    x = np.array([0, -1, 5, I64.min, I64.max, 123456789], dtype=np.int64)
    me = "bravo"
    got = maskers[me].mask(x, "twin-message")
    nonce = message_nonce("twin-message")
    expected = []
    for i, v in enumerate(x.tolist()):
        acc = v % 2**64
        for peer in NAMES:
            if peer == me:
                continue
            key = pairwise_seed(
                keys[me].private, keys[peer].public_bytes, my_name=me, their_name=peer, training_id="twin"
            )
            s = int(mask_stream(key, nonce, len(x))[i])
            acc = (acc + s) % 2**64 if peer > me else (acc - s) % 2**64
        expected.append(acc)
    assert got.tolist() == expected


# ---------------------------------------------------------------------------
# masks are never reused
# ---------------------------------------------------------------------------


def test_a_repeated_message_id_is_rejected(four):
    _, maskers = four
    x = np.arange(4, dtype=np.int64)
    maskers["charlie"].mask(x, "once")
    with pytest.raises(SecureAggregationError, match=r"message id 'once' was already masked in epoch 0"):
        maskers["charlie"].mask(x, "once")
    maskers["charlie"].mask(x, 1)
    with pytest.raises(SecureAggregationError, match=r"message id 1 was already masked in epoch 0"):
        maskers["charlie"].mask(x, np.int64(1))  # numpy integers are the same ids
    maskers["charlie"].mask(x, "1")  # 1 and "1" are different ids with different nonces
    assert message_nonce(1) != message_nonce("1")


def test_restart_with_a_subset_sums_exactly_and_uses_new_masks():
    _, maskers = federation()
    xs = edge_arrays(4, (9,), seed=3)
    before = {n: maskers[n].mask(x, "r1") for n, x in zip(NAMES, xs)}
    # delta drops out after masking; the others restart without it
    remaining = ["alpha", "bravo", "charlie"]
    for n in remaining:
        maskers[n].restart(remaining, epoch=1)
    after = {n: maskers[n].mask(x, "r1") for n, x in zip(NAMES, xs) if n in remaining}  # same id, new epoch
    assert unmask_sum(list(after.values())).astype(object).tolist() == exact_sum(xs[:3]).tolist()
    for n in remaining:
        assert not np.array_equal(before[n], after[n])
    assert maskers["alpha"].active_peers_ == ("bravo", "charlie") and maskers["alpha"].epoch_ == 1


def test_restart_rules():
    _, maskers = federation()
    m = maskers["alpha"]
    with pytest.raises(SecureAggregationError, match=r"restart epoch must be an integer greater than 0, got 0"):
        m.restart(["bravo", "charlie"], epoch=0)
    with pytest.raises(SecureAggregationError, match=r"cannot restart with \['zulu'\]: not active peers of 'alpha'"):
        m.restart(["bravo", "zulu"], epoch=1)
    with pytest.raises(SecureAggregationError, match=r"cannot restart 'alpha' without any peer"):
        m.restart(["alpha"], epoch=1)
    with pytest.raises(
        SecureAggregationError, match=r"remaining must be a collection of names, got the string 'bravo'"
    ):
        m.restart("bravo", epoch=1)
    m.restart(["alpha", "bravo", "charlie"], epoch=2)
    with pytest.raises(SecureAggregationError, match=r"restart epoch must be an integer greater than 2, got 2"):
        m.restart(["bravo", "charlie"], epoch=2)
    with pytest.warns(SecureAggregationWarning, match=r"two parties hides nothing between them: 'alpha'"):
        m.restart(["bravo"], epoch=3)


# ---------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------


def test_both_ends_derive_the_same_key_bound_to_names_and_training():
    a, b = generate_keypair(), generate_keypair()
    k_ab = pairwise_seed(a.private, b.public_bytes, my_name="alpha", their_name="bravo", training_id="t")
    k_ba = pairwise_seed(b.private, a.public_bytes, my_name="bravo", their_name="alpha", training_id="t")
    assert k_ab == k_ba and len(k_ab) == 32
    wrong_name = pairwise_seed(b.private, a.public_bytes, my_name="bravo", their_name="alfa", training_id="t")
    other_training = pairwise_seed(b.private, a.public_bytes, my_name="bravo", their_name="alpha", training_id="u")
    assert len({k_ab, wrong_name, other_training}) == 3
    nonce = message_nonce("m")
    assert not np.array_equal(mask_stream(k_ab, nonce, 64), mask_stream(wrong_name, nonce, 64))


def test_a_peer_assuming_a_wrong_name_breaks_cancellation():
    names = ("alpha", "bravo")
    keys = {n: generate_keypair() for n in names}
    public = {n: keys[n].public_bytes for n in names}
    with pytest.warns(SecureAggregationWarning):
        honest = Masker("alpha", keys["alpha"], public, "t")
        # bravo believes its peer is called "mallory": its key with alpha is different
        confused = Masker("bravo", keys["bravo"], {"mallory": public["alpha"]}, "t")
    x = np.arange(16, dtype=np.int64)
    total = unmask_sum([honest.mask(x, 0), confused.mask(x, 0)])
    assert not np.array_equal(total, 2 * x)


def test_key_errors_are_converted():
    a = generate_keypair()
    with pytest.raises(SecureAggregationError, match=r"public key of 'bravo' must be 32 bytes, got 31"):
        pairwise_seed(a.private, bytes(31), my_name="alpha", their_name="bravo", training_id="t")
    with pytest.raises(SecureAggregationError, match=r"public key of 'bravo' is unusable for X25519"):
        pairwise_seed(a.private, bytes(32), my_name="alpha", their_name="bravo", training_id="t")  # low order
    with pytest.raises(SecureAggregationError, match=r"cannot derive a mask key with itself \('alpha'\)"):
        pairwise_seed(a.private, a.public_bytes, my_name="alpha", their_name="alpha", training_id="t")
    with pytest.raises(SecureAggregationError, match=r"training_id must be a non-empty string, got ''"):
        pairwise_seed(a.private, a.public_bytes, my_name="alpha", their_name="bravo", training_id="")
    with pytest.raises(SecureAggregationError, match=r"their_name must be a non-empty organisation name, got None"):
        pairwise_seed(a.private, a.public_bytes, my_name="alpha", their_name=None, training_id="t")
    assert "public_bytes=" in repr(a) and "private" not in repr(a)


def test_keypair_is_what_the_peer_needs():
    kp = generate_keypair()
    assert isinstance(kp, KeyPair) and len(kp.public_bytes) == 32
    assert kp.private.public_key().public_bytes_raw() == kp.public_bytes


# ---------------------------------------------------------------------------
# keystream
# ---------------------------------------------------------------------------


def test_keystream_edge_lengths():
    key, nonce = bytes(range(32)), message_nonce(3)
    long = mask_stream(key, nonce, 257)
    assert mask_stream(key, nonce, 0).shape == (0,) and mask_stream(key, nonce, 0).dtype == np.uint64
    for n in (1, 2, 7, 9, 63, 65, 257):  # 1 word, odd lengths, around a 64-byte block
        s = mask_stream(key, nonce, n)
        assert s.shape == (n,) and s.dtype == np.uint64
        np.testing.assert_array_equal(s, long[:n])  # a prefix of the same stream


def test_keystream_is_aes256_ctr_over_zeros_read_little_endian():
    """Block i of the stream is AES-256 of the counter block plus i (computed here with ECB), little-endian words."""
    key, nonce = bytes(range(32)), message_nonce("x", epoch=4)
    assert nonce[12:] == bytes(4)  # the 32-bit block counter starts at 0
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(nonce[:12] + i.to_bytes(4, "big")) for i in range(3))
    expected = [int.from_bytes(blocks[i : i + 8], "little") for i in range(0, 40, 8)]
    assert mask_stream(key, nonce, 5).tolist() == expected


def test_keystream_matches_the_nist_aes256_ctr_vector():
    """NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt, block 1: keystream = ciphertext XOR plaintext."""
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plain = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    cipher = bytes.fromhex("601ec313775789a5b7a7f504bbf3d228")
    stream = bytes(p ^ c for p, c in zip(plain, cipher))
    assert mask_stream(key, counter, 2).tobytes() == stream


def test_keystream_argument_errors():
    with pytest.raises(SecureAggregationError, match=r"mask key must be 32 bytes, got 16"):
        mask_stream(bytes(16), message_nonce(0), 1)
    with pytest.raises(SecureAggregationError, match=r"AES-CTR counter block must be 16 bytes, got 12"):
        mask_stream(bytes(32), bytes(12), 1)
    with pytest.raises(SecureAggregationError, match=r"stream length must be in \[0, \d+\], got -1"):
        mask_stream(bytes(32), message_nonce(0), -1)
    with pytest.raises(SecureAggregationError, match=rf"got {MAX_STREAM_ENTRIES + 1}"):
        mask_stream(bytes(32), message_nonce(0), MAX_STREAM_ENTRIES + 1)
    with pytest.raises(SecureAggregationError, match=r"message id must be an int or a str, got 1.5"):
        message_nonce(1.5)
    with pytest.raises(SecureAggregationError, match=r"epoch must be an integer >= 0, got -1"):
        message_nonce(0, epoch=-1)


# ---------------------------------------------------------------------------
# masker and coordinator input checks
# ---------------------------------------------------------------------------


def test_masker_input_errors(four):
    keys, maskers = four
    with pytest.raises(SecureAggregationError, match=r"secure aggregation masks int64 arrays, got float64"):
        maskers["alpha"].mask(np.zeros(3), "f")
    with pytest.raises(SecureAggregationError, match=r"secure aggregation masks int64 arrays, got list"):
        maskers["alpha"].mask([1, 2], "l")
    with pytest.raises(SecureAggregationError, match=r"at least one peer besides 'alpha', got none"):
        Masker("alpha", keys["alpha"], {"alpha": keys["alpha"].public_bytes}, "t")
    with pytest.raises(
        SecureAggregationError, match=r"lists 'alpha' itself with a public key that is not this party's"
    ):
        Masker("alpha", keys["alpha"], {"alpha": keys["bravo"].public_bytes, "bravo": keys["bravo"].public_bytes}, "t")
    with pytest.raises(SecureAggregationError, match=r"name must be a non-empty organisation name, got ''"):
        Masker("", keys["alpha"], {"bravo": keys["bravo"].public_bytes}, "t")


def test_masking_keeps_shape_and_input(four):
    _, maskers = four
    x = np.arange(24, dtype=np.int64).reshape(2, 3, 4)[:, ::-1]  # not contiguous
    before = x.copy()
    out = maskers["delta"].mask(x, "shape")
    assert out.shape == x.shape and out.dtype == np.uint64
    np.testing.assert_array_equal(x, before)


def test_unmask_sum_errors():
    with pytest.raises(SecureAggregationError, match=r"needs at least one masked array, got none"):
        unmask_sum([])
    with pytest.raises(SecureAggregationError, match=r"masked array 1 must be uint64, got int64"):
        unmask_sum([np.zeros(2, np.uint64), np.zeros(2, np.int64)])
    with pytest.raises(SecureAggregationError, match=r"masked array 1 has shape \(3,\), expected \(2,\)"):
        unmask_sum([np.zeros(2, np.uint64), np.zeros(3, np.uint64)])
    assert Masker.unmask_sum is unmask_sum


def test_two_parties_warn_and_min_parties_is_enforced():
    with pytest.warns(SecureAggregationWarning, match=r"can subtract its own array from the sum") as record:
        federation(("alpha", "bravo"))
    assert sorted(str(w.message).split(": ", 1)[1] for w in record) == [
        "'alpha' can subtract its own array from the sum and read the array of 'bravo'",
        "'bravo' can subtract its own array from the sum and read the array of 'alpha'",
    ]
    with pytest.warns(SecureAggregationWarning, match=r"two parties hides nothing between them"):
        require_min_parties(2, 2)
    with pytest.raises(ConfigError, match=r"privacy.min_parties is 3 but the federation has 2 parties"):
        require_min_parties(2, 3)
    with pytest.raises(ConfigError, match=r"privacy.min_parties must be an integer >= 2, got 1"):
        require_min_parties(5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        require_min_parties(3, 3)
        federation(("a", "b", "c"))


def test_stream_from_counter_blocks_equals_mask_stream():
    """The masker's keystream (counter blocks through one reusable AES encryptor) is the same words as mask_stream."""
    from fedmine.privacy.secure_agg import CounterBlocks, block_cipher, mask_stream

    key = bytes(range(32))
    scratch, cipher = CounterBlocks(), block_cipher(key)
    for nonce in (bytes(range(16)), message_nonce("m", epoch=2), bytes(12) + (2**32 - 600).to_bytes(4, "big")):
        for n in (1, 7, 8, 1001, 5, 1199):  # growing, shrinking, odd; 1199 words end on the last counter
            assert np.array_equal(scratch.stream(cipher, nonce, n), mask_stream(key, nonce, n))
    with pytest.raises(SecureAggregationError, match="would wrap the 32-bit counter"):
        scratch.stream(cipher, bytes(12) + (2**32 - 600).to_bytes(4, "big"), 601 * 2)


def test_masking_in_place_equals_the_copy_and_refuses_a_view_it_cannot_write():
    """``in_place=True`` masks the array's own buffer with the same words as the copying mask."""
    _, maskers = federation(("alpha", "bravo", "charlie"), "in-place")
    rng = np.random.default_rng(5)
    x = rng.integers(-(2**40), 2**40, size=(3, 7, 2), dtype=np.int64)
    twin = {n: Masker(n, m.keypair, m.peers, m.training_id) for n, m in maskers.items()}
    parts = {n: x + i for i, n in enumerate(maskers)}
    copies = {n: twin[n].mask(parts[n], "m") for n in maskers}
    for n, m in maskers.items():
        own = parts[n].copy()
        masked = m.mask(own, "m", in_place=True)
        assert masked.dtype == np.uint64 and masked.shape == x.shape
        assert np.shares_memory(masked, own)
        np.testing.assert_array_equal(masked, copies[n])
    np.testing.assert_array_equal(unmask_sum(list(copies.values())), sum(parts.values()))
    frozen = x.copy()
    frozen.flags.writeable = False
    with pytest.raises(SecureAggregationError, match="in-place masking needs a C-contiguous, writeable int64 array"):
        maskers["alpha"].mask(frozen, "n", in_place=True)
