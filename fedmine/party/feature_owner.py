"""A feature owner in vertical federation: its columns of the shared rows, answered encrypted.

This module owns :class:`FeatureOwner`, what an organisation that holds some
features (and not the label) of the shared customers computes for the label
holder. It bins its own features alone (it holds every value of them, so the
bins are the joined table's), receives the round's gradients and hessians
encrypted under the label holder's additively homomorphic key, and answers:

* encrypted histograms of its features over the rows of the requested nodes
  (the sums are exact integers only the label holder can decrypt);
* which rows of a node go left under a split on one of its features;
* the go-left test of its splits for the rows of a tree walk (scores of
  validation and out-of-bag rows, prediction);
* the raw thresholds of its splits, only when its own config publishes them.

Its bin edges are its table of thresholds: the label holder knows a split by
(feature, bin) and never the value. Rows are positions into the shared rows in
the common order the private set intersection gave every organisation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmine.errors import PartyError
from fedmine.gbdt import binning
from fedmine.gbdt.booster import feature_infos
from fedmine.gbdt.dtypes import X_DTYPE
from fedmine.gbdt.partition import goes_left
from fedmine.protocol import ProtocolError

#: Below this many shared rows the homomorphic work stays in the party's process: a pool of worker
#: processes costs seconds to start and load each round's ciphertexts, more than small nodes need.
POOL_MIN_ROWS = 20_000


def workers_for(n_rows: int) -> int | None:
    """Worker processes for the homomorphic work over ``n_rows`` shared rows (None: every core)."""
    return 1 if n_rows < POOL_MIN_ROWS else None


def default_cipher() -> Any:
    """The additively homomorphic scheme of the product path (:mod:`fedmine.privacy.paillier`)."""
    from fedmine.privacy import paillier

    return paillier


def compact_bins(bins: np.ndarray, n_bins: np.ndarray, nan_bin: int) -> np.ndarray:
    """Row-major codes per feature: bin ``b`` stays, the NaN bin becomes ``n_bins[f]`` (the last cell).

    Parameters
    ----------
    bins : ndarray of shape (n_features, n_rows), uint8
    n_bins : ndarray of shape (n_features,)

    Returns
    -------
    codes : ndarray of shape (n_rows, n_features), uint8 (uint16 when a feature has 255 bins and a NaN cell)
        Column-major (Fortran order): each feature's codes are contiguous.
    """
    dtype = np.uint8 if int(np.max(n_bins, initial=0)) < 255 else np.uint16
    codes = np.where(bins == nan_bin, np.asarray(n_bins)[:, None], bins).astype(dtype)
    return codes.T


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """Bool rows -> uint8 bits (the wire carries one bit per row)."""
    return np.packbits(np.asarray(mask, dtype=bool), axis=-1)


def unpack_mask(bits: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(np.asarray(bits, dtype=np.uint8), axis=-1, count=n).astype(bool)


class FeatureOwner:
    """One organisation's features of the shared rows.

    Parameters
    ----------
    name : the organisation's name (in messages).
    X : ndarray of shape (n_rows, n_features)
        Its features of the shared training rows, in the common order.
    X_valid : ndarray of shape (n_valid, n_features)
        Its features of the shared validation rows.
    publish_thresholds : bool
        This organisation's own config lets the thresholds of its splits go to the label holder.
    cipher : the homomorphic scheme (default :func:`default_cipher`).

    Attributes
    ----------
    mapper_ : BinMapper
        Its bins (set by :meth:`bins`).
    """

    def __init__(self, name: str, X, X_valid, *, publish_thresholds: bool = False, cipher: Any = None) -> None:
        self.name = name
        self.X = np.ascontiguousarray(X, dtype=X_DTYPE)
        self.X_valid = np.ascontiguousarray(X_valid, dtype=X_DTYPE).reshape(-1, self.X.shape[1])
        self.publish_thresholds = bool(publish_thresholds)
        self.cipher = cipher if cipher is not None else default_cipher()
        self.mapper_: binning.BinMapper | None = None
        self._rows: list[Any] = []
        self._public: Any = None
        self._public_bytes = b""
        self._incoming: list[tuple[np.ndarray, int]] | None = None  # a round's chunks so far, per tree

    @classmethod
    def from_predict_state(
        cls, name: str, kept: dict[str, Any], *, publish_thresholds: bool = False, cipher: Any = None
    ) -> FeatureOwner:
        """An owner that only predicts: its bins of :meth:`predict_state`, read from its disk, and no rows.

        It answers ``owner_predict`` (and ``owner_thresholds`` when its config
        publishes them) as the owner of that training did.
        """
        mapper = kept["mapper"]
        if not isinstance(mapper, binning.BinMapper):
            raise PartyError(f"party {name}: the kept predict state holds no bin mapper")
        empty = np.empty((0, mapper.n_features))
        owner = cls(name, empty, empty, publish_thresholds=publish_thresholds, cipher=cipher)
        owner.mapper_ = mapper
        return owner

    def predict_state(self) -> dict[str, Any]:
        """What predicting needs, for its own disk: its bin mapper (its table of thresholds), nothing else."""
        return {"mapper": self._need_bins("owner_predict")}

    def _need_bins(self, call: str) -> binning.BinMapper:
        if self.mapper_ is None:
            raise ProtocolError(f"{call} needs the owner's bins: owner_bins first")
        return self.mapper_

    # -- the calls -----------------------------------------------------------
    def bins(self, ranges, categorical, *, max_bin: int, n_grid: int) -> np.ndarray:
        """Bin its own features with the federation's rule; answer how many bins each has (not where).

        Parameters
        ----------
        ranges : ndarray of shape (n_features, 2) or None
            Declared (min, max), NaN where none is declared.
        categorical : ndarray of shape (n_features,), bool

        Returns
        -------
        n_bins : ndarray of shape (n_features,), int32
        """
        mask = np.asarray(categorical, dtype=bool)
        if mask.shape != (self.X.shape[1],):
            raise PartyError(
                f"party {self.name}: owner_bins: {mask.shape[0]} features asked, it holds {self.X.shape[1]}"
            )
        m = binning.fit_bins(self.X, max_bin=max_bin, categorical=mask, n_grid=n_grid, ranges=ranges)
        self.mapper_ = m
        self.bins_ = binning.bin_columns(self.X, m)
        self.bins_valid_ = binning.bin_columns(self.X_valid, m)
        self._codes = compact_bins(self.bins_, m.n_bins, m.nan_bin)
        self._cells = m.n_bins.astype(np.int64) + 1  # each feature's bins and its NaN cell
        return m.n_bins.copy()

    def gradients(self, public: bytes, rows: list[np.ndarray], part=None) -> None:
        """Keep the round's encrypted gradients and hessians, one array per tree of the round.

        ``part`` None: ``rows`` holds every tree's whole array. Otherwise
        ``part = [tree, trees, offset, total]`` and ``rows`` holds one chunk:
        rows ``offset..`` of tree ``tree``'s array of ``total`` rows, out of
        ``trees`` trees; chunks come in order (tree by tree, offset by
        offset), so a round too large for one message arrives in several.
        """
        self._need_bins("owner_gradients")
        c = self.cipher
        if public != self._public_bytes:  # one key per training: its tables are built once
            self._public = c.HomomorphicPublic.from_bytes(bytes(public))
            self._public_bytes = bytes(public)
        if part is None:
            self._incoming = None
            self._rows = [c.EncryptedRows.from_array(self._public, np.asarray(a)) for a in rows]
            return
        tree, trees, offset, total = (int(x) for x in part)
        chunk = np.asarray(rows[0]) if len(rows) == 1 else None
        if tree == 0 and offset == 0:  # a new round
            self._rows, self._incoming = [], []
        got = self._incoming
        if got is None or not got:
            expected = (0, 0)
        elif got[-1][1] < got[-1][0].shape[0]:
            expected = (len(got) - 1, got[-1][1])
        else:
            expected = (len(got), 0)
        if (
            got is None
            or chunk is None
            or chunk.ndim != 2
            or (tree, offset) != expected
            or tree >= trees
            or offset + chunk.shape[0] > total
            or (offset and chunk.shape[1] != got[tree][0].shape[1])
        ):
            self._incoming = None
            raise PartyError(
                f"party {self.name}: owner_gradients: chunk at row {offset} of tree {tree} ({trees} trees, "
                f"{total} rows) is out of order or malformed; a round's chunks come tree by tree, in order"
            )
        if offset == 0:
            got.append((np.empty((total, chunk.shape[1]), dtype=np.uint8), 0))
        buf, filled = got[tree]
        buf[offset : offset + chunk.shape[0]] = chunk
        got[tree] = (buf, filled + chunk.shape[0])
        if len(got) == trees and got[-1][1] == total:
            self._rows = [c.EncryptedRows.from_array(self._public, b) for b, _ in got]
            self._incoming = None

    def histograms(self, trees, node_rows: list[np.ndarray]) -> list[np.ndarray]:
        """Encrypted histograms of its features over each node's rows (packed ciphertexts, one array per node).

        Parameters
        ----------
        trees : ndarray of shape (m,), int64
            The tree of the round each node belongs to.
        node_rows : list of m ndarray of int
            Each node's rows (positions into the shared training rows).
        """
        self._need_bins("owner_histograms")
        trees = np.asarray(trees, dtype=np.int64).ravel()
        if not self._rows:
            raise ProtocolError("owner_histograms needs the round's gradients: owner_gradients first")
        if trees.shape[0] != len(node_rows) or (trees.size and not 0 <= trees.min() <= trees.max() < len(self._rows)):
            raise PartyError(f"party {self.name}: owner_histograms: trees {trees.tolist()[:8]} do not fit the round")
        n = self.X.shape[0]
        out = []
        for k, rows in zip(trees, node_rows):
            rows = np.asarray(rows, dtype=np.int64).ravel()
            if rows.size and not 0 <= rows.min() <= rows.max() < n:
                raise PartyError(f"party {self.name}: owner_histograms: rows outside its {n} shared rows")
            packed = self.cipher.encrypted_histograms(
                self._public, self._rows[int(k)], self._codes, rows, self._cells, workers=workers_for(n)
            )
            out.append(packed.to_array())
        return out

    def split(self, rows, feature: int, bin_threshold: int, default_left: bool, cat_bitset) -> np.ndarray:
        """Which of a node's rows go left under a split on its ``feature`` (one bit per row, in order)."""
        m = self._need_bins("owner_split")
        f = self._feature(feature, "owner_split")
        rows = np.asarray(rows, dtype=np.int64).ravel()
        return pack_mask(goes_left(self.bins_[f, rows], bin_threshold, default_left, cat_bitset, m.nan_bin))

    def decisions(self, nodes, bitsets, rows, *, valid: bool) -> np.ndarray:
        """The go-left test of several splits on its features, for some rows.

        Parameters
        ----------
        nodes : ndarray of shape (m, 3), int64
            ``feature, bin_threshold, default_left`` per split.
        bitsets : list of m (ndarray of shape (8,), uint32) or None
            The categories going left, for categorical splits.
        rows : ndarray of int or None
            Positions into its training rows; None: every validation row (``valid``) or training row.
        valid : bool

        Returns
        -------
        bits : ndarray of shape (m, ceil(n / 8)), uint8
        """
        m = self._need_bins("owner_decisions")
        nodes = np.asarray(nodes, dtype=np.int64).reshape(-1, 3)
        bins = self.bins_valid_ if valid else self.bins_
        rows = np.arange(bins.shape[1]) if rows is None else np.asarray(rows, dtype=np.int64).ravel()
        out = np.zeros((nodes.shape[0], rows.shape[0]), dtype=bool)
        for j, (f, b, d) in enumerate(nodes):
            col = bins[self._feature(int(f), "owner_decisions"), rows]
            out[j] = goes_left(col, b, d, bitsets[j], m.nan_bin)
        return pack_mask(out)

    def decide_raw(self, X, nodes, bitsets) -> np.ndarray:
        """The go-left test of splits on its features for new rows (prediction), binned with its bins."""
        m = self._need_bins("owner_predict")
        bins = binning.bin_columns(np.asarray(X, dtype=X_DTYPE).reshape(-1, self.X.shape[1]), m)
        nodes = np.asarray(nodes, dtype=np.int64).reshape(-1, 3)
        out = np.zeros((nodes.shape[0], bins.shape[1]), dtype=bool)
        for j, (f, b, d) in enumerate(nodes):
            out[j] = goes_left(bins[self._feature(int(f), "owner_predict")], b, d, bitsets[j], m.nan_bin)
        return pack_mask(out)

    def thresholds(self, features, bin_thresholds) -> dict[str, Any]:
        """The raw thresholds of its numeric splits and its features' ranges, if its config publishes them."""
        m = self._need_bins("owner_thresholds")
        if not self.publish_thresholds:
            raise PartyError(
                f"party {self.name}: owner_thresholds refused: this organisation's config does not set "
                f"vertical.publish_thresholds: true"
            )
        features = np.asarray(features, dtype=np.int64).ravel()
        values = np.array(
            [m.threshold(self._feature(int(f), "owner_thresholds"), int(b)) for f, b in zip(features, bin_thresholds)],
            dtype=np.float64,
        )
        return {"thresholds": values, "feature_infos": feature_infos(m)}

    def _feature(self, feature: int, call: str) -> int:
        if not 0 <= int(feature) < self.X.shape[1]:
            raise PartyError(f"party {self.name}: {call}: feature {feature} is not one of its {self.X.shape[1]}")
        return int(feature)
