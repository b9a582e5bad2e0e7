"""Paillier encryption of fixed-point gradients and the owners' encrypted histograms, packed for decryption.

This module owns the additively homomorphic part of the vertical federation:
the label holder's keys (:class:`HomomorphicKeys`), the row ciphertexts it
sends (:func:`encrypt_rows` -> :class:`EncryptedRows`), the encrypted
histograms an owner builds over its binned columns and packs
(:func:`encrypted_histograms` -> :class:`PackedHistograms`), and their exact
decryption (:func:`decrypt_histograms`). It holds no party, coordinator or
flow code. docs/cryptography.md explains the choices and their measurements.

Protocol (one tree)
-------------------
::

    label holder   keys = HomomorphicKeys.generate()        once per training; keys.public to every owner
                   rows = encrypt_rows(keys, grad, hess, ...)   once per tree: one ciphertext per row
    owner          packed = encrypted_histograms(public, rows, bins, node_rows, n_bins)   per requested node
    label holder   grad, hess, count = decrypt_histograms(keys, packed)                  exact int64 sums

The scheme is Paillier with ``g = 1 + n`` in the Damgard-Jurik-Nielsen form:
``E(m) = (1 + m n) * h_s^alpha mod n^2`` with ``h_s = h^n``, ``h = -x^2 mod n``.
A product of ciphertexts encrypts the sum of their plaintexts.

One plaintext per row
    ``v = (g + grad_bound) << (H + C) | h << C | 1``: the biased gradient, the
    hessian and a count of one, in fields of ``G``, ``H`` and ``C`` bits wide
    enough for a sum over ``max_rows`` rows (:class:`Layout`), so one
    ciphertext carries all three and their sums never carry between fields.

Cheap encryption by the key holder
    ``r = h_s^alpha`` with ``alpha`` uniform modulo ``lcm(p - 1, q - 1)``
    (which the order of ``h_s`` divides: exactly uniform, no short-exponent
    assumption) is computed modulo ``p^2`` and ``q^2`` (the Chinese
    remainder theorem) from fixed-base tables of ``h_s`` (a product of one
    table entry per window of ``alpha mod (p - 1)``, ``alpha mod (q - 1)``):
    79 multiplications of 2048-bit numbers per prime at the large window
    instead of a 2048-bit exponentiation modulo ``n^2``. The randomisers do
    not depend on the plaintexts, so :meth:`HomomorphicKeys.prepare` makes
    the next tree's in the worker pool while the owners work; encryption is
    then ``E(m) = r + n (m r mod n) mod n^2``, one short product per row.

Fewer additions
    An owner multiplies each row's ciphertext into one cell per *pair* of
    features (``bin_f1 * n_bins_f2 + bin_f2``), then each feature's bins from
    the cells: about half the multiplications of one per row per feature
    when a node has more rows than cells; it falls back to single features
    otherwise. Multiplication modulo ``n^2`` is associative and commutative,
    so the products are the same numbers either way.

Packing
    ``k = (bits - 1) // (G + H + C)`` bins go into one ciphertext, bin ``s``
    shifted by ``s (G + H + C)`` bits (Horner: squarings), so the label
    holder decrypts ``sum(n_bins) / k`` ciphertexts per node. Each packed
    ciphertext is multiplied by a fresh ``h_s^beta`` (``beta`` uniform, the
    owner's) before it leaves, so the key holder, who knows every row's
    randomness, cannot tell which rows went into which bin.

Arrays on the wire
    :meth:`EncryptedRows.to_array` and :meth:`PackedHistograms.to_array` give
    ``(k, ciphertext_bytes)`` uint8 arrays (little-endian ciphertexts, row 0
    onwards a header with the layout and the key's fingerprint), which the
    wire codec carries; ``from_array(public, arr)`` reads them back and
    checks them.

Work spreads over ``workers`` processes (default ``os.cpu_count()``; a
``spawn`` pool, safe inside a multithreaded server) for trees of at least
:data:`PARALLEL_MIN_ROWS` rows: the randomisers by chunks (the pool lives with
the :class:`HomomorphicKeys`, whose tables each worker builds once), an owner's
histograms by feature groups and rows and its packing by ciphertexts (the pool
lives with the owner's :class:`HomomorphicPublic`, kept across trees; each
tree's :class:`EncryptedRows` go to the workers as one temporary file, read
once per worker). ``close()`` stops a pool or removes the file; garbage
collection does too.
Scripts that call it guard their entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import multiprocessing as mp
import os
import secrets
import struct
import tempfile
import weakref
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from fedmine.errors import FedmineError

#: Smallest modulus accepted: 2048-bit RSA's security (about 112 bits).
MIN_BITS = 2048
#: Statistical distance of a random exponent from uniform: below 2**-EXPONENT_SLACK.
EXPONENT_SLACK = 64
#: Shortest opt-in exponent: 4 x 112 bits, as Ma, Han and Lei (ACSAC 2021) for 2048-bit keys.
SHORT_EXPONENT_MIN = 448
#: Window of the key holder's fixed-base tables (2**w entries per window, modulo p^2 and q^2).
PRIVATE_WINDOW = 10
#: The window for batches of at least :data:`PARALLEL_MIN_ROWS` rows: 79 multiplications per prime instead of
#: 103, for tables of about 190 MB per prime built in about a second (a worker builds them once per training).
LARGE_WINDOW = 13
#: Window of the public fixed-base table of h_s modulo n^2 (the owner's rerandomisation).
PUBLIC_WINDOW = 8
#: Below this many rows in a tree its work stays in the calling process (a pool costs about a second to start).
PARALLEL_MIN_ROWS = 10_000
#: Wire format version, in every header.
FORMAT_VERSION = 1
_ROWS_MAGIC = b"FMER"
_HIST_MAGIC = b"FMPH"
_KEY_MAGIC = b"FMPK"


class HomomorphicError(FedmineError):
    """Bad input to the homomorphic layer (values out of bounds, a malformed array, another key)."""


# ---------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------


def _random_prime(bits: int) -> mpz:
    """A prime of exactly ``bits`` bits, top two bits set, congruent to 3 mod 4."""
    while True:
        candidate = mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)) | 3
        if gmpy2.is_prime(candidate, 40):
            return candidate


class _FixedBase:
    """Powers ``base^e mod modulus`` for random ``e`` from a table: one multiplication per window of ``e``.

    ``table[i][d] = base^(d * 2^(w i))``; a product of one entry per window is
    ``base^e`` with ``e = sum_i d_i 2^(w i)``. With the digits uniform, ``e`` is
    uniform in ``[0, 2^(w * windows))``.
    """

    def __init__(self, base: mpz, modulus: mpz, *, exponent_bits: int, window: int) -> None:
        self.modulus = modulus
        self.window = window
        self.windows = -(-exponent_bits // window)
        self.table: list[list[mpz]] = []
        b = base % modulus
        for _ in range(self.windows):
            row = [mpz(1), b]
            for _ in range(2, 1 << window):
                row.append(row[-1] * b % modulus)
            self.table.append(row)
            b = row[-1] * b % modulus

    def random_digits(self, count: int) -> np.ndarray:
        """``(count, windows)`` uniform digits of ``window`` bits, from the operating system's randomness."""
        raw = np.frombuffer(secrets.token_bytes(2 * count * self.windows), dtype="<u2")
        return (raw & ((1 << self.window) - 1)).reshape(count, self.windows)

    def power(self, digits: Sequence[int]) -> mpz:
        acc = mpz(1)
        modulus = self.modulus
        for row, d in zip(self.table, digits):
            if d:
                acc = acc * row[d] % modulus
        return acc


class _Pooled:
    """A persistent pool of spawned worker processes, made on first use and kept while ``workers`` stays the same.

    Subclasses set ``_pool`` and ``_finalizer`` to None in their constructor.
    """

    _pool: tuple[int, Executor] | None
    _finalizer: weakref.finalize | None

    def _pool_of(self, workers: int, initializer, initargs: tuple) -> Executor:
        if self._pool is not None and self._pool[0] == workers:
            return self._pool[1]
        self.close()
        executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=mp.get_context("spawn"), initializer=initializer, initargs=initargs
        )
        self._pool = (workers, executor)
        self._finalizer = weakref.finalize(self, executor.shutdown, wait=False, cancel_futures=True)
        return executor

    def close(self) -> None:
        """Stop the worker pool, if any, and wait for its processes to exit."""
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._pool is not None:
            self._pool[1].shutdown(wait=True, cancel_futures=True)
        self._pool = self._finalizer = None


class HomomorphicPublic(_Pooled):
    """What owners receive: the modulus ``n`` and ``h_s``; encrypts, adds, rerandomises; never decrypts.

    An owner's worker pool lives with it (made on first use by
    :meth:`EncryptedRows.pool`, kept for every tree under this key); call
    :meth:`close` when the training is done (garbage collection does too).
    """

    def __init__(self, n: int, h_s: int) -> None:
        self.n = mpz(n)
        self.n2 = self.n * self.n
        self.h_s = mpz(h_s)
        self.bits = int(self.n.bit_length())
        self.ciphertext_bytes = 2 * (-(-self.bits // 8))
        self._rerandomiser: _FixedBase | None = None
        self._pool: tuple[int, Executor] | None = None
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:
        return f"HomomorphicPublic(bits={self.bits}, fingerprint={self.fingerprint.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HomomorphicPublic) and (self.n, self.h_s) == (other.n, other.h_s)

    def __hash__(self) -> int:
        return hash((int(self.n), int(self.h_s)))

    def __getstate__(self) -> dict[str, int]:
        return {"n": int(self.n), "h_s": int(self.h_s)}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["n"], state["h_s"])  # type: ignore[misc]

    @property
    def fingerprint(self) -> bytes:
        """16 bytes of SHA-256 of the key: headers carry it, so arrays under another key are refused."""
        return hashlib.sha256(self.to_bytes()).digest()[:16]

    def to_bytes(self) -> bytes:
        """``magic, version, bits, n, h_s`` (little-endian): what the label holder sends."""
        size = self.ciphertext_bytes
        return (
            _KEY_MAGIC
            + struct.pack("<II", FORMAT_VERSION, self.bits)
            + int(self.n).to_bytes(size // 2, "little")
            + int(self.h_s).to_bytes(size, "little")
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> HomomorphicPublic:
        data = bytes(data)
        if len(data) < 12 or data[:4] != _KEY_MAGIC:
            raise HomomorphicError("homomorphic public key: not a fedmine public key (bad magic)")
        version, bits = struct.unpack("<II", data[4:12])
        size = 2 * (-(-bits // 8))
        if version != FORMAT_VERSION or len(data) != 12 + size + size // 2:
            raise HomomorphicError(
                f"homomorphic public key: version {version}, {len(data)} bytes for {bits} bits; "
                f"expected version {FORMAT_VERSION}, {12 + size + size // 2} bytes"
            )
        n = int.from_bytes(data[12 : 12 + size // 2], "little")
        h_s = int.from_bytes(data[12 + size // 2 :], "little")
        if n.bit_length() != bits or bits < MIN_BITS or not 0 < h_s < n * n:
            raise HomomorphicError(f"homomorphic public key: malformed ({bits}-bit modulus, at least {MIN_BITS})")
        return cls(n, h_s)

    def rerandomiser(self) -> _FixedBase:
        """The fixed-base table of ``h_s mod n^2`` (built once, about 40 MB at 2048 bits)."""
        if self._rerandomiser is None:
            self._rerandomiser = _FixedBase(
                self.h_s, self.n2, exponent_bits=self.bits + EXPONENT_SLACK, window=PUBLIC_WINDOW
            )
        return self._rerandomiser

    def pool(self, workers: int) -> Executor:
        """A pool of ``workers`` processes that hold this key's rerandomiser (made on first use, kept across trees)."""
        return self._pool_of(workers, _owner_init, (self.__getstate__(),))

    def encrypt(self, m: int) -> mpz:
        """``E(m)`` for ``0 <= m < n`` with the public key alone (slower than the key holder's path)."""
        table = self.rerandomiser()
        noise = table.power(table.random_digits(1)[0].tolist())
        return (1 + mpz(m) * self.n) % self.n2 * noise % self.n2


class HomomorphicKeys(_Pooled):
    """The label holder's Paillier key pair. Private: only :attr:`public` leaves the organisation.

    Attributes
    ----------
    public : HomomorphicPublic
    """

    def __init__(self, p: int, q: int, h_s: int, *, short_exponent_bits: int | None = None) -> None:
        if short_exponent_bits is not None and not SHORT_EXPONENT_MIN <= short_exponent_bits < int(mpz(p).bit_length()):
            raise HomomorphicError(
                f"homomorphic keys: short_exponent_bits must be at least {SHORT_EXPONENT_MIN} and below the "
                f"primes' {int(mpz(p).bit_length())} bits, got {short_exponent_bits}"
            )
        self.short_exponent_bits = short_exponent_bits
        self._p, self._q = mpz(p), mpz(q)
        self.public = HomomorphicPublic(self._p * self._q, h_s)
        self._p2, self._q2 = self._p * self._p, self._q * self._q
        self._q2_inv_p2 = gmpy2.invert(self._q2, self._p2)
        self._q_inv_p = gmpy2.invert(self._q, self._p)
        self._hp = gmpy2.invert(-self._q % self._p, self._p)
        self._hq = gmpy2.invert(-self._p % self._q, self._q)
        self._lam = (self._p - 1) * (self._q - 1) // 2  # lcm(p - 1, q - 1): the order of h_s divides it
        self._tables: dict[int, tuple[_FixedBase, _FixedBase]] = {}
        self._ahead: list[tuple[int, int, list[Future]]] = []  # randomisers computed ahead, in order
        self._pool: tuple[int, Executor] | None = None
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:  # never print key material
        return f"HomomorphicKeys(<secret>, public={self.public!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "p": int(self._p),
            "q": int(self._q),
            "h_s": int(self.public.h_s),
            "short_exponent_bits": self.short_exponent_bits,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["p"], state["q"], state["h_s"], short_exponent_bits=state["short_exponent_bits"]
        )

    @classmethod
    def generate(cls, *, bits: int = 2048, short_exponent_bits: int | None = None) -> HomomorphicKeys:
        """Fresh keys: ``n = p q`` of exactly ``bits`` bits (at least :data:`MIN_BITS`).

        ``short_exponent_bits`` (opt-in, at least :data:`SHORT_EXPONENT_MIN`):
        draw ``alpha`` of that many bits instead of uniform modulo the order of
        ``h_s``; encryption gets cheaper in proportion, and its secrecy then
        rests on the short-exponent assumption as well as on composite
        residuosity (docs/cryptography.md).
        """
        if bits < MIN_BITS or bits % 2:
            raise HomomorphicError(f"homomorphic keys: bits must be even and at least {MIN_BITS}, got {bits}")
        while True:
            p, q = _random_prime(bits // 2), _random_prime(bits // 2)
            n = p * q
            if (
                p != q
                and n.bit_length() == bits
                and gmpy2.gcd(p - 1, q - 1) == 2
                and gmpy2.gcd(n, (p - 1) * (q - 1)) == 1
            ):
                break
        while True:
            x = mpz(secrets.randbelow(int(n) - 2) + 2)
            if gmpy2.gcd(x, n) == 1:
                break
        h = (-x * x) % n
        return cls(p, q, gmpy2.powmod(h, n, n * n), short_exponent_bits=short_exponent_bits)

    def tables(self, window: int = PRIVATE_WINDOW) -> tuple[_FixedBase, _FixedBase]:
        """Fixed-base tables of ``h_s`` modulo ``p^2`` and ``q^2`` (built once per window).

        About 60 MB at 2048 bits and the default window, 380 MB at :data:`LARGE_WINDOW`.
        The exponents are below ``p - 1`` and ``q - 1`` (or ``short_exponent_bits``).
        """
        if window not in self._tables:
            bits = self.short_exponent_bits or int(self._p.bit_length())
            self._tables[window] = (
                _FixedBase(self.public.h_s, self._p2, exponent_bits=bits, window=window),
                _FixedBase(self.public.h_s, self._q2, exponent_bits=bits, window=window),
            )
        return self._tables[window]

    def randomisers(self, count: int, *, window: int = PRIVATE_WINDOW) -> list[mpz]:
        """``count`` fresh ``h_s^alpha mod n^2``: they do not depend on any plaintext, so they can be made ahead.

        ``alpha`` is uniform modulo ``lcm(p - 1, q - 1)``, which the order of
        ``h_s`` divides, so each randomiser is exactly uniform in the subgroup
        of ``h_s``; it is computed as ``h_s^(alpha mod (p - 1))`` modulo
        ``p^2`` and ``h_s^(alpha mod (q - 1))`` modulo ``q^2`` from the
        fixed-base tables, joined by the Chinese remainder theorem. With
        ``short_exponent_bits`` both halves use one short ``alpha``.
        """
        tp, tq = self.tables(window)
        if self.short_exponent_bits is None:
            alphas = [secrets.randbelow(int(self._lam)) for _ in range(count)]
            pm1, qm1 = int(self._p) - 1, int(self._q) - 1
            dp = _digits([a % pm1 for a in alphas], window, tp.windows).tolist()
            dq = _digits([a % qm1 for a in alphas], window, tq.windows).tolist()
        else:
            dp = dq = tp.random_digits(count).tolist()
        p2, q2, inv = self._p2, self._q2, self._q2_inv_p2
        out = []
        for row_p, row_q in zip(dp, dq):
            rp, rq = tp.power(row_p), tq.power(row_q)
            out.append(rq + q2 * ((rp - rq) * inv % p2))
        return out

    def prepare(self, count: int, *, workers: int | None = None, batches: int = 1) -> None:
        """Start making ``batches`` x ``count`` randomisers in the worker pool, for the next :func:`encrypt_rows`.

        The label holder calls it once a tree's rows are sent: the pool works
        while the owners build their histograms, and the next tree's
        encryption is then one multiplication per row. Below
        :data:`PARALLEL_MIN_ROWS` rows or with one worker it does nothing.
        """
        k = _n_workers(workers)
        if k < 2 or count < PARALLEL_MIN_ROWS:
            return
        pool = self.pool(k)
        for _ in range(batches):
            self._ahead.append((count, k, [pool.submit(_holder_randomisers, c) for c in _chunk_sizes(count, 4 * k)]))

    def _take_randomisers(self, count: int, workers: int) -> list[mpz]:
        """``count`` randomisers: made ahead by :meth:`prepare` if it made a batch of this size, else now."""
        futures = None
        while self._ahead and futures is None:
            size, k, pending = self._ahead.pop(0)
            if size == count and k == workers:
                futures = pending
            else:
                for f in pending:
                    f.cancel()
        if futures is None:
            if workers == 1 or count < PARALLEL_MIN_ROWS:
                return self.randomisers(count, window=LARGE_WINDOW if count >= PARALLEL_MIN_ROWS else PRIVATE_WINDOW)
            pool = self.pool(workers)
            futures = [pool.submit(_holder_randomisers, c) for c in _chunk_sizes(count, 4 * workers)]
        width = self.public.ciphertext_bytes
        return [r for f in futures for r in _unpack_bytes(f.result(), width)]

    def encrypt_many(self, plaintexts: Sequence[int], randomisers: Sequence[mpz] | None = None) -> list[mpz]:
        """``E(m) = (1 + m n) r mod n^2`` for each ``0 <= m < n``, ``r`` from :meth:`randomisers` unless given.

        ``(1 + m n) r = r + n (m r mod n) mod n^2``: one short product and a
        reduction modulo ``n`` per row once ``r`` is made.
        """
        rs = self.randomisers(len(plaintexts)) if randomisers is None else randomisers
        if len(rs) != len(plaintexts):
            raise HomomorphicError(f"homomorphic rows: {len(rs)} randomisers for {len(plaintexts)} plaintexts")
        n, n2 = self.public.n, self.public.n2
        return [(r + n * (m * r % n)) % n2 for m, r in zip(plaintexts, rs)]

    def pool(self, workers: int) -> Executor:
        """A pool of ``workers`` processes that hold these keys' tables (made on first use, kept for the next tree)."""
        return self._pool_of(workers, _holder_init, (self.__getstate__(),))

    def close(self) -> None:
        """Drop randomisers made ahead and stop the worker pool."""
        for _, _, pending in self._ahead:
            for f in pending:
                f.cancel()
        self._ahead = []
        super().close()

    def decrypt(self, c: int) -> mpz:
        """The plaintext ``0 <= m < n`` of one ciphertext (Chinese remainder theorem)."""
        c = mpz(c)
        p, q = self._p, self._q
        mp_ = (gmpy2.powmod(c % self._p2, p - 1, self._p2) - 1) // p * self._hp % p
        mq = (gmpy2.powmod(c % self._q2, q - 1, self._q2) - 1) // q * self._hq % q
        return mq + q * ((mp_ - mq) * self._q_inv_p % p)


# ---------------------------------------------------------------------------
# plaintext layout
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the sums of one bin sit in a plaintext: ``(grad + bound) << (H + C) | hess << C | count``.

    Attributes
    ----------
    grad_bound, hess_bound, max_rows : int
        ``|grad| <= grad_bound``, ``0 <= hess <= hess_bound`` per row; sums over at most ``max_rows`` rows.
    grad_bits, hess_bits, count_bits : int
        Field widths G, H, C: a sum over ``max_rows`` rows never reaches ``2**width``.
    """

    grad_bound: int
    hess_bound: int
    max_rows: int

    @property
    def count_bits(self) -> int:
        return self.max_rows.bit_length()

    @property
    def hess_bits(self) -> int:
        return max(1, (self.max_rows * self.hess_bound).bit_length())

    @property
    def grad_bits(self) -> int:
        return max(1, (self.max_rows * 2 * self.grad_bound).bit_length())

    @property
    def slot_bits(self) -> int:
        return self.grad_bits + self.hess_bits + self.count_bits

    def slots(self, bits: int) -> int:
        """Bins per ciphertext under a ``bits``-bit modulus (the packed value stays below ``2**(bits-1) <= n``)."""
        return (bits - 1) // self.slot_bits

    def check(self, bits: int) -> None:
        for name, value in (("grad_bound", self.grad_bound), ("hess_bound", self.hess_bound)):
            if value < 0:
                raise HomomorphicError(f"homomorphic rows: {name} must be >= 0, got {value}")
        if self.max_rows < 1:
            raise HomomorphicError(f"homomorphic rows: max_rows must be >= 1, got {self.max_rows}")
        limit = 2**63 - 1
        if self.max_rows * self.grad_bound > limit or self.max_rows * self.hess_bound > limit:
            raise HomomorphicError(
                f"homomorphic rows: max_rows * bound must fit int64 (max_rows {self.max_rows}, "
                f"grad_bound {self.grad_bound}, hess_bound {self.hess_bound})"
            )
        if self.slots(bits) < 1:
            raise HomomorphicError(
                f"homomorphic rows: a bin needs {self.slot_bits} bits, more than a {bits}-bit key holds"
            )

    def encode(self, grad: np.ndarray, hess: np.ndarray) -> list[int]:
        shift_g = self.hess_bits + self.count_bits
        g = (grad.astype(object) + self.grad_bound).tolist()
        h = hess.astype(object).tolist()
        return [(gi << shift_g) | (hi << self.count_bits) | 1 for gi, hi in zip(g, h)]

    def decode(self, value: int) -> tuple[int, int, int]:
        count = value & ((1 << self.count_bits) - 1)
        hess = (value >> self.count_bits) & ((1 << self.hess_bits) - 1)
        grad = (value >> (self.count_bits + self.hess_bits)) - count * self.grad_bound
        return grad, hess, count


# ---------------------------------------------------------------------------
# wire arrays
# ---------------------------------------------------------------------------


def _to_rows(header: bytes, cts: Sequence[int], width: int) -> np.ndarray:
    head_rows = -(-len(header) // width)
    out = np.zeros((head_rows + len(cts), width), dtype=np.uint8)
    out[:head_rows].reshape(-1)[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    if cts:
        body = b"".join(int(c).to_bytes(width, "little") for c in cts)
        out[head_rows:] = np.frombuffer(body, dtype=np.uint8).reshape(len(cts), width)
    return out


def _check_array(public: HomomorphicPublic, arr: np.ndarray, magic: bytes, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    width = public.ciphertext_bytes
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != width or len(arr) < 1:
        raise HomomorphicError(f"{what}: must be a uint8 array of shape (k, {width}), got {arr.dtype} {arr.shape}")
    head = arr[0].tobytes()
    if head[:4] != magic or struct.unpack("<I", head[4:8])[0] != FORMAT_VERSION:
        raise HomomorphicError(f"{what}: not a fedmine array of this kind and version {FORMAT_VERSION}")
    if head[8:24] != public.fingerprint:
        raise HomomorphicError(f"{what}: encrypted under another key (fingerprint {head[8:24].hex()})")
    return arr


def _ciphertexts(public: HomomorphicPublic, body: np.ndarray, what: str) -> list[mpz]:
    out = [mpz.from_bytes(row.tobytes(), "little") for row in body]
    n2 = public.n2
    for i, c in enumerate(out):
        if not 0 < c < n2:
            raise HomomorphicError(f"{what}: ciphertext {i} is out of range")
    return out


class EncryptedRows:
    """One tree's row ciphertexts ``E(v_i)`` and their :class:`Layout`, as received by an owner.

    Holds the ciphertexts as numbers (:attr:`ciphertexts`) and, once an owner
    asks with ``workers > 1``, a temporary file of them that the key's worker
    pool (:meth:`HomomorphicPublic.pool`) reads once per worker; call
    :meth:`close` (or use ``with``) when the tree is done (garbage collection
    removes the file too).
    """

    def __init__(self, public: HomomorphicPublic, layout: Layout, ciphertexts: list[mpz]) -> None:
        self.public = public
        self.layout = layout
        self.ciphertexts = ciphertexts
        self._file: str | None = None
        self._finalizer: weakref.finalize | None = None

    def __len__(self) -> int:
        return len(self.ciphertexts)

    def __enter__(self) -> EncryptedRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _header(self) -> bytes:
        lay = self.layout
        return (
            _ROWS_MAGIC
            + struct.pack("<I", FORMAT_VERSION)
            + self.public.fingerprint
            + struct.pack("<QQQQ", lay.grad_bound, lay.hess_bound, lay.max_rows, len(self))
        )

    def to_array(self) -> np.ndarray:
        """``(1 + n_rows, ciphertext_bytes)`` uint8: a header row, then one ciphertext per row."""
        return _to_rows(self._header(), self.ciphertexts, self.public.ciphertext_bytes)

    @classmethod
    def from_array(cls, public: HomomorphicPublic, arr: np.ndarray) -> EncryptedRows:
        what = "encrypted rows"
        arr = _check_array(public, arr, _ROWS_MAGIC, what)
        grad_bound, hess_bound, max_rows, n_rows = struct.unpack("<QQQQ", arr[0, 24:56].tobytes())
        if len(arr) != 1 + n_rows:
            raise HomomorphicError(f"{what}: header says {n_rows} rows, the array has {len(arr) - 1}")
        layout = Layout(grad_bound, hess_bound, max_rows)
        layout.check(public.bits)
        return cls(public, layout, _ciphertexts(public, arr[1:], what))

    def pool(self, workers: int) -> tuple[Executor, str]:
        """The key's pool of ``workers`` processes and the file of these ciphertexts its tasks name."""
        if self._file is None:
            fd, path = tempfile.mkstemp(prefix="fedmine-rows-", suffix=".bin")
            with os.fdopen(fd, "wb") as out:
                out.write(self.to_array().tobytes())
            self._file = path
            self._finalizer = weakref.finalize(self, _remove, path)
        return self.public.pool(workers), self._file

    def close(self) -> None:
        """Remove the file the workers read (the key's pool stays for the next tree)."""
        if self._finalizer is not None:
            self._finalizer()
        self._file = self._finalizer = None


class PackedHistograms:
    """An owner's encrypted histograms of one node: ``ceil(sum(n_bins) / k)`` packed ciphertexts.

    Bins in feature-major order (feature 0's bins, then feature 1's, ...),
    ``k`` bins per ciphertext, bin ``j`` in ciphertext ``j // k`` at slot ``j % k``.
    """

    def __init__(self, public: HomomorphicPublic, layout: Layout, n_bins: np.ndarray, ciphertexts: list[mpz]) -> None:
        self.public = public
        self.layout = layout
        self.n_bins = np.asarray(n_bins, dtype=np.int64)
        self.ciphertexts = ciphertexts

    def __len__(self) -> int:
        return len(self.ciphertexts)

    def to_array(self) -> np.ndarray:
        """``(header rows + ciphertexts, ciphertext_bytes)`` uint8."""
        lay = self.layout
        header = (
            _HIST_MAGIC
            + struct.pack("<I", FORMAT_VERSION)
            + self.public.fingerprint
            + struct.pack("<QQQII", lay.grad_bound, lay.hess_bound, lay.max_rows, len(self.n_bins), len(self))
            + self.n_bins.astype("<u4").tobytes()
        )
        return _to_rows(header, self.ciphertexts, self.public.ciphertext_bytes)

    @classmethod
    def from_array(cls, public: HomomorphicPublic, arr: np.ndarray) -> PackedHistograms:
        what = "packed histograms"
        arr = _check_array(public, arr, _HIST_MAGIC, what)
        grad_bound, hess_bound, max_rows, n_features, n_ct = struct.unpack("<QQQII", arr[0, 24:56].tobytes())
        width = public.ciphertext_bytes
        head_rows = -(-(56 + 4 * n_features) // width)
        if len(arr) != head_rows + n_ct:
            raise HomomorphicError(f"{what}: header says {n_ct} ciphertexts, the array has {len(arr) - head_rows}")
        n_bins = np.frombuffer(arr[:head_rows].reshape(-1)[56 : 56 + 4 * n_features].tobytes(), dtype="<u4")
        layout = Layout(grad_bound, hess_bound, max_rows)
        layout.check(public.bits)
        if n_ct != -(-int(n_bins.sum()) // layout.slots(public.bits)):
            raise HomomorphicError(f"{what}: {n_ct} ciphertexts cannot hold {int(n_bins.sum())} bins")
        return cls(public, layout, n_bins.astype(np.int64), _ciphertexts(public, arr[head_rows:], what))


# ---------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------


def _n_workers(workers: int | None) -> int:
    return max(1, int(workers if workers is not None else (os.cpu_count() or 1)))


_WORKER: dict[str, Any] = {}


def _holder_init(state: dict[str, Any]) -> None:
    keys = HomomorphicKeys(state["p"], state["q"], state["h_s"], short_exponent_bits=state["short_exponent_bits"])
    keys.tables(LARGE_WINDOW)
    _WORKER["keys"] = keys


def _holder_randomisers(count: int) -> bytes:
    keys: HomomorphicKeys = _WORKER["keys"]
    return _pack_bytes(keys.randomisers(count, window=LARGE_WINDOW), keys.public.ciphertext_bytes)


def _chunk_sizes(count: int, parts: int) -> list[int]:
    size = max(1, -(-count // max(1, parts)))
    return [min(size, count - s) for s in range(0, count, size)]


def _digits(values: Sequence[int], window: int, windows: int) -> np.ndarray:
    """``(len(values), windows)`` base-``2**window`` digits of non-negative ints below ``2**(window * windows)``."""
    nbytes = -(-window * windows // 8)
    out = np.empty((len(values), windows), dtype=np.uint16)
    weights = (1 << np.arange(window, dtype=np.uint32)).astype(np.uint32)
    for s in range(0, len(values), 4096):
        block = values[s : s + 4096]
        raw = np.frombuffer(b"".join(int(v).to_bytes(nbytes, "little") for v in block), dtype=np.uint8)
        bits = np.unpackbits(raw.reshape(len(block), nbytes), axis=1, bitorder="little")[:, : window * windows]
        out[s : s + len(block)] = bits.reshape(len(block), windows, window).astype(np.uint32) @ weights
    return out


def _owner_init(public_state: dict[str, int]) -> None:
    public = HomomorphicPublic(public_state["n"], public_state["h_s"])
    public.rerandomiser()
    _WORKER["public"] = public


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _rows_of(path: str) -> EncryptedRows:
    """The tree's rows in this worker, read from the owner's file once per tree."""
    cached = _WORKER.get("rows")
    if cached is None or cached[0] != path:
        public: HomomorphicPublic = _WORKER["public"]
        arr = np.fromfile(path, dtype=np.uint8).reshape(-1, public.ciphertext_bytes)
        _WORKER["rows"] = cached = (path, EncryptedRows.from_array(public, arr))
    return cached[1]


def _pack_bytes(values: Sequence[int], width: int) -> bytes:
    return b"".join(int(v).to_bytes(width, "little") for v in values)


def _unpack_bytes(data: bytes, width: int) -> list[mpz]:
    return [mpz.from_bytes(data[i : i + width], "little") for i in range(0, len(data), width)]


# ---------------------------------------------------------------------------
# encryption
# ---------------------------------------------------------------------------


def encrypt_rows(
    public: HomomorphicPublic | HomomorphicKeys,
    grad: np.ndarray,
    hess: np.ndarray,
    *,
    grad_bound: int,
    hess_bound: int,
    max_rows: int,
    workers: int | None = None,
) -> EncryptedRows:
    """One ciphertext per row of ``(grad + grad_bound) << (H + C) | hess << C | 1``.

    Parameters
    ----------
    public : HomomorphicKeys or HomomorphicPublic
        The label holder passes its keys (the fast path: CRT and fixed-base
        tables); the public key alone also works, about four times slower.
    grad, hess : ndarray of shape (n_rows,), int64
        Fixed-point integers, ``|grad| <= grad_bound``, ``0 <= hess <= hess_bound``.
    grad_bound, hess_bound : int
    max_rows : int
        At least ``n_rows``: no bin sums more rows.
    workers : int, optional
        Processes; default ``os.cpu_count()``.

    Returns
    -------
    EncryptedRows
        ``n_rows`` ciphertexts in row order.
    """
    keys = public if isinstance(public, HomomorphicKeys) else None
    pub = keys.public if keys is not None else public
    assert isinstance(pub, HomomorphicPublic)
    grad, hess = np.asarray(grad), np.asarray(hess)
    if grad.dtype != np.int64 or hess.dtype != np.int64 or grad.ndim != 1 or hess.shape != grad.shape:
        raise HomomorphicError(
            f"homomorphic rows: grad and hess must be int64 arrays of one shape (n_rows,), "
            f"got {grad.dtype} {grad.shape} and {hess.dtype} {hess.shape}"
        )
    layout = Layout(int(grad_bound), int(hess_bound), int(max_rows))
    layout.check(pub.bits)
    if len(grad) > layout.max_rows:
        raise HomomorphicError(f"homomorphic rows: {len(grad)} rows, more than max_rows {layout.max_rows}")
    if len(grad) and (np.abs(grad).max() > layout.grad_bound or grad.min() < -layout.grad_bound):
        raise HomomorphicError(f"homomorphic rows: a gradient is outside [-{layout.grad_bound}, {layout.grad_bound}]")
    if len(hess) and (hess.min() < 0 or hess.max() > layout.hess_bound):
        raise HomomorphicError(f"homomorphic rows: a hessian is outside [0, {layout.hess_bound}]")
    plaintexts = layout.encode(grad, hess)
    k = _n_workers(workers)
    if keys is None:
        return EncryptedRows(pub, layout, [pub.encrypt(m) for m in plaintexts])
    return EncryptedRows(pub, layout, keys.encrypt_many(plaintexts, keys._take_randomisers(len(plaintexts), k)))


# ---------------------------------------------------------------------------
# histograms
# ---------------------------------------------------------------------------


def _run_products(cts: list[mpz], rows: np.ndarray, keys: np.ndarray, n_keys: int, n2: mpz) -> list[mpz]:
    """``out[key] = prod(cts[r] for r, k in zip(rows, keys) if k == key) mod n2``; empty keys give 1."""
    out = [mpz(1)] * n_keys
    if len(rows) == 0:
        return out
    order = np.argsort(keys, kind="stable")
    rows_sorted, keys_sorted = rows[order].tolist(), keys[order]
    starts = np.flatnonzero(np.diff(keys_sorted)) + 1
    bounds = [0, *starts.tolist(), len(rows_sorted)]
    for a, b in itertools.pairwise(bounds):
        acc = cts[rows_sorted[a]]
        for r in rows_sorted[a + 1 : b]:
            acc = acc * cts[r] % n2
        out[int(keys_sorted[a])] = acc
    return out


def _group_products(
    cts: list[mpz], n2: mpz, rows: np.ndarray, columns: list[np.ndarray], n_bins: list[int]
) -> list[list[mpz]]:
    """Per-bin products of one feature group (one feature, or two through their joint cells)."""
    if len(columns) == 1:
        return [_run_products(cts, rows, columns[0].astype(np.int64), n_bins[0], n2)]
    b1, b2 = columns[0].astype(np.int64), columns[1].astype(np.int64)
    cells = _run_products(cts, rows, b1 * n_bins[1] + b2, n_bins[0] * n_bins[1], n2)
    first, second = [mpz(1)] * n_bins[0], [mpz(1)] * n_bins[1]
    for cell, value in enumerate(cells):
        if value != 1:
            i, j = divmod(cell, n_bins[1])
            first[i] = first[i] * value % n2
            second[j] = second[j] * value % n2
    return [first, second]


def _groups(n_rows: int, n_bins: np.ndarray) -> list[list[int]]:
    """Features paired where a pair's joint cells are fewer than half the node's rows, singles otherwise."""
    n_features = len(n_bins)
    out: list[list[int]] = []
    f = 0
    while f < n_features:
        if f + 1 < n_features and n_bins[f] * n_bins[f + 1] * 2 < n_rows:
            out.append([f, f + 1])
            f += 2
        else:
            out.append([f])
            f += 1
    return out


def _histogram_task(
    task: tuple[str, list[int], np.ndarray, list[np.ndarray], list[int]],
) -> list[bytes]:
    path, _features, rows, columns, n_bins = task
    enc = _rows_of(path)
    width = enc.public.ciphertext_bytes
    return [_pack_bytes(p, width) for p in _group_products(enc.ciphertexts, enc.public.n2, rows, columns, n_bins)]


def _pack_and_rerandomise(public: HomomorphicPublic, groups: list[list[mpz]], slot_bits: int) -> list[mpz]:
    """``prod_s P_s^(2^(s slot_bits)) * h_s^beta mod n^2`` for each group of bin products (Horner, fresh beta)."""
    n2 = public.n2
    shift = mpz(1) << slot_bits
    table = public.rerandomiser()
    digits = table.random_digits(len(groups)).tolist()
    out = []
    for group, row in zip(groups, digits):
        acc = group[-1]
        for value in reversed(group[:-1]):
            acc = gmpy2.powmod(acc, shift, n2) * value % n2
        out.append(acc * table.power(row) % n2)
    return out


def _pack_task(task: tuple[bytes, list[int], int]) -> bytes:
    data, sizes, slot_bits = task
    public: HomomorphicPublic = _WORKER["public"]
    width = public.ciphertext_bytes
    values = _unpack_bytes(data, width)
    groups, start = [], 0
    for size in sizes:
        groups.append(values[start : start + size])
        start += size
    return _pack_bytes(_pack_and_rerandomise(public, groups, slot_bits), width)


def _check_node(rows: EncryptedRows, bins: np.ndarray, node_rows: np.ndarray, n_bins: np.ndarray) -> None:
    what = "encrypted histograms"
    if bins.dtype not in (np.uint8, np.uint16) or bins.ndim != 2 or len(bins) != len(rows):
        raise HomomorphicError(
            f"{what}: bins must be uint8 or uint16 of shape ({len(rows)}, n_features), got {bins.dtype} {bins.shape}"
        )
    if n_bins.ndim != 1 or len(n_bins) != bins.shape[1] or (len(n_bins) and n_bins.min() < 1):
        raise HomomorphicError(f"{what}: n_bins must hold one count >= 1 per feature ({bins.shape[1]})")
    if node_rows.dtype != np.int64 or node_rows.ndim != 1:
        raise HomomorphicError(
            f"{what}: node_rows must be int64 of shape (m,), got {node_rows.dtype} {node_rows.shape}"
        )
    if len(node_rows) and (node_rows.min() < 0 or node_rows.max() >= len(rows)):
        raise HomomorphicError(f"{what}: node_rows must lie in [0, {len(rows)})")
    if len(node_rows) > rows.layout.max_rows:
        raise HomomorphicError(f"{what}: {len(node_rows)} node rows, more than max_rows {rows.layout.max_rows}")
    if len(bins) and bins.shape[1] and (bins.max(axis=0).astype(np.int64) >= n_bins).any():
        raise HomomorphicError(f"{what}: a bin index is >= its feature's n_bins")


def encrypted_histograms(
    public: HomomorphicPublic,
    rows: EncryptedRows,
    bins: np.ndarray,
    node_rows: np.ndarray,
    n_bins: np.ndarray,
    *,
    workers: int | None = None,
) -> PackedHistograms:
    """The node's encrypted per-bin sums of grad, hess and count, packed and rerandomised.

    Parameters
    ----------
    public : HomomorphicPublic
    rows : EncryptedRows
        This tree's row ciphertexts, in the shared row order.
    bins : ndarray of shape (n_rows, n_features), uint8 or uint16
        The owner's binned columns in the shared row order; Fortran order
        (column-major) reads fastest, C order works.
    node_rows : ndarray of shape (m,), int64
        The node's rows (positions into the shared order).
    n_bins : ndarray of shape (n_features,), int
        Bins per feature, the missing-value bin included.
    workers : int, optional
        Processes; default ``os.cpu_count()``.

    Returns
    -------
    PackedHistograms
        ``ceil(sum(n_bins) / k)`` ciphertexts, bins feature-major.
    """
    if public != rows.public:
        raise HomomorphicError("encrypted histograms: the rows are encrypted under another key")
    bins, node_rows = np.asarray(bins), np.asarray(node_rows)
    n_bins = np.asarray(n_bins, dtype=np.int64)
    _check_node(rows, bins, node_rows, n_bins)
    layout, width = rows.layout, public.ciphertext_bytes
    k = _n_workers(workers)
    parallel = k > 1 and len(rows) >= PARALLEL_MIN_ROWS  # a tree this large repays its pool
    tasks = []
    n_parts = k if parallel and len(node_rows) >= 4 * int(np.prod(n_bins[:2])) else 1
    path = rows.pool(k)[1] if parallel else ""
    for group in _groups(len(node_rows), n_bins):
        for part in np.array_split(node_rows, n_parts):
            tasks.append((path, group, part, [bins[part, f] for f in group], [int(n_bins[f]) for f in group]))
    per_feature: list[list[mpz]] = [[mpz(1)] * int(b) for b in n_bins]
    if parallel:
        pool = public.pool(k)
        results: Any = ([_unpack_bytes(b, width) for b in r] for r in pool.map(_histogram_task, tasks))
    else:
        results = (_group_products(rows.ciphertexts, public.n2, t[2], t[3], t[4]) for t in tasks)
    n2 = public.n2
    for task, products in zip(tasks, results):
        for f, prods in zip(task[1], products):
            acc = per_feature[f]
            for b, value in enumerate(prods):
                if value != 1:
                    acc[b] = value if acc[b] == 1 else acc[b] * value % n2
    flat = [value for feature in per_feature for value in feature]
    slots = layout.slots(public.bits)
    groups = [flat[s : s + slots] for s in range(0, len(flat), slots)]
    if parallel and len(groups) > 1:
        pool = public.pool(k)
        size = -(-len(groups) // k)
        batches = [groups[s : s + size] for s in range(0, len(groups), size)]
        pack_tasks = [
            (b"".join(_pack_bytes(g, width) for g in batch), [len(g) for g in batch], layout.slot_bits)
            for batch in batches
        ]
        packed = [c for part in pool.map(_pack_task, pack_tasks) for c in _unpack_bytes(part, width)]
    else:
        packed = _pack_and_rerandomise(public, groups, layout.slot_bits)
    return PackedHistograms(public, layout, n_bins, packed)


# ---------------------------------------------------------------------------
# decryption
# ---------------------------------------------------------------------------


def decrypt_histograms(keys: HomomorphicKeys, packed: PackedHistograms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact per-bin sums of one node.

    Returns
    -------
    grad, hess, count : ndarray of shape (sum(n_bins),), int64
        Feature-major: feature 0's bins, then feature 1's, ...
    """
    if packed.public != keys.public:
        raise HomomorphicError("decrypt histograms: packed under another key")
    layout = packed.layout
    total = int(packed.n_bins.sum())
    slots, slot_bits = layout.slots(keys.public.bits), layout.slot_bits
    mask = (1 << slot_bits) - 1
    grad, hess, count = (np.zeros(total, dtype=np.int64) for _ in range(3))
    for j, c in enumerate(packed.ciphertexts):
        m = int(keys.decrypt(c))
        if m >> (slots * slot_bits):
            raise HomomorphicError(f"decrypt histograms: ciphertext {j} holds more than its {slots} bins")
        for s in range(min(slots, total - j * slots)):
            g, h, n = layout.decode((m >> (s * slot_bits)) & mask)
            if n > layout.max_rows or h > n * layout.hess_bound or abs(g) > n * layout.grad_bound:
                raise HomomorphicError(
                    f"decrypt histograms: bin {j * slots + s} decodes outside the layout's bounds (count {n})"
                )
            grad[j * slots + s], hess[j * slots + s], count[j * slots + s] = g, h, n
    ends = np.cumsum(packed.n_bins)
    totals = np.add.reduceat(count, ends - packed.n_bins) if total else count[:0]
    if len(totals) and (totals != totals[0]).any():
        raise HomomorphicError(
            f"decrypt histograms: the features count {sorted(set(totals.tolist()))[:4]} rows; every row is in one bin "
            "of every feature"
        )
    return grad, hess, count


__all__ = [
    "EncryptedRows",
    "HomomorphicError",
    "HomomorphicKeys",
    "HomomorphicPublic",
    "Layout",
    "PackedHistograms",
    "decrypt_histograms",
    "encrypt_rows",
    "encrypted_histograms",
]
