"""Secure aggregation: pairwise additive masks over the integers mod 2**64.

This module owns the masks that hide each party's integer arrays from the
coordinator (Bonawitz et al. 2017, the semi-honest protocol without dropout
recovery). It holds no party or coordinator logic: a party builds a
:class:`Masker` once per training and masks each outgoing array; the
coordinator adds what it receives with :func:`unmask_sum`.

Protocol
--------
::

    setup     every party   generate_keypair() -> publishes KeyPair.public_bytes
              every pair    pairwise_seed(...)  -> the same 32-byte key at both ends
    message   party i       mask(x_i, id) = x_i + sum_{j > i} s_ij - sum_{j < i} s_ij  (mod 2**64)
              coordinator   unmask_sum([...]) = sum_i x_i  (mod 2**64) -> int64
    restart   every party   restart(remaining, epoch=e)  (a party dropped out: fresh masks)

``j > i`` compares organisation names, so each pair agrees on who adds and who
subtracts. ``s_ij`` is an AES-256-CTR keystream (NIST SP 800-38A; AES-NI
where the processor has it) read as little-endian uint64, under the pair's key
and an initial counter block derived from ``(epoch, message id)``; the two
streams of a pair cancel in the sum, every other stream is uniform to anyone
without the pair's key. A one-time pad must never be reused, hence the rules a
:class:`Masker` enforces: a message id is used once per epoch, and a restart
moves to a strictly larger epoch.

Exactness: int64 arrays are reinterpreted as uint64 (two's complement), so the
sum mod 2**64 reinterpreted as int64 is the true sum whenever the true sum fits
int64, which the fixed-point scales guarantee (see :mod:`fedmine.gbdt.quantize`).
Federated equals pooled bit for bit, with or without masks.

Errors raised by the ``cryptography`` package (a malformed or low-order public
key) are converted here, in :func:`pairwise_seed`, into
:class:`SecureAggregationError`; nothing else in the project calls it.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedmine.errors import ConfigError, FedmineError

#: Masked arrays travel as uint64: arithmetic wraps mod 2**64 without warnings.
MASKED_DTYPE = np.dtype(np.uint64)
#: What a party masks and what the coordinator gets back.
PLAIN_DTYPE = np.dtype(np.int64)

#: Lengths fixed by the primitives: X25519 keys, the HKDF output used as an
#: AES-256 key, and the CTR mode's 16-byte initial counter block (a 12-byte
#: nonce, then a 4-byte big-endian block counter that starts at 0 here).
PUBLIC_KEY_BYTES = 32
KEY_BYTES = 32
NONCE_BYTES = 16
_COUNTER_BYTES = 4
_BLOCK_BYTES = 16

#: The 32-bit block counter bounds one stream to 2**32 AES blocks of 16 bytes
#: (the counter never runs into the nonce).
MAX_STREAM_ENTRIES = (2**32 * _BLOCK_BYTES) // MASKED_DTYPE.itemsize

#: Domain separation labels, versioned so a change of derivation changes every key
#: (v2: the AES-256-CTR stream; v1 was ChaCha20's).
_PAIR_KEY_LABEL = b"fedmine/secure-agg/pair-key/v2"
_NONCE_LABEL = b"fedmine/secure-agg/nonce/v2"

MessageId = int | str


class SecureAggregationError(FedmineError):
    """The masking protocol was misused or a peer's key is unusable; the message says which."""


class SecureAggregationWarning(UserWarning):
    """Secure aggregation runs but hides less than one might expect (e.g. two parties)."""


# ---------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A party's X25519 key pair for one training.

    Attributes
    ----------
    private : X25519PrivateKey
        Never leaves the party.
    public_bytes : bytes of length 32
        Raw public key, published to the other parties (through the coordinator).
    """

    private: X25519PrivateKey
    public_bytes: bytes

    def __repr__(self) -> str:  # never print key material
        return f"KeyPair(public_bytes={self.public_bytes.hex()[:16]}...)"


def generate_keypair() -> KeyPair:
    """Fresh X25519 key pair from the operating system's randomness."""
    private = X25519PrivateKey.generate()
    return KeyPair(private=private, public_bytes=private.public_key().public_bytes_raw())


def _length_prefixed(*parts: bytes) -> bytes:
    """Unambiguous concatenation: each part preceded by its length (8 bytes, big-endian)."""
    return b"".join(struct.pack(">Q", len(p)) + p for p in parts)


def _check_name(name, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise SecureAggregationError(f"{what} must be a non-empty organisation name, got {name!r}")
    return name


def pairwise_seed(
    my_private: X25519PrivateKey, their_public: bytes, *, my_name: str, their_name: str, training_id: str
) -> bytes:
    """The 32-byte mask key shared by two parties for one training.

    X25519 agreement, then HKDF-SHA256 whose ``info`` binds both organisation
    names (sorted), both public keys (in the same order) and the training id.
    Both ends derive the same key; a party that assumes a different name, peer
    key or training derives an unrelated key.

    Parameters
    ----------
    my_private : X25519PrivateKey
    their_public : bytes of length 32
        The peer's raw public key.
    my_name, their_name : str
        Organisation names, distinct.
    training_id : str
        Identifies the training; keys of two trainings are independent.

    Returns
    -------
    key : bytes of length 32

    Raises
    ------
    SecureAggregationError
        Equal names, a public key of the wrong length, or a low-order public
        key (whose shared secret would be all zeros).
    """
    _check_name(my_name, "my_name")
    _check_name(their_name, "their_name")
    if my_name == their_name:
        raise SecureAggregationError(f"a party cannot derive a mask key with itself ({my_name!r})")
    if not isinstance(training_id, str) or not training_id:
        raise SecureAggregationError(f"training_id must be a non-empty string, got {training_id!r}")
    their_public = bytes(their_public)
    if len(their_public) != PUBLIC_KEY_BYTES:
        raise SecureAggregationError(
            f"public key of {their_name!r} must be {PUBLIC_KEY_BYTES} bytes, got {len(their_public)}"
        )
    # the one call into the X25519 implementation: its errors become ours
    try:
        shared = my_private.exchange(X25519PublicKey.from_public_bytes(their_public))
    except ValueError as exc:
        raise SecureAggregationError(f"public key of {their_name!r} is unusable for X25519: {exc}") from None
    my_public = my_private.public_key().public_bytes_raw()
    (lo_name, lo_key), (hi_name, hi_key) = sorted([(my_name, my_public), (their_name, their_public)])
    info = _PAIR_KEY_LABEL + _length_prefixed(lo_name.encode(), lo_key, hi_name.encode(), hi_key, training_id.encode())
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


# ---------------------------------------------------------------------------
# streams
# ---------------------------------------------------------------------------


def message_nonce(message_id: MessageId, *, epoch: int = 0) -> bytes:
    """The 16-byte initial counter block of one message: 12 bytes of SHA-256, then counter 0.

    ``message_id`` is tagged with its type, so ``1`` and ``"1"`` differ.
    """
    if isinstance(message_id, np.integer):
        message_id = int(message_id)
    if isinstance(message_id, bool) or not isinstance(message_id, (int, str)):
        raise SecureAggregationError(f"message id must be an int or a str, got {message_id!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise SecureAggregationError(f"epoch must be an integer >= 0, got {epoch!r}")
    tagged = (b"i:" + str(message_id).encode()) if isinstance(message_id, int) else (b"s:" + message_id.encode())
    digest = hashlib.sha256(_NONCE_LABEL + _length_prefixed(str(epoch).encode(), tagged)).digest()
    return digest[: NONCE_BYTES - _COUNTER_BYTES] + bytes(_COUNTER_BYTES)


def _encryptor(key: bytes, nonce: bytes):
    """The AES-256-CTR keystream generator of one (key, nonce): encrypting zeros yields the stream."""
    return Cipher(algorithms.AES(bytes(key)), modes.CTR(bytes(nonce))).encryptor()


def mask_stream(key: bytes, nonce: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 words: the AES-256-CTR keystream read little-endian.

    Parameters
    ----------
    key : bytes of length 32
    nonce : bytes of length 16
        The initial counter block: 12-byte nonce, 4-byte big-endian block counter.
    n : int
        Number of words, ``0 <= n <= MAX_STREAM_ENTRIES``.

    Returns
    -------
    stream : ndarray of shape (n,), uint64, read-only
        The keystream, generated in one call (encrypting ``8 * n`` zero bytes).
    """
    if len(key) != KEY_BYTES:
        raise SecureAggregationError(f"mask key must be {KEY_BYTES} bytes, got {len(key)}")
    if len(nonce) != NONCE_BYTES:
        raise SecureAggregationError(f"AES-CTR counter block must be {NONCE_BYTES} bytes, got {len(nonce)}")
    n = int(n)
    if not 0 <= n <= MAX_STREAM_ENTRIES:
        raise SecureAggregationError(f"stream length must be in [0, {MAX_STREAM_ENTRIES}], got {n}")
    if n == 0:
        return np.empty(0, dtype=MASKED_DTYPE)
    raw = _encryptor(key, nonce).update(bytes(n * MASKED_DTYPE.itemsize))
    return np.frombuffer(raw, dtype=MASKED_DTYPE.newbyteorder("<")).astype(MASKED_DTYPE, copy=False)


def block_cipher(key: bytes):
    """A reusable AES-256 block encryptor of ``key`` (ECB over whole blocks): the key schedule is made once."""
    return Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()


class CounterBlocks:
    """Scratch for :func:`mask_stream`'s words from a reusable block encryptor, without allocating per message.

    CTR mode's keystream block ``j`` is ``AES_K(T_j)`` with ``T_j`` the initial
    counter block plus ``j`` in its last 32 bits (NIST SP 800-38A, the
    standard incrementing function). :meth:`stream` writes the counter blocks
    of a message's nonce and encrypts them with :func:`block_cipher`: the same
    words as :func:`mask_stream`, with the key schedule and cipher context
    made once per key instead of once per message and peer.
    """

    def __init__(self) -> None:
        self._blocks = np.zeros((0, 2), dtype="<u8")  # one counter block = two little-endian words
        self._counters = np.zeros(0, dtype="<u8")  # bytes 8..15 of each block with the nonce's part zero
        self._words = np.zeros((0, 0), dtype=MASKED_DTYPE)  # one row per stream of a message
        self._start = -1

    def stream(self, encryptor, nonce: bytes, n: int) -> np.ndarray:
        """The first ``n`` keystream words of ``nonce`` under ``encryptor``'s key (uint64, little-endian host).

        Returns a view of the scratch, valid until the next call.
        """
        n_blocks = self.counter_blocks(nonce, n)
        words = self.rows(1, n_blocks)[0]
        self.encrypt(encryptor, n_blocks, words)
        return words[: int(n)]

    def rows(self, k: int, n_blocks: int) -> np.ndarray:
        """Scratch for ``k`` streams of ``n_blocks`` blocks: uint64 of shape (>= k, >= 2 * n_blocks + 2), reused."""
        need = 2 * n_blocks + 2  # update_into wants a block of room beyond
        if self._words.shape[0] < k or self._words.shape[1] < need:
            self._words = np.empty((max(k, self._words.shape[0]), max(need, self._words.shape[1])), MASKED_DTYPE)
        return self._words

    def counter_blocks(self, nonce: bytes, n: int) -> int:
        """Write the counter blocks of ``nonce``'s first ``n`` words into the scratch; returns how many blocks.

        The blocks depend on the nonce only: every key of a message encrypts the same ones (:meth:`encrypt`).
        """
        n = int(n)
        n_blocks = -(-n * MASKED_DTYPE.itemsize // _BLOCK_BYTES)
        start = int.from_bytes(nonce[NONCE_BYTES - _COUNTER_BYTES :], "big")
        if start + n_blocks > 2**32:
            raise SecureAggregationError(f"a stream of {n} words from counter {start} would wrap the 32-bit counter")
        if self._blocks.shape[0] < n_blocks or self._start != start:
            size = max(n_blocks, self._blocks.shape[0])
            be = (start + np.arange(size, dtype=np.uint64)).astype(">u4")  # the 32-bit block counter, big-endian
            self._counters = np.zeros(size, dtype="<u8")
            self._counters.view(np.uint8).reshape(size, 8)[:, 4:] = be.view(np.uint8).reshape(size, 4)
            self._blocks = np.empty((size, 2), dtype="<u8")
            self._start = start
        head = np.frombuffer(nonce, dtype="<u8", count=1)[0]  # nonce bytes 0..7
        tail = np.uint64(int.from_bytes(nonce[8:12], "little"))  # nonce bytes 8..11, below the counter
        blocks = self._blocks[:n_blocks]
        blocks[:, 0] = head
        np.bitwise_or(self._counters[:n_blocks], tail, out=blocks[:, 1])
        return n_blocks

    def encrypt(self, encryptor, n_blocks: int, words: np.ndarray) -> None:
        """``words`` (OUT, uint64, at least ``2 * n_blocks + 2`` long) = the first ``n_blocks`` blocks encrypted.

        The blocks are those of the last :meth:`counter_blocks`.
        """
        size = n_blocks * _BLOCK_BYTES
        written = encryptor.update_into(
            self._blocks[:n_blocks].view(np.uint8).reshape(-1).data, words.view(np.uint8)[: size + _BLOCK_BYTES].data
        )
        if written != size:  # ECB over whole blocks answers every byte at once
            raise SecureAggregationError(f"block cipher wrote {written} of {size} keystream bytes")


# ---------------------------------------------------------------------------
# party side
# ---------------------------------------------------------------------------


def _two_party_warning(name: str, peer: str) -> None:
    warnings.warn(
        f"secure aggregation with two parties hides nothing between them: {name!r} can subtract its own "
        f"array from the sum and read the array of {peer!r}",
        SecureAggregationWarning,
        stacklevel=3,
    )


class Masker:
    """One party's masks for one training.

    Parameters
    ----------
    name : str
        This party's organisation name.
    keypair : KeyPair
        This party's key pair; its public key is the one the peers hold.
    peers : dict of str to bytes
        Every other party's name and raw public key. An entry for ``name``
        itself is accepted if it carries this party's own public key.
    training_id : str
        Identifies the training; bound into every pair key.

    Attributes
    ----------
    active_peers_ : tuple of str
        Peers whose masks are added, sorted; narrowed by :meth:`restart`.
    epoch_ : int
        Restart counter, bound into every nonce; starts at 0.

    Warns
    -----
    SecureAggregationWarning
        With a single peer (two parties), each learns the other's array.
    """

    #: :func:`unmask_sum` (attached below its definition).
    unmask_sum: ClassVar[Callable[[Sequence[np.ndarray]], np.ndarray]]

    def __init__(self, name: str, keypair: KeyPair, peers: Mapping[str, bytes], training_id: str):
        self.name = name
        self.keypair = keypair
        self.peers = peers
        self.training_id = training_id
        _check_name(name, "name")
        others = {}
        for peer, public in dict(peers).items():
            if peer == name:
                if bytes(public) != keypair.public_bytes:
                    raise SecureAggregationError(
                        f"peers lists {name!r} itself with a public key that is not this party's"
                    )
                continue
            others[peer] = public
        if not others:
            raise SecureAggregationError(f"secure aggregation needs at least one peer besides {name!r}, got none")
        # pair keys are secrets: private and never printed
        self._pair_keys = {
            peer: pairwise_seed(keypair.private, public, my_name=name, their_name=peer, training_id=training_id)
            for peer, public in others.items()
        }
        self.active_peers_: tuple[str, ...] = tuple(sorted(others))
        self.epoch_ = 0
        self._used_ids: set = set()
        self._ciphers = {peer: block_cipher(key) for peer, key in self._pair_keys.items()}  # key schedules, once
        self._scratch = CounterBlocks()
        if len(self.active_peers_) == 1:
            _two_party_warning(name, self.active_peers_[0])

    def __repr__(self) -> str:
        return f"Masker(name={self.name!r}, active_peers_={self.active_peers_!r}, epoch_={self.epoch_})"

    def mask(self, array, message_id: MessageId, *, in_place: bool = False) -> np.ndarray:
        """Masked copy of ``array`` for message ``message_id`` (or ``array`` itself masked, ``in_place``).

        Parameters
        ----------
        array : ndarray of int64, any shape
            The party's share of the sum (histograms, counts, ...). Not
            modified, unless ``in_place``.
        message_id : int or str
            The same at every party for the same message; used once per epoch.
        in_place : bool
            Mask ``array``'s own buffer (IN/OUT; it must be C-contiguous and
            writeable) and return a uint64 view of it: no copy of the message.

        Returns
        -------
        masked : ndarray of uint64, same shape as ``array``
            ``array + sum_{peer > name} s - sum_{peer < name} s`` (mod 2**64).

        Raises
        ------
        SecureAggregationError
            A repeated message id, or an array that is not int64.
        """
        if not isinstance(array, np.ndarray) or array.dtype != PLAIN_DTYPE:
            got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise SecureAggregationError(f"secure aggregation masks int64 arrays, got {got}")
        nonce = message_nonce(message_id, epoch=self.epoch_)  # validates the id's type
        if isinstance(message_id, np.integer):
            message_id = int(message_id)
        if message_id in self._used_ids:
            raise SecureAggregationError(
                f"message id {message_id!r} was already masked in epoch {self.epoch_}: a mask is used once"
            )
        self._used_ids.add(message_id)
        if in_place:
            if not (array.flags.c_contiguous and array.flags.writeable):
                raise SecureAggregationError("in-place masking needs a C-contiguous, writeable int64 array")
            out = array.view(MASKED_DTYPE).reshape(-1)  # IN/OUT: the party's array becomes the masked message
        else:
            out = np.ascontiguousarray(array).view(MASKED_DTYPE).ravel().copy()  # OUT: becomes the masked message
        n = out.shape[0]
        if n > MAX_STREAM_ENTRIES:
            raise SecureAggregationError(f"stream length must be in [0, {MAX_STREAM_ENTRIES}], got {n}")
        if n and sys.byteorder == "little":
            # scratch reused across messages: the counter blocks made once (every key encrypts the same
            # ones), then one stream per peer, added to the message
            scratch = self._scratch
            n_blocks = scratch.counter_blocks(nonce, n)
            words = scratch.rows(1, n_blocks)[0]
            for peer in self.active_peers_:
                scratch.encrypt(self._ciphers[peer], n_blocks, words)
                if peer > self.name:
                    out += words[:n]
                else:
                    out -= words[:n]
            return out.reshape(array.shape)
        for peer in self.active_peers_:
            stream = mask_stream(self._pair_keys[peer], nonce, n)
            if peer > self.name:
                out += stream
            else:
                out -= stream
        return out.reshape(array.shape)

    def restart(self, remaining: Iterable[str], *, epoch: int) -> None:
        """Continue with a subset of the parties and fresh masks.

        Parameters
        ----------
        remaining : iterable of str
            Names of the parties still in; this party's own name may be listed.
        epoch : int
            New epoch, strictly larger than :attr:`epoch_`; every party of the
            restart uses the same one. Message ids may be reused in it.

        Raises
        ------
        SecureAggregationError
            An epoch that does not increase, a name that is not an active peer,
            or no peer left.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch <= self.epoch_:
            raise SecureAggregationError(f"restart epoch must be an integer greater than {self.epoch_}, got {epoch!r}")
        if isinstance(remaining, str):
            raise SecureAggregationError(f"remaining must be a collection of names, got the string {remaining!r}")
        keep = set(remaining) - {self.name}
        unknown = sorted(keep - set(self.active_peers_), key=str)
        if unknown:
            raise SecureAggregationError(
                f"cannot restart with {unknown!r}: not active peers of {self.name!r} "
                f"(active: {list(self.active_peers_)})"
            )
        if not keep:
            raise SecureAggregationError(f"cannot restart {self.name!r} without any peer")
        self.active_peers_ = tuple(sorted(keep))
        self.epoch_ = epoch
        self._used_ids = set()
        if len(self.active_peers_) == 1:
            _two_party_warning(self.name, self.active_peers_[0])


# ---------------------------------------------------------------------------
# coordinator side
# ---------------------------------------------------------------------------


def unmask_sum(masked: Sequence[np.ndarray]) -> np.ndarray:
    """Sum of the parties' masked arrays: the masks cancel, the plain sum remains.

    Parameters
    ----------
    masked : sequence of ndarray of uint64, all of the same shape
        One array per party of the (restarted) round, masked for the same id.

    Returns
    -------
    total : ndarray of int64, that shape
        The sum mod 2**64 read as two's complement: the true sum of the
        parties' int64 arrays whenever it fits int64.
    """
    masked = list(masked)
    if not masked:
        raise SecureAggregationError("unmask_sum needs at least one masked array, got none")
    shape = masked[0].shape
    for i, part in enumerate(masked):
        if not isinstance(part, np.ndarray) or part.dtype != MASKED_DTYPE:
            got = part.dtype if isinstance(part, np.ndarray) else type(part).__name__
            raise SecureAggregationError(f"masked array {i} must be uint64, got {got}")
        if part.shape != shape:
            raise SecureAggregationError(f"masked array {i} has shape {part.shape}, expected {shape}")
    total = masked[0].copy()
    for part in masked[1:]:
        total += part  # wraps mod 2**64
    return total.view(PLAIN_DTYPE)


Masker.unmask_sum = staticmethod(unmask_sum)


def require_min_parties(n_parties: int, min_parties: int) -> None:
    """Refuse a federation smaller than ``privacy.min_parties``.

    Raises
    ------
    ConfigError
        ``min_parties`` below 2, or fewer parties than it.

    Warns
    -----
    SecureAggregationWarning
        Exactly two parties: each can read the other's arrays from the sum.
    """
    if isinstance(min_parties, bool) or not isinstance(min_parties, int) or min_parties < 2:
        raise ConfigError(f"privacy.min_parties must be an integer >= 2, got {min_parties!r}")
    if n_parties < min_parties:
        raise ConfigError(f"privacy.min_parties is {min_parties} but the federation has {n_parties} parties")
    if n_parties == 2:
        warnings.warn(
            "secure aggregation with two parties hides nothing between them: each can subtract "
            "its own array from the sum",
            SecureAggregationWarning,
            stacklevel=2,
        )
