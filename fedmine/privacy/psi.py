"""Private set intersection of the organisations' ids: ECDH over X25519 with hashed ids.

This module owns the cryptographic pieces of the vertical federation's first
step, in which the organisations find the customers they share without
showing each other (or the coordinator) any other id. It holds no party,
coordinator or flow code: a party normalises its ids with
:func:`normalise_ids`, blinds them with its :class:`PsiKey`, reblinds the
other organisations' sets with the same key, and finds its shared rows with
:func:`shared_positions`.

Protocol (semi-honest, every organisation ``o`` with key ``k_o``)
-----------------------------------------------------------------
::

    normalise   o               x = salt + normalised id, UTF-8           normalise_ids
    blind       o               H(x)^k_o (in o's row order)               PsiKey.blind
    reblind     each other o'   P -> P^k_o' until every key is applied    PsiKey.reblind
    intersect   o               its own fully blinded set (row order) and
                                every other's fully blinded set (sorted)  shared_positions

``H`` is SHA-256 under a domain label, read as an X25519 u-coordinate, and
``P^k`` is the X25519 function (RFC 7748): scalar multiplication by the
clamped key. Scalar multiplication commutes, so the fully blinded value of an
id is ``H(x)^(k_1 k_2 ... k_m)`` whichever organisation blinded first, and two
organisations' fully blinded sets meet exactly on their shared ids.
:func:`shared_positions` returns each organisation's shared rows sorted by
that common value, which is the same order for every organisation and tells
nothing about anyone's row order.

What each side sees: blinded values only. Without the keys a blinded value is
indistinguishable from a random point (decisional Diffie-Hellman on
Curve25519 and its twist, with ``H`` a random oracle), so ids outside the
intersection stay hidden; each organisation learns the intersection (its
shared rows) and the size of every other's set. A set should travel sorted
(by blinded value) once it is fully blinded, so that its receiver does not
learn the sender's row order either; the coordinator relays blinded sets and
learns their sizes and the intersection size.

A hash read as a u-coordinate lands on the curve or on its quadratic twist,
each with probability about 1/2. Curve25519 is twist-secure (the twist's
order is 4 times a 253-bit prime) and X25519's clamping multiplies by the
cofactor, so both cases are sound and the u-only ladder commutes on both.
Every blinded value is canonical (below 2**255 - 19), so equal ids give equal
bytes.

The work is one X25519 operation per id per key (OpenSSL's, through the
``cryptography`` package, about 25-50 us each), spread over ``workers``
processes (a fresh ``spawn`` pool per call: safe in a process that runs a
server's threads). Sets below :data:`PARALLEL_MIN_IDS` run in the calling
process.

Errors raised by the X25519 implementation (a low-order point, which an
honest organisation never sends) are converted here into :class:`PsiError`.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedmine.errors import FedmineError

#: Bytes of one blinded id: an X25519 u-coordinate, little-endian.
POINT_BYTES = 32
#: What blinded sets are: one row of POINT_BYTES per id.
POINT_DTYPE = np.dtype(np.uint8)
#: Domain label of the hash of an id, versioned: a change of derivation changes every blinded value.
HASH_LABEL = b"fedmine/psi/hash-to-x25519/v1\x00"
#: Below this many ids the work stays in the calling process (a process pool costs about a second to start).
PARALLEL_MIN_IDS = 20_000
#: Allowed values of ``normalise_ids(case=...)``.
CASES = ("keep", "lower", "upper")

Case = Literal["keep", "lower", "upper"]


class PsiError(FedmineError):
    """A set of blinded ids is malformed (shape, dtype, a low-order point); the message says which."""


# ---------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------


def _id_text(value: object) -> str:
    """The text of one id: integral floats lose their ``.0`` (a pandas integer column with a gap is float)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def normalise_ids(values: Sequence[object], *, trim: bool = True, case: Case = "lower", salt: str = "") -> list[bytes]:
    """The bytes the federation hashes for each id: ``salt + normalised text``, UTF-8.

    Normalisation, in order: the value's text (integral floats such as ``12.0``
    written ``12``; bytes decoded as UTF-8), Unicode NFC (composed and
    decomposed accents agree), surrounding whitespace removed when ``trim``,
    then ``case`` (``lower`` uses ``str.casefold``, so ``Straße`` and
    ``STRASSE`` agree). Every organisation must use the same settings and salt;
    a different salt changes every blinded value. Missing ids are the caller's
    to reject first: this function writes whatever ``str`` gives.

    Parameters
    ----------
    values : sequence of length n
        The id column, any objects.
    trim : bool
    case : {"keep", "lower", "upper"}
    salt : str
        The federation's shared secret prefix.

    Returns
    -------
    ids : list of n bytes, in the order of ``values``
    """
    if case not in CASES:
        raise PsiError(f"psi: id case {case!r} is not one of {', '.join(CASES)}")
    out = []
    for value in values:
        text = unicodedata.normalize("NFC", _id_text(value))
        if trim:
            text = text.strip()
        if case == "lower":
            text = text.casefold()
        elif case == "upper":
            text = text.upper()
        out.append((salt + text).encode("utf-8"))
    return out


# ---------------------------------------------------------------------------
# blinding
# ---------------------------------------------------------------------------


def hash_to_point(item: bytes) -> bytes:
    """``H(item)``: 32 bytes of SHA-256 under :data:`HASH_LABEL`, an X25519 u-coordinate (RFC 7748 masks bit 255)."""
    return hashlib.sha256(HASH_LABEL + item).digest()


def _ladder(private: X25519PrivateKey, point: bytes, index: int) -> bytes:
    """The one call into the X25519 implementation: its errors become ours."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(point))
    except ValueError:
        raise PsiError(f"psi: blinded id at position {index} is a low-order point (not from an honest peer)") from None


def _blind_chunk(key: bytes, ids: list[bytes], start: int) -> bytes:
    private = X25519PrivateKey.from_private_bytes(key)
    return b"".join(_ladder(private, hash_to_point(item), start + i) for i, item in enumerate(ids))


def _reblind_chunk(key: bytes, points: bytes, start: int) -> bytes:
    private = X25519PrivateKey.from_private_bytes(key)
    return b"".join(
        _ladder(private, points[i : i + POINT_BYTES], start + i // POINT_BYTES)
        for i in range(0, len(points), POINT_BYTES)
    )


def check_points(points: np.ndarray, what: str = "blinded set") -> np.ndarray:
    """``points`` as a C-contiguous ``(n, 32)`` uint8 array, or a :class:`PsiError` naming ``what``."""
    points = np.asarray(points)
    if points.dtype != POINT_DTYPE or points.ndim != 2 or points.shape[1] != POINT_BYTES:
        raise PsiError(
            f"psi: {what} must be a uint8 array of shape (n, {POINT_BYTES}), got {points.dtype} {points.shape}"
        )
    return np.ascontiguousarray(points)


def _as_points(buffer: bytes) -> np.ndarray:
    return np.frombuffer(buffer, dtype=POINT_DTYPE).reshape(-1, POINT_BYTES).copy()


class PsiKey:
    """One organisation's secret blinding key for one intersection (an X25519 scalar).

    Generate a fresh key per intersection and drop it afterwards; it never
    leaves the organisation (its worker processes excepted).
    """

    __slots__ = ("_private",)

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> PsiKey:
        """A fresh key from the operating system's randomness."""
        return cls(X25519PrivateKey.generate())

    def __repr__(self) -> str:  # never print key material
        return "PsiKey(<secret>)"

    def _raw(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def blind(self, ids: Sequence[bytes], *, workers: int | None = None) -> np.ndarray:
        """``H(id)^k`` for each id.

        Parameters
        ----------
        ids : sequence of n bytes
            From :func:`normalise_ids`.
        workers : int, optional
            Processes to spread the work over; default ``os.cpu_count()``.

        Returns
        -------
        points : ndarray of shape (n, 32), uint8, in the order of ``ids``
        """
        ids = [bytes(item) for item in ids]
        chunks = [(ids[s : s + size], s) for s, size in _chunks(len(ids), workers)]
        return _as_points(_run(_blind_chunk, self._raw(), chunks, workers))

    def reblind(self, points: np.ndarray, *, workers: int | None = None) -> np.ndarray:
        """``P^k`` for each point ``P`` (another organisation's blinded ids).

        Parameters
        ----------
        points : ndarray of shape (n, 32), uint8
        workers : int, optional
            Processes to spread the work over; default ``os.cpu_count()``.

        Returns
        -------
        points : ndarray of shape (n, 32), uint8, in the order of ``points``

        Raises
        ------
        PsiError
            A malformed array or a low-order point.
        """
        raw = check_points(points).tobytes()
        chunks = [(raw[s * POINT_BYTES : (s + size) * POINT_BYTES], s) for s, size in _chunks(len(points), workers)]
        return _as_points(_run(_reblind_chunk, self._raw(), chunks, workers))


def _n_workers(workers: int | None) -> int:
    return max(1, int(workers if workers is not None else (os.cpu_count() or 1)))


def _chunks(n: int, workers: int | None) -> list[tuple[int, int]]:
    """(start, size) of the pieces of ``n`` items: one piece below PARALLEL_MIN_IDS, else 4 per worker."""
    k = _n_workers(workers)
    pieces = 1 if (k == 1 or n < PARALLEL_MIN_IDS) else 4 * k
    size = max(1, -(-n // pieces))
    return [(s, min(size, n - s)) for s in range(0, n, size)]


def _run(fn, key: bytes, chunks: list, workers: int | None) -> bytes:
    if len(chunks) <= 1:
        return b"".join(fn(key, part, start) for part, start in chunks)
    with ProcessPoolExecutor(max_workers=_n_workers(workers), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, key, part, start) for part, start in chunks]
        return b"".join(f.result() for f in futures)


# ---------------------------------------------------------------------------
# intersection
# ---------------------------------------------------------------------------


def _keys(points: np.ndarray) -> np.ndarray:
    """Each 32-byte row as one fixed-width bytes scalar: comparable, sortable, hashable by numpy."""
    return points.view(f"S{POINT_BYTES}").ravel()


def shared_positions(own: np.ndarray, others: Sequence[np.ndarray]) -> np.ndarray:
    """The rows of ``own`` whose id is in every other set, in the common order.

    Parameters
    ----------
    own : ndarray of shape (n, 32), uint8
        This organisation's ids with every organisation's key applied, in its row order.
    others : sequence of ndarray of shape (n_j, 32), uint8
        The other organisations' fully blinded sets, any order.

    Returns
    -------
    positions : ndarray of shape (n_shared,), int64
        Positions into ``own``, sorted by the fully blinded value: every
        organisation gets its shared rows in the same order. A duplicated id
        (the caller's error) appears once per copy, side by side.
    """
    own = check_points(own, "own blinded set")
    keys = _keys(own)
    present = np.ones(len(keys), dtype=bool)
    for j, other in enumerate(others):
        present &= np.isin(keys, _keys(check_points(other, f"blinded set {j} of the others")))
    positions = np.flatnonzero(present)
    return positions[np.argsort(keys[positions], kind="stable")].astype(np.int64)
