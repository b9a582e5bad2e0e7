"""The wire codec: the values that cross between the coordinator and a party, as bytes.

This module owns the byte format of every argument and answer of the Party
protocol when it travels (see docs/transport.md). It is safe by construction:
no pickle, no eval, no import by name. A message is ``MAGIC`` followed by one
value; a value is a one-byte tag and its payload (little-endian)::

    N                    None
    T / F                True / False
    i  int64             int in [-2**63, 2**63)
    I  u16 n, n bytes    larger int (signed, big-endian, n <= MAX_INT_BYTES)
    f  float64           float (every bit kept, NaN payloads too)
    s  u64 n, utf-8      str
    b  u64 n, bytes      bytes
    l / t  u32 n, n values                       list / tuple
    d  u32 n, n (key, value) pairs               dict; keys str or int, no duplicates
    a  dtype, u8 ndim, ndim x u64, u64 n, n bytes    ndarray (C order)
    g  dtype, itemsize bytes                     numpy scalar
    R  str type, u32 n, n (str field, value)     record (allow-listed dataclass)

    dtype:  u8 n, ascii name  e.g. "float64", "bool", "NODE_DTYPE"

Only the dtypes in :data:`DTYPES` travel: numeric and bool dtypes by their
numpy name, and the structured layouts of :mod:`fedmine.gbdt.dtypes` by their
constant's name. Records are rebuilt field by field with type checks
(:data:`RECORDS`): :class:`~fedmine.gbdt.binning.BinMapper`,
:class:`~fedmine.gbdt.params.Params` and :class:`~fedmine.gbdt.model.Tree`.

:func:`decode` checks the total size, nesting depth and value count, and is the
one conversion point of this boundary: whatever is wrong with the bytes, it
raises :class:`WireError` with a one-line reason, never another exception.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from fedmine.errors import FedmineError
from fedmine.gbdt import dtypes as _dtypes
from fedmine.gbdt.binning import BinMapper
from fedmine.gbdt.dtypes import CAT_BITSET_DTYPE, CAT_WORDS, MAX_BIN_LIMIT, NODE_DTYPE
from fedmine.gbdt.model import Tree
from fedmine.gbdt.params import Params

#: First bytes of every message: format name and version.
MAGIC = b"FMW\x01"

#: Default largest message (bytes) :func:`decode` accepts.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Deepest nesting of containers and records.
MAX_DEPTH = 32
#: Most values (containers, scalars, arrays each count one) in one message.
MAX_VALUES = 1_000_000
#: Most dimensions of an array.
MAX_NDIM = 32
#: Longest big integer, in bytes.
MAX_INT_BYTES = 64

# Tags (STYLE: message keys as constants in one place).
T_NONE, T_TRUE, T_FALSE = b"N"[0], b"T"[0], b"F"[0]
T_INT, T_BIGINT, T_FLOAT = b"i"[0], b"I"[0], b"f"[0]
T_STR, T_BYTES = b"s"[0], b"b"[0]
T_LIST, T_TUPLE, T_DICT = b"l"[0], b"t"[0], b"d"[0]
T_ARRAY, T_SCALAR, T_RECORD = b"a"[0], b"g"[0], b"R"[0]

_NUMERIC = (
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

#: Wire name -> dtype, little-endian. Numeric dtypes by numpy name; every
#: structured layout declared in :mod:`fedmine.gbdt.dtypes` by its constant's name.
DTYPES: dict[str, np.dtype] = {name: np.dtype(name).newbyteorder("<") for name in _NUMERIC}
DTYPES.update(
    {
        name: value
        for name, value in sorted(vars(_dtypes).items())
        if isinstance(value, np.dtype) and value.names is not None
    }
)

_INT64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class WireError(FedmineError):
    """Bytes that are not a valid message, or a value that cannot travel; the message says which."""


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------


def dtype_name(dtype: np.dtype) -> str:
    """The wire name of an allow-listed dtype (either byte order)."""
    if dtype.names is not None:
        for name, allowed in DTYPES.items():
            if allowed.names is not None and dtype == allowed:
                return name
        raise WireError(f"structured dtype {dtype} is not declared in fedmine.gbdt.dtypes")
    name = dtype.name
    if name not in DTYPES or dtype.kind not in "biufc":
        raise WireError(f"dtype {dtype} cannot travel; allowed: {', '.join(DTYPES)}")
    return name


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------


def _array(value, field: str, *, kinds: str, ndim: int, optional: bool = False, dtype=None):
    if value is None and optional:
        return None
    if not isinstance(value, np.ndarray):
        raise WireError(f"field {field}: expected an ndarray, got {type(value).__name__}")
    if value.dtype.kind not in kinds or (dtype is not None and value.dtype != dtype):
        raise WireError(f"field {field}: dtype {value.dtype} not allowed here")
    if value.ndim != ndim:
        raise WireError(f"field {field}: expected {ndim} dimensions, got shape {value.shape}")
    return value


def _build_tree(f: dict) -> Tree:
    nodes = _array(f["nodes"], "Tree.nodes", kinds="V", ndim=1, dtype=NODE_DTYPE)
    bitsets = _array(f["cat_bitsets"], "Tree.cat_bitsets", kinds="u", ndim=2, dtype=CAT_BITSET_DTYPE)
    if bitsets.shape[1] != CAT_WORDS:
        raise WireError(f"field Tree.cat_bitsets: expected {CAT_WORDS} words per row, got shape {bitsets.shape}")
    n = nodes.shape[0]
    if n == 0:
        raise WireError("field Tree.nodes: a tree has at least one node")
    leaf = nodes["is_leaf"]
    if np.any(leaf > 1):
        raise WireError("field Tree.nodes: is_leaf must be 0 or 1")
    inner = np.flatnonzero(leaf == 0)
    if inner.size:
        idx = inner.astype(np.int64)
        for child in ("left", "right"):
            c = nodes[child][inner].astype(np.int64)
            if np.any((c <= idx) | (c >= n)):  # children come after their parent: no cycles
                raise WireError(f"field Tree.nodes: {child} child index out of range")
        if np.any(nodes["feature"][inner] < 0):
            raise WireError("field Tree.nodes: split feature index is negative")
        cat = inner[nodes["is_categorical"][inner] != 0]
        ci = nodes["cat_index"][cat].astype(np.int64)
        if np.any((ci < 0) | (ci >= bitsets.shape[0])):
            raise WireError("field Tree.nodes: cat_index out of range of cat_bitsets")
    return Tree(nodes=nodes, cat_bitsets=bitsets)


def _build_bin_mapper(f: dict) -> BinMapper:
    edges = _array(f["edges"], "BinMapper.edges", kinds="f", ndim=2)
    n_bins = _array(f["n_bins"], "BinMapper.n_bins", kinds="iu", ndim=1)
    categorical = _array(f["categorical"], "BinMapper.categorical", kinds="b", ndim=1)
    fmin = _array(f["feature_min"], "BinMapper.feature_min", kinds="f", ndim=1)
    fmax = _array(f["feature_max"], "BinMapper.feature_max", kinds="f", ndim=1)
    grids = _array(f["grids"], "BinMapper.grids", kinds="f", ndim=2, optional=True)
    lut = _array(f["lut"], "BinMapper.lut", kinds="u", ndim=2, optional=True)
    max_bin = f["max_bin"]
    if type(max_bin) is not int or not 1 <= max_bin <= MAX_BIN_LIMIT:
        raise WireError(f"field BinMapper.max_bin: expected an int in [1, {MAX_BIN_LIMIT}], got {max_bin!r}")
    n = n_bins.shape[0]
    for name, arr in (
        ("edges", edges),
        ("categorical", categorical),
        ("feature_min", fmin),
        ("feature_max", fmax),
        ("grids", grids),
        ("lut", lut),
    ):
        if arr is not None and arr.shape[0] != n:
            raise WireError(f"field BinMapper.{name}: {arr.shape[0]} features, n_bins has {n}")
    if np.any(n_bins < 0) or np.any(n_bins > max_bin):
        raise WireError(f"field BinMapper.n_bins: values must lie in [0, max_bin={max_bin}]")
    if (grids is None) != (lut is None) or (grids is not None and grids.shape != lut.shape):
        raise WireError("field BinMapper.lut: must come with grids of the same shape")
    if lut is not None and lut.size and int(lut.max()) > max_bin:
        raise WireError(f"field BinMapper.lut: bins must lie in [0, max_bin={max_bin}]")
    return BinMapper(
        edges=edges,
        n_bins=n_bins,
        categorical=categorical,
        max_bin=max_bin,
        feature_min=fmin,
        feature_max=fmax,
        grids=grids,
        lut=lut,
    )


_PARAM_TYPES = {f.name: type(f.default) for f in dataclasses.fields(Params)}


def _build_params(f: dict) -> Params:
    for name, value in f.items():
        want = _PARAM_TYPES[name]
        ok = (
            (type(value) is int)
            if want is int
            else (type(value) in (int, float))
            if want is float
            else (type(value) is want)
        )
        if not ok:
            raise WireError(f"field Params.{name}: expected {want.__name__}, got {type(value).__name__}")
    return Params(**f)


#: Record type tag -> (class, field names, builder). The builder gets every
#: field (already decoded) and checks each one.
RECORDS: dict[str, tuple[type, tuple[str, ...], Callable[[dict], Any]]] = {
    "Tree": (Tree, tuple(f.name for f in dataclasses.fields(Tree)), _build_tree),
    "BinMapper": (BinMapper, tuple(f.name for f in dataclasses.fields(BinMapper)), _build_bin_mapper),
    "Params": (Params, tuple(f.name for f in dataclasses.fields(Params)), _build_params),
}
_RECORD_TAG = {cls: tag for tag, (cls, _, _) in RECORDS.items()}


# ---------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------


def _enc_str(s: str, out: list) -> None:
    try:
        raw = s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WireError(f"string is not valid unicode: {exc.reason}") from None
    out.append(_U64.pack(len(raw)))
    out.append(raw)


#: dtype -> (its header on the wire, the wire dtype), filled as dtypes are sent (numpy's names are slow to ask).
_DTYPE_HEADERS: dict[np.dtype, tuple[bytes, np.dtype]] = {}


def _enc_dtype(dtype: np.dtype, out: list) -> np.dtype:
    known = _DTYPE_HEADERS.get(dtype)
    if known is None:
        name = dtype_name(dtype)
        raw = name.encode("ascii")
        known = (_U8.pack(len(raw)) + raw, DTYPES[name])
        if len(_DTYPE_HEADERS) < 4 * len(DTYPES):
            _DTYPE_HEADERS[dtype] = known
    out.append(known[0])
    return known[1]


def _enc(value: Any, out: list, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireError(f"value nests deeper than {MAX_DEPTH} levels")
    t = type(value)
    if value is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if value else b"F")
    elif t is int:
        if -(1 << 63) <= value < (1 << 63):
            out.append(b"i")
            out.append(_INT64.pack(value))
        else:
            n = (value.bit_length() + 8) // 8
            if n > MAX_INT_BYTES:
                raise WireError(
                    f"integer too large to travel ({value.bit_length()} bits, at most {8 * MAX_INT_BYTES - 1})"
                )
            out.append(b"I")
            out.append(_U16.pack(n))
            out.append(value.to_bytes(n, "big", signed=True))
    elif t is float:
        out.append(b"f")
        out.append(_F64.pack(value))
    elif t is str or t is np.str_:
        out.append(b"s")
        _enc_str(str(value), out)
    elif t in (bytes, bytearray, memoryview, np.bytes_):
        raw = bytes(value)
        out.append(b"b")
        out.append(_U64.pack(len(raw)))
        out.append(raw)
    elif t in (list, tuple):
        out.append(b"l" if t is list else b"t")
        out.append(_U32.pack(len(value)))
        for item in value:
            _enc(item, out, depth + 1)
    elif t is dict:
        out.append(b"d")
        out.append(_U32.pack(len(value)))
        for key, item in value.items():
            if isinstance(key, np.integer):
                key = int(key)
            if type(key) not in (str, int):
                raise WireError(f"dict key {key!r} of type {type(key).__name__} cannot travel (str or int only)")
            _enc(key, out, depth + 1)
            _enc(item, out, depth + 1)
    elif t is np.ndarray:
        if value.dtype.hasobject:
            raise WireError(f"dtype {value.dtype} cannot travel (object arrays are never sent)")
        out.append(b"a")
        wire = _enc_dtype(value.dtype, out)
        if value.ndim > MAX_NDIM:
            raise WireError(f"array has {value.ndim} dimensions, more than {MAX_NDIM}")
        out.append(_U8.pack(value.ndim))
        out.extend(_U64.pack(d) for d in value.shape)
        arr = np.ascontiguousarray(value, dtype=wire)
        out.append(_U64.pack(arr.nbytes))
        out.append(arr.reshape(-1).view(np.uint8).data if arr.nbytes else b"")
    elif isinstance(value, np.generic):
        if value.dtype.hasobject:
            raise WireError(f"dtype {value.dtype} cannot travel")
        out.append(b"g")
        wire = _enc_dtype(value.dtype, out)
        out.append(np.asarray(value).astype(wire, copy=False).tobytes())
    elif t in _RECORD_TAG:
        tag = _RECORD_TAG[t]
        out.append(b"R")
        _enc_str(tag, out)
        names = RECORDS[tag][1]
        out.append(_U32.pack(len(names)))
        for name in names:
            _enc_str(name, out)
            _enc(getattr(value, name), out, depth + 1)
    else:
        raise WireError(f"values of type {t.__module__}.{t.__qualname__} cannot travel")


def encode(value: Any, *, prefix: bytes = b"") -> bytes:
    """One message holding ``value`` (see the module docstring for what may travel).

    ``prefix`` goes before the message in the same bytes (a transport's
    framing), so the arrays are copied once.

    Raises
    ------
    WireError
        A type, dtype or record that is not allow-listed, or a value past the limits.
    """
    out: list = [prefix, MAGIC] if prefix else [MAGIC]
    try:
        _enc(value, out, 0)
    except WireError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        raise WireError(f"value cannot be encoded: {type(exc).__name__}: {exc}") from None
    return b"".join(out)


# ---------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------


class _Reader:
    """A cursor over a message with the limits of one :func:`decode`."""

    __slots__ = ("data", "n", "pos", "values_left")

    def __init__(self, data: memoryview, max_values: int) -> None:
        self.data = data
        self.n = len(data)
        self.pos = 0
        self.values_left = max_values

    def truncated(self, n: int, what: str) -> WireError:
        return WireError(f"truncated message: {what} needs {n} bytes at offset {self.pos}, {self.n - self.pos} left")

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > self.n:
            raise self.truncated(n, what)
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def unpack(self, s: struct.Struct, what: str):
        pos = self.pos
        if pos + s.size > self.n:
            raise self.truncated(s.size, what)
        self.pos = pos + s.size
        return s.unpack_from(self.data, pos)[0]

    def remaining(self) -> int:
        return self.n - self.pos

    def text(self, what: str) -> str:
        n = self.unpack(_U64, f"{what} length")
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"{what} is not valid utf-8 at offset {self.pos - n + exc.start}") from None

    def dtype(self) -> tuple[str, np.dtype]:
        n = self.unpack(_U8, "dtype name length")
        raw = bytes(self.take(n, "dtype name"))
        known = _DTYPES_BY_RAW.get(raw)
        if known is None:
            name = raw.decode("ascii", errors="replace")
            raise WireError(f"dtype {name!r} not allowed; allowed: {', '.join(DTYPES)}")
        return known


#: Wire name as it travels (ascii bytes) -> (name, dtype).
_DTYPES_BY_RAW = {name.encode("ascii"): (name, dtype) for name, dtype in DTYPES.items()}


def _check_bool(arr: np.ndarray) -> None:
    if arr.dtype.kind == "b" and arr.size and int(arr.view(np.uint8).max()) > 1:
        raise WireError("bool array holds bytes other than 0 and 1")


_unpack_int = _INT64.unpack_from
_unpack_u32 = _U32.unpack_from
_unpack_u64 = _U64.unpack_from


def _dec(r: _Reader, depth: int) -> Any:
    """One value at the reader's position (the common tags read inline: requests hold many small values)."""
    if depth > MAX_DEPTH:
        raise WireError(f"message nests deeper than {MAX_DEPTH} levels")
    r.values_left -= 1
    if r.values_left < 0:
        raise WireError("message holds too many values")
    data, pos = r.data, r.pos
    if pos >= r.n:
        raise r.truncated(1, "tag")
    tag = data[pos]
    pos += 1
    r.pos = pos
    if tag == T_INT:
        if pos + 8 > r.n:
            raise r.truncated(8, "int")
        r.pos = pos + 8
        return _unpack_int(data, pos)[0]
    if tag == T_NONE:
        return None
    if tag == T_TRUE:
        return True
    if tag == T_FALSE:
        return False
    if tag in (T_LIST, T_TUPLE):
        if pos + 4 > r.n:
            raise r.truncated(4, "list length")
        n = _unpack_u32(data, pos)[0]
        r.pos = pos = pos + 4
        if n > r.n - pos:
            raise WireError(f"list of {n} items cannot fit in the {r.n - pos} bytes left")
        items = [_dec(r, depth + 1) for _ in range(n)]
        return items if tag == T_LIST else tuple(items)
    if tag == T_STR:
        if pos + 8 > r.n:
            raise r.truncated(8, "str length")
        n = _unpack_u64(data, pos)[0]
        pos += 8
        r.pos = pos
        if pos + n > r.n:
            raise r.truncated(n, "str")
        r.pos = pos + n
        try:
            return str(data[pos : pos + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"str is not valid utf-8 at offset {pos + exc.start}") from None
    if tag == T_DICT:
        n = r.unpack(_U32, "dict length")
        if 2 * n > r.remaining():
            raise WireError(f"dict of {n} items cannot fit in the {r.remaining()} bytes left")
        out = {}
        for _ in range(n):
            key = _dec(r, depth + 1)
            if type(key) not in (str, int):
                raise WireError(f"dict key of type {type(key).__name__} not allowed (str or int only)")
            if key in out:
                raise WireError(f"duplicate dict key {key!r}"[:200])
            out[key] = _dec(r, depth + 1)
        return out
    if tag == T_ARRAY:
        name, dtype = r.dtype()
        ndim = r.unpack(_U8, "array ndim")
        if ndim > MAX_NDIM:
            raise WireError(f"array of {ndim} dimensions exceeds {MAX_NDIM}")
        shape = tuple(r.unpack(_U64, "array shape") for _ in range(ndim))
        n = r.unpack(_U64, "array byte length")
        size = math.prod(shape)
        if size * dtype.itemsize != n:
            raise WireError(
                f"array of shape {shape} and dtype {name} needs {size * dtype.itemsize} bytes, header says {n}"
            )
        if any(d >= 1 << 62 for d in shape):
            raise WireError(f"array shape {shape} too large")
        raw = r.take(n, "array data")
        arr = np.frombuffer(raw, dtype=dtype, count=size).reshape(shape).copy()  # aligned, writable, owned
        _check_bool(arr)
        return arr
    if tag == T_FLOAT:
        return r.unpack(_F64, "float")
    if tag == T_BIGINT:
        n = r.unpack(_U16, "big int length")
        if n > MAX_INT_BYTES:
            raise WireError(f"big int of {n} bytes exceeds {MAX_INT_BYTES}")
        return int.from_bytes(r.take(n, "big int"), "big", signed=True)
    if tag == T_BYTES:
        n = r.unpack(_U64, "bytes length")
        return bytes(r.take(n, "bytes"))
    if tag == T_SCALAR:
        name, dtype = r.dtype()
        raw = r.take(dtype.itemsize, "scalar")
        arr = np.frombuffer(raw, dtype=dtype, count=1).copy()
        _check_bool(arr)
        return arr[0]
    if tag == T_RECORD:
        rtype = r.text("record type")
        if rtype not in RECORDS:
            raise WireError(f"record type {rtype[:60]!r} not allowed; allowed: {', '.join(RECORDS)}")
        _, names, build = RECORDS[rtype]
        n = r.unpack(_U32, "record field count")
        if n != len(names):
            raise WireError(f"record {rtype} has {n} fields, expected {len(names)}")
        fields = {}
        for _ in range(n):
            fname = r.text("record field name")
            if fname not in names or fname in fields:
                raise WireError(f"record {rtype}: unexpected or repeated field {fname[:60]!r}")
            fields[fname] = _dec(r, depth + 1)
        return build(fields)
    raise WireError(f"unknown tag 0x{tag:02x} at offset {pos - 1}")


def decode(data, *, max_bytes: int = MAX_MESSAGE_BYTES, max_values: int = MAX_VALUES) -> Any:
    """The value one message holds.

    Parameters
    ----------
    data : bytes-like (bytes, bytearray, memoryview, pyarrow Buffer)
    max_bytes : largest message accepted.
    max_values : most values (scalars, containers, arrays) accepted.

    Raises
    ------
    WireError
        Anything wrong with the bytes; never another exception type.
    """
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        raise WireError(f"message must be bytes-like, got {type(data).__name__}") from exc
    if len(view) > max_bytes:
        raise WireError(f"message of {len(view)} bytes exceeds the limit of {max_bytes} bytes")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise WireError(f"not a fedmine wire message (starts with {bytes(view[: len(MAGIC)])!r}, expected {MAGIC!r})")
    r = _Reader(view, max_values)
    r.pos = len(MAGIC)
    try:
        value = _dec(r, 0)
    except WireError:
        raise
    except Exception as exc:  # the one conversion point: no other exception leaves decode
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise WireError(f"malformed message: {type(exc).__name__}: {reason}") from None
    if r.remaining():
        raise WireError(f"{r.remaining()} trailing bytes after the value")
    return value
