"""The wire codec: every value that may travel comes back bit for bit; any other bytes give WireError only."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmine.errors import FedmineError
from fedmine.gbdt.binning import fit_bins
from fedmine.gbdt.booster import train_pooled
from fedmine.gbdt.dtypes import NODE_DTYPE, SPLIT_DTYPE
from fedmine.gbdt.model import Tree
from fedmine.gbdt.params import Params, make_params
from fedmine.transport import wire
from fedmine.transport.wire import MAGIC, WireError, decode, encode

NUMERIC = [
    np.dtype(n)
    for n in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
]


def same(a, b) -> bool:
    """Equal in type and bits (NaN payloads, -0.0, dtypes and shapes included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Tree):
        return a.equal(b)
    return a == b


arrays = st.sampled_from(NUMERIC).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)
node_arrays = hnp.arrays(NODE_DTYPE, st.integers(0, 3))
scalars = st.sampled_from(NUMERIC).flatmap(lambda dt: hnp.from_dtype(dt).map(lambda v: np.asarray(v, dtype=dt)[()]))
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**300), 2**300)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | arrays
    | node_arrays
    | scalars
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_round_trip_of_random_nested_values(value):
    assert same(decode(encode(value)), value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_wire_error(data):
    for blob in (data, MAGIC + data):
        try:
            decode(blob)
        except WireError:
            pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_mutated_messages_raise_only_wire_error(value, data):
    msg = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = data.draw(st.integers(0, max(len(msg) - 1, 0)))
        if kind == "flip" and msg:
            msg[i] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del msg[i:]
        elif kind == "insert":
            msg[i:i] = data.draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete" and msg:
            del msg[i]
    try:
        decode(bytes(msg))
    except WireError as exc:
        assert "\n" not in str(exc)


def trained_trees():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    X[:, 2] = rng.integers(0, 6, 300)
    y = (0.3 * X[:, 0] + 2 * np.isin(X[:, 2], [1, 3]) > 1).astype(float)
    model = train_pooled(
        X,
        y,
        {
            "objective": "binary",
            "num_boost_round": 3,
            "num_leaves": 5,
            "min_data_in_leaf": 5,
            "max_cat_to_onehot": 1,
            "min_data_per_group": 5,
            "cat_smooth": 1.0,
        },
        categorical=[2],
    )
    return model.trees, X


def test_records_round_trip_field_by_field():
    trees, X = trained_trees()
    mapper = fit_bins(X, max_bin=32, categorical=[2])
    params = make_params({"objective": "multiclass", "num_class": 3, "learning_rate": 0.05})
    value = {"trees": trees + [None], "mapper": mapper, "params": params, "raw": Params(learning_rate=1)}
    back = decode(encode(value))
    assert all(a.equal(b) for a, b in zip(back["trees"][:-1], trees)) and back["trees"][-1] is None
    assert any(t.cat_bitsets.shape[0] for t in back["trees"][:-1])  # a categorical split travelled
    for f in ("edges", "n_bins", "categorical", "feature_min", "feature_max", "grids", "lut"):
        a, b = getattr(back["mapper"], f), getattr(mapper, f)
        assert (a is None and b is None) or same(a, b), f
    assert back["mapper"].max_bin == mapper.max_bin
    assert back["params"] == params and type(back["params"]) is Params
    assert back["raw"] == Params(learning_rate=1)


def test_decoded_arrays_are_owned_writable_and_aligned():
    arr = decode(encode(np.arange(10, dtype=np.int64)))
    assert arr.flags.owndata and arr.flags.writeable and arr.flags.aligned
    arr[0] = 5  # does not touch the message


def test_big_endian_and_strided_arrays_arrive_little_endian_and_contiguous():
    a = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    back = decode(encode(a))
    assert back.dtype == np.dtype("<i4") and np.array_equal(back, a)


def test_split_records_travel():
    splits = np.zeros(3, dtype=SPLIT_DTYPE)
    splits["gain"] = [1.0, -np.inf, 2.5]
    assert same(decode(encode(splits)), splits)


@pytest.mark.parametrize(
    "value, match",
    [
        ({1, 2}, r"values of type builtins.set cannot travel"),
        (object(), r"values of type builtins.object cannot travel"),
        (np.array([1, "a"], dtype=object), r"dtype object cannot travel"),
        (np.array(["ab"]), r"dtype <U2 cannot travel"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), r"dtype datetime64\[D\] cannot travel"),
        (np.zeros(2, dtype=[("x", "f8")]), r"structured dtype .* is not declared in fedmine.gbdt.dtypes"),
        ({(1, 2): 3}, r"dict key \(1, 2\) of type tuple cannot travel"),
        ({True: 3}, r"dict key True of type bool cannot travel"),
        (-(2**600), r"integer too large to travel \(601 bits, at most 511\)"),
    ],
)
def test_encode_refuses_what_cannot_travel(value, match):
    with pytest.raises(WireError, match=match):
        encode(value)


def test_encode_refuses_nesting_past_the_limit():
    value: list = []
    for _ in range(wire.MAX_DEPTH + 2):
        value = [value]
    with pytest.raises(WireError, match=r"value nests deeper than 32 levels"):
        encode(value)


def header(tag: bytes) -> bytes:
    return MAGIC + tag


def dtype_field(name: str) -> bytes:
    return bytes([len(name)]) + name.encode()


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"", r"not a fedmine wire message \(starts with b'', expected b'FMW\\x01'\)"),
        (b"\x80\x04\x95pickle", r"not a fedmine wire message"),
        (header(b"Z"), r"unknown tag 0x5a at offset 4"),
        (header(b"N") + b"x", r"1 trailing bytes after the value"),
        (header(b"i\x01\x02"), r"truncated message: int needs 8 bytes at offset 5, 2 left"),
        (header(b"l") + struct.pack("<I", 1000) + b"N", r"list of 1000 items cannot fit in the 1 bytes left"),
        (header(b"s") + struct.pack("<Q", 2) + b"\xff\xfe", r"str is not valid utf-8 at offset 13"),
        (header(b"a") + dtype_field("object") + b"\x00" + struct.pack("<Q", 0), r"dtype 'object' not allowed"),
        (
            header(b"a") + dtype_field("float64") + b"\x01" + struct.pack("<QQ", 2, 8) + b"\x00" * 8,
            r"array of shape \(2,\) and dtype float64 needs 16 bytes, header says 8",
        ),
        (
            header(b"a") + dtype_field("bool") + b"\x01" + struct.pack("<QQ", 1, 1) + b"\x07",
            r"bool array holds bytes other than 0 and 1",
        ),
        (header(b"d") + struct.pack("<I", 2) + b"N" * 4, r"dict key of type NoneType not allowed \(str or int only\)"),
        (header(b"d") + struct.pack("<I", 2) + (b"i" + struct.pack("<q", 1) + b"N") * 2, r"duplicate dict key 1"),
        (
            header(b"R") + struct.pack("<Q", 7) + b"Popen()" + struct.pack("<I", 0),
            r"record type 'Popen\(\)' not allowed; allowed: Tree, BinMapper, Params",
        ),
        (header(b"I") + struct.pack("<H", 1000), r"big int of 1000 bytes exceeds 64"),
    ],
)
def test_decode_names_what_is_wrong(blob, match):
    with pytest.raises(WireError, match=match):
        decode(blob)


def test_decode_limits_size_depth_and_value_count():
    msg = encode(list(range(100)))
    with pytest.raises(WireError, match=rf"message of {len(msg)} bytes exceeds the limit of 100 bytes"):
        decode(msg, max_bytes=100)
    with pytest.raises(WireError, match=r"message holds too many values"):
        decode(msg, max_values=50)
    deep = MAGIC + b"l\x01\x00\x00\x00" * 40 + b"N"
    with pytest.raises(WireError, match=r"message nests deeper than 32 levels"):
        decode(deep)
    with pytest.raises(WireError, match=r"message must be bytes-like, got int"):
        decode(5)


def test_wire_error_is_a_fedmine_error():
    assert issubclass(WireError, FedmineError)


def tree_message(mutate) -> bytes:
    trees, _ = trained_trees()
    tree = trees[0]
    nodes = tree.nodes.copy()
    mutate(nodes)
    return encode(Tree(nodes, tree.cat_bitsets))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda n: n.__setitem__("left", np.where(n["is_leaf"] == 0, 0, n["left"])), r"left child index out of range"),
        (
            lambda n: n.__setitem__("right", np.where(n["is_leaf"] == 0, 10_000, n["right"])),
            r"right child index out of range",
        ),
        (lambda n: n.__setitem__("is_leaf", 2), r"is_leaf must be 0 or 1"),
        (
            lambda n: n.__setitem__("feature", np.where(n["is_leaf"] == 0, -3, n["feature"])),
            r"split feature index is negative",
        ),
    ],
)
def test_trees_with_bad_structure_are_refused(mutate, match):
    with pytest.raises(WireError, match=match):
        decode(tree_message(mutate))


def test_records_with_wrong_field_types_are_refused():
    params = make_params({})
    msg = encode(params).replace(b"s\x06\x00\x00\x00\x00\x00\x00\x00binary", b"i" + struct.pack("<q", 7) + b"xxxxxx")
    with pytest.raises(WireError):
        decode(msg)
    bad = encode(Tree(np.zeros(0, dtype=NODE_DTYPE)))
    with pytest.raises(WireError, match=r"field Tree.nodes: a tree has at least one node"):
        decode(bad)
    wrong = Tree(np.zeros(2, dtype=np.float64))  # nodes of the wrong dtype
    with pytest.raises(WireError, match=r"field Tree.nodes: dtype float64 not allowed here"):
        decode(encode(wrong))
    p = Params(num_leaves=3.5)  # an unvalidated Params with a float where an int belongs
    with pytest.raises(WireError, match=r"field Params.num_leaves: expected int, got float"):
        decode(encode(p))
