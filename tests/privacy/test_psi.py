"""Private set intersection: blinding commutes, the intersection and its order are right, nothing crashes on edges."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmine.privacy import psi
from fedmine.privacy.psi import PsiError, PsiKey, hash_to_point, normalise_ids, shared_positions


def fully_blinded(sets, keys, **kw):
    """Every organisation's set with every key applied, as the message flow computes it (own order kept)."""
    out = []
    for i, ids in enumerate(sets):
        points = keys[i].blind(ids, **kw)
        for j, key in enumerate(keys):
            if j != i:
                points = key.reblind(points, **kw)
        out.append(points)
    return out


def intersect(sets, keys=None, **kw):
    keys = keys or [PsiKey.generate() for _ in sets]
    full = fully_blinded(sets, keys, **kw)
    return [
        shared_positions(
            full[i],
            [np.sort(f.view("S32").ravel()).view(np.uint8).reshape(-1, 32) for j, f in enumerate(full) if j != i],
        )
        for i in range(len(sets))
    ]


def test_blinding_commutes_and_matches_the_x25519_function():
    a, b = PsiKey.generate(), PsiKey.generate()
    ids = normalise_ids(["alice", "bob", "carol"])
    ab, ba = b.reblind(a.blind(ids)), a.reblind(b.blind(ids))
    assert ab.shape == (3, 32) and ab.dtype == np.uint8
    np.testing.assert_array_equal(ab, ba)
    assert len({bytes(r) for r in ab}) == 3
    # blind is the RFC 7748 function of the hashed id, independently computed
    raw = X25519PrivateKey.from_private_bytes(a._raw())
    assert bytes(a.blind(ids[:1])[0]) == raw.exchange(X25519PublicKey.from_public_bytes(hash_to_point(ids[0])))


def test_two_organisations_find_their_shared_rows_in_one_common_order():
    bank = [f"c{i}" for i in (5, 1, 9, 3, 7, 2)]
    shop = [f"c{i}" for i in (7, 8, 1, 4, 5)]
    pos_bank, pos_shop = intersect([normalise_ids(bank), normalise_ids(shop)])
    assert sorted(bank[p] for p in pos_bank) == ["c1", "c5", "c7"]
    assert [bank[p] for p in pos_bank] == [shop[p] for p in pos_shop]  # the same order on both sides
    assert pos_bank.dtype == np.int64


def test_three_organisations_meet_on_ids_held_by_all():
    sets = [["a", "b", "c", "d"], ["d", "c", "x", "a"], ["c", "a", "y", "b", "d"]]
    positions = intersect([normalise_ids(s) for s in sets])
    rows = [[s[p] for p in pos] for s, pos in zip(sets, positions)]
    assert sorted(rows[0]) == ["a", "c", "d"]
    assert rows[0] == rows[1] == rows[2]


def test_empty_sets_and_empty_intersection():
    key = PsiKey.generate()
    empty = key.blind([])
    assert empty.shape == (0, 32)
    assert key.reblind(empty).shape == (0, 32)
    pos = intersect([normalise_ids([]), normalise_ids(["a"])])
    assert [p.tolist() for p in pos] == [[], []]
    assert [p.tolist() for p in intersect([normalise_ids(["a"]), normalise_ids(["b"])])] == [[], []]
    assert shared_positions(np.zeros((2, 32), np.uint8), []).tolist() == [0, 1]  # no others: every row


def test_duplicates_do_not_crash_and_appear_once_per_copy():
    own, other = normalise_ids(["a", "b", "a"]), normalise_ids(["a", "a", "c"])
    pos_own, pos_other = intersect([own, other])
    assert sorted(pos_own.tolist()) == [0, 2] and sorted(pos_other.tolist()) == [0, 1]


def test_normalisation_trim_case_unicode_and_numbers():
    assert normalise_ids(["  Ab ", "ab"]) == [b"ab", b"ab"]
    assert normalise_ids(["  Ab "], trim=False, case="keep") == [b"  Ab "]
    assert normalise_ids(["ab"], case="upper") == [b"AB"]
    assert normalise_ids(["Straße", "STRASSE"]) == [b"strasse", b"strasse"]
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    assert normalise_ids([composed]) == normalise_ids([decomposed]) == ["josé".encode()]
    assert normalise_ids([12, 12.0, np.int64(12), "12", b"12"]) == [b"12"] * 5
    assert normalise_ids([12.5]) == [b"12.5"]
    assert normalise_ids(["x"], salt="s3cret:") == [b"s3cret:x"]
    with pytest.raises(PsiError, match=r"^psi: id case 'title' is not one of keep, lower, upper$"):
        normalise_ids(["x"], case="title")  # type: ignore[arg-type]


def test_unicode_ids_intersect():
    a = ["Müller", "北京-7", "\U0001f600", "plain"]
    b = ["  müller", "北京-7", "other"]
    na, nb = normalise_ids(a), normalise_ids(b)
    pa, pb = intersect([na, nb])
    assert sorted(a[p] for p in pa) == ["Müller", "北京-7"]
    assert [na[p] for p in pa] == [nb[p] for p in pb]


def test_salt_changes_every_blinded_value():
    key = PsiKey.generate()
    ids = ["a", "b", "c"]
    plain, salted = key.blind(normalise_ids(ids)), key.blind(normalise_ids(ids, salt="federation-7"))
    assert not np.isin(plain.view("S32").ravel(), salted.view("S32").ravel()).any()
    # organisations with different salts share nothing
    assert [p.tolist() for p in intersect([normalise_ids(ids), normalise_ids(ids, salt="x")])] == [[], []]


def test_a_fresh_key_gives_unrelated_values():
    ids = normalise_ids(["a"])
    assert not np.array_equal(PsiKey.generate().blind(ids), PsiKey.generate().blind(ids))
    assert "secret" in repr(PsiKey.generate())


def test_malformed_and_low_order_points_are_refused():
    key = PsiKey.generate()
    with pytest.raises(
        PsiError, match=r"^psi: blinded set must be a uint8 array of shape \(n, 32\), got int64 \(2, 32\)$"
    ):
        key.reblind(np.zeros((2, 32), np.int64))
    with pytest.raises(
        PsiError, match=r"^psi: own blinded set must be a uint8 array of shape \(n, 32\), got uint8 \(4,\)$"
    ):
        shared_positions(np.zeros(4, np.uint8), [])
    points = key.blind(normalise_ids(["a", "b"]))
    points[1] = 0  # u = 0 is of order 1: the ladder's output is all zeros
    with pytest.raises(
        PsiError, match=r"^psi: blinded id at position 1 is a low-order point \(not from an honest peer\)$"
    ):
        key.reblind(points)


def test_worker_processes_give_the_same_values(monkeypatch):
    monkeypatch.setattr(psi, "PARALLEL_MIN_IDS", 10)
    key = PsiKey.generate()
    ids = normalise_ids([f"id-{i}" for i in range(40)])
    in_process = key.blind(ids, workers=1)
    np.testing.assert_array_equal(key.blind(ids, workers=2), in_process)
    np.testing.assert_array_equal(key.reblind(in_process, workers=2), key.reblind(in_process, workers=1))
    with pytest.raises(PsiError, match=r"position 13 is a low-order point"):
        bad = in_process.copy()
        bad[13] = 0
        key.reblind(bad, workers=2)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(0, 30), max_size=12, unique=True),
    st.lists(st.integers(0, 30), max_size=12, unique=True),
)
def test_intersection_property(xs, ys):
    keys = [PsiKey.generate(), PsiKey.generate()]
    px, py = intersect([normalise_ids(xs), normalise_ids(ys)], keys)
    assert sorted(xs[p] for p in px) == sorted(set(xs) & set(ys))
    assert [xs[p] for p in px] == [ys[p] for p in py]
