"""An in-test stand-in for the homomorphic scheme: exact plaintext integer sums with the same interface.

Tests of the tree growth use it where the scheme's cost would dominate; the
product path always encrypts (:func:`fedmine.party.feature_owner.default_cipher`).
"""

from __future__ import annotations

import numpy as np


class HomomorphicPublic:
    def to_bytes(self) -> bytes:
        return b"plain"

    @classmethod
    def from_bytes(cls, data: bytes) -> HomomorphicPublic:
        assert data == b"plain"
        return cls()


class HomomorphicKeys:
    def __init__(self) -> None:
        self.public = HomomorphicPublic()

    @classmethod
    def generate(cls, *, bits: int = 2048) -> HomomorphicKeys:
        return cls()


class EncryptedRows:
    def __init__(self, gh: np.ndarray) -> None:
        self.gh = gh

    def to_array(self) -> np.ndarray:
        return self.gh.view(np.uint8).reshape(self.gh.shape[0], 16)

    @classmethod
    def from_array(cls, public, arr) -> EncryptedRows:
        return cls(np.ascontiguousarray(arr).view(np.int64).reshape(-1, 2))


class PackedHistograms:
    def __init__(self, cells: np.ndarray) -> None:
        self.cells = cells

    def to_array(self) -> np.ndarray:
        return self.cells.view(np.uint8).reshape(self.cells.shape[0], 24)

    @classmethod
    def from_array(cls, public, arr) -> PackedHistograms:
        return cls(np.ascontiguousarray(arr).view(np.int64).reshape(-1, 3))


#: ``(grad_bound, hess_bound, max_rows)`` of every encryption, in order: the layout an owner would read.
LAYOUTS: list[tuple[int, int, int]] = []


def encrypt_rows(public, grad, hess, *, grad_bound, hess_bound, max_rows, workers=None) -> EncryptedRows:
    assert np.abs(grad).max(initial=0) <= grad_bound and hess.max(initial=0) <= hess_bound
    LAYOUTS.append((int(grad_bound), int(hess_bound), int(max_rows)))
    return EncryptedRows(np.stack([grad, hess], axis=1).astype(np.int64))


def encrypted_histograms(public, rows, bins, node_rows, n_bins, *, workers=None) -> PackedHistograms:
    offsets = np.concatenate([[0], np.cumsum(n_bins)[:-1]])
    cells = np.zeros((int(np.sum(n_bins)), 3), dtype=np.int64)
    gh = rows.gh[node_rows]
    for f in range(bins.shape[1]):
        idx = offsets[f] + bins[node_rows, f].astype(np.int64)
        np.add.at(cells[:, 0], idx, gh[:, 0])
        np.add.at(cells[:, 1], idx, gh[:, 1])
        np.add.at(cells[:, 2], idx, 1)
    return PackedHistograms(cells)


def decrypt_histograms(keys, packed):
    c = packed.cells
    return c[:, 0].copy(), c[:, 1].copy(), c[:, 2].copy()
