"""Integer gradient histograms over uint8 bins.

This module owns the histogram kernels a party runs on its own rows. A
histogram of one node is an int64 array of shape ``(n_features, max_bin + 1, 3)``
holding, per feature and bin, the sums of fixed-point gradients, fixed-point
hessians and the row count (``dtypes.GRAD, HESS, COUNT``).

Two layouts of the rows feed the kernels:

* the root of a tree without bagging reads every row in order;
* any other node reads a contiguous segment of the data partition
  (:mod:`fedmine.gbdt.partition`): ``rows = indices[start:start + count]``. Its
  gradients are first gathered into that order ("ordered gradients", as in
  LightGBM) so the inner loop reads them sequentially and only the uint8 bins
  are gathered::

      indices   [ 7 2 9 | 4 0 5 8 | 1 3 6 ]      leaf segments, contiguous
      ordered_g [ g7 g2 g9 ]                      gathered once per node
      hist[f, bins[f, 7]] += g7, ...              one pass per feature (prange)

Packed accumulators: when the hessian scale was chosen with ``count_bits`` of
headroom (:func:`fedmine.gbdt.quantize.choose_packing`), each row carries one
int64 ``hc = q_h << count_bits | 1``: one add accumulates the hessian and the
count, a third less memory traffic. :func:`unpack_histogram` restores the
3-field layout, bit-identical to the unpacked kernels.

Every kernel has a plain numpy twin (``*_numpy``) and a test that they agree.
The sibling of a built child is ``parent - child`` (:func:`subtract`).
"""

from __future__ import annotations

import numba
import numpy as np

from fedmine.gbdt.dtypes import COUNT, G_INT_DTYPE, GRAD, HESS, HIST_FIELDS, ROW_INDEX_DTYPE, X_BINNED_DTYPE


def empty_histograms(n_nodes: int, n_features: int, n_bins: int) -> np.ndarray:
    """Zeroed batch of histograms, shape ``(n_nodes, n_features, n_bins, 3)``, int64."""
    return np.zeros((n_nodes, n_features, n_bins, HIST_FIELDS), dtype=G_INT_DTYPE)


# ---------------------------------------------------------------------------
# numba kernels (private)
# ---------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _gather_kernel(rows, g, h, og, oh):  # pragma: no cover - numba
    # serial: memory bound, and a parallel region costs more than it saves
    for i in range(rows.shape[0]):
        r = rows[i]
        og[i] = g[r]
        oh[i] = h[r]


# Features are accumulated two at a time: one read of the row index and of its
# gradients feeds two independent histograms (about a quarter faster than one
# feature per pass). ``rows is None`` kernels read every row in order.


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_all_rows(bins, f, g, h, hist):  # pragma: no cover - numba
    if f + 1 < bins.shape[0]:
        c0, c1 = bins[f], bins[f + 1]
        h0, h1 = hist[f], hist[f + 1]
        for i in range(c0.shape[0]):
            a, c = g[i], h[i]
            b = c0[i]
            h0[b, 0] += a
            h0[b, 1] += c
            h0[b, 2] += 1
            b = c1[i]
            h1[b, 0] += a
            h1[b, 1] += c
            h1[b, 2] += 1
    else:
        c0, h0 = bins[f], hist[f]
        for i in range(c0.shape[0]):
            b = c0[i]
            h0[b, 0] += g[i]
            h0[b, 1] += h[i]
            h0[b, 2] += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_rows(bins, f, rows, og, oh, hist):  # pragma: no cover - numba
    if f + 1 < bins.shape[0]:
        c0, c1 = bins[f], bins[f + 1]
        h0, h1 = hist[f], hist[f + 1]
        for i in range(rows.shape[0]):
            r = rows[i]
            a, c = og[i], oh[i]
            b = c0[r]
            h0[b, 0] += a
            h0[b, 1] += c
            h0[b, 2] += 1
            b = c1[r]
            h1[b, 0] += a
            h1[b, 1] += c
            h1[b, 2] += 1
    else:
        c0, h0 = bins[f], hist[f]
        for i in range(rows.shape[0]):
            b = c0[rows[i]]
            h0[b, 0] += og[i]
            h0[b, 1] += oh[i]
            h0[b, 2] += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_all_rows_packed(bins, f, g, hc, hist2):  # pragma: no cover - numba
    if f + 1 < bins.shape[0]:
        c0, c1 = bins[f], bins[f + 1]
        h0, h1 = hist2[f], hist2[f + 1]
        for i in range(c0.shape[0]):
            a, c = g[i], hc[i]
            b = c0[i]
            h0[b, 0] += a
            h0[b, 1] += c
            b = c1[i]
            h1[b, 0] += a
            h1[b, 1] += c
    else:
        c0, h0 = bins[f], hist2[f]
        for i in range(c0.shape[0]):
            b = c0[i]
            h0[b, 0] += g[i]
            h0[b, 1] += hc[i]


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_rows_packed(bins, f, rows, og, ohc, hist2):  # pragma: no cover - numba
    if f + 1 < bins.shape[0]:
        c0, c1 = bins[f], bins[f + 1]
        h0, h1 = hist2[f], hist2[f + 1]
        for i in range(rows.shape[0]):
            r = rows[i]
            a, c = og[i], ohc[i]
            b = c0[r]
            h0[b, 0] += a
            h0[b, 1] += c
            b = c1[r]
            h1[b, 0] += a
            h1[b, 1] += c
    else:
        c0, h0 = bins[f], hist2[f]
        for i in range(rows.shape[0]):
            b = c0[rows[i]]
            h0[b, 0] += og[i]
            h0[b, 1] += ohc[i]


# Parallel (prange over feature pairs) and serial twins of each loop. The serial
# ones serve small nodes, and parties that run concurrently on their own threads.


@numba.njit(parallel=True, cache=True, nogil=True)
def _hist_all_rows_kernel(bins, g, h, hist):  # pragma: no cover - numba
    for p in numba.prange((bins.shape[0] + 1) // 2):
        _pair_all_rows(bins, 2 * p, g, h, hist)


@numba.njit(cache=True, nogil=True)
def _hist_all_rows_serial_kernel(bins, g, h, hist):  # pragma: no cover - numba
    for p in range((bins.shape[0] + 1) // 2):
        _pair_all_rows(bins, 2 * p, g, h, hist)


@numba.njit(parallel=True, cache=True, nogil=True)
def _hist_rows_kernel(bins, rows, og, oh, hist):  # pragma: no cover - numba
    for p in numba.prange((bins.shape[0] + 1) // 2):
        _pair_rows(bins, 2 * p, rows, og, oh, hist)


@numba.njit(cache=True, nogil=True)
def _hist_rows_serial_kernel(bins, rows, og, oh, hist):  # pragma: no cover - numba
    for p in range((bins.shape[0] + 1) // 2):
        _pair_rows(bins, 2 * p, rows, og, oh, hist)


@numba.njit(parallel=True, cache=True, nogil=True)
def _hist_all_rows_packed_kernel(bins, g, hc, hist2):  # pragma: no cover - numba
    for p in numba.prange((bins.shape[0] + 1) // 2):
        _pair_all_rows_packed(bins, 2 * p, g, hc, hist2)


@numba.njit(cache=True, nogil=True)
def _hist_all_rows_packed_serial_kernel(bins, g, hc, hist2):  # pragma: no cover - numba
    for p in range((bins.shape[0] + 1) // 2):
        _pair_all_rows_packed(bins, 2 * p, g, hc, hist2)


@numba.njit(parallel=True, cache=True, nogil=True)
def _hist_rows_packed_kernel(bins, rows, og, ohc, hist2):  # pragma: no cover - numba
    for p in numba.prange((bins.shape[0] + 1) // 2):
        _pair_rows_packed(bins, 2 * p, rows, og, ohc, hist2)


@numba.njit(cache=True, nogil=True)
def _hist_rows_packed_serial_kernel(bins, rows, og, ohc, hist2):  # pragma: no cover - numba
    for p in range((bins.shape[0] + 1) // 2):
        _pair_rows_packed(bins, 2 * p, rows, og, ohc, hist2)


@numba.njit(cache=True, nogil=True)
def _unpack_kernel(hist2, count_bits, out):  # pragma: no cover - numba
    mask = (np.int64(1) << count_bits) - 1
    for f in range(hist2.shape[0]):
        for b in range(hist2.shape[1]):
            v = hist2[f, b, 1]
            out[f, b, 0] = hist2[f, b, 0]
            out[f, b, 1] = v >> count_bits
            out[f, b, 2] = v & mask


# ---------------------------------------------------------------------------
# public wrappers: check dtypes once, then call a kernel
# ---------------------------------------------------------------------------


def _check(bins, g, h):
    if bins.dtype != X_BINNED_DTYPE or bins.ndim != 2 or not bins.flags.c_contiguous:
        raise TypeError("bins must be a C-contiguous uint8 array of shape (n_features, n_rows)")
    if g.dtype != G_INT_DTYPE or h.dtype != G_INT_DTYPE:
        raise TypeError("fixed-point gradients and hessians must be int64")


def gather(rows: np.ndarray, g: np.ndarray, h: np.ndarray, og: np.ndarray, oh: np.ndarray) -> None:
    """Ordered gradients: ``og[i] = g[rows[i]]``, ``oh[i] = h[rows[i]]`` (OUT: og, oh)."""
    _gather_kernel(rows, g, h, og, oh)


def build_histogram(bins, g, h, n_bins: int, rows=None, *, out=None) -> np.ndarray:
    """Histogram of one node.

    Parameters
    ----------
    bins : ndarray of shape (n_features, n_rows), uint8, C-contiguous
    g, h : ndarray of shape (n_rows,), int64
        Fixed-point gradient and hessian of every row of the party.
    n_bins : int
        ``max_bin + 1`` (the last bin is NaN).
    rows : ndarray of shape (n_node_rows,), int32, optional
        The node's rows; all rows in order if None.
    out : ndarray of shape (n_features, n_bins, 3), int64, optional
        Accumulated into (IN/OUT) if given, else a zeroed array is made.

    Returns
    -------
    hist : ndarray of shape (n_features, n_bins, 3), int64
    """
    _check(bins, g, h)
    if out is None:
        out = np.zeros((bins.shape[0], n_bins, HIST_FIELDS), dtype=G_INT_DTYPE)
    if rows is None:
        build_histogram_ordered(bins, None, g, h, out)
    else:
        rows = np.ascontiguousarray(rows, dtype=ROW_INDEX_DTYPE)
        og = np.empty(rows.shape[0], dtype=G_INT_DTYPE)
        oh = np.empty(rows.shape[0], dtype=G_INT_DTYPE)
        _gather_kernel(rows, g, h, og, oh)
        build_histogram_ordered(bins, rows, og, oh, out)
    return out


#: Nodes with fewer rows than this are built on one thread.
SERIAL_ROWS = 4096


def build_histogram_ordered(bins, rows, og, oh, out, *, parallel: bool = True) -> np.ndarray:
    """Histogram of a partition segment whose gradients are already gathered.

    Parameters
    ----------
    bins : ndarray of shape (n_features, n_rows), uint8
    rows : ndarray of shape (m,), int32, or None for every row in order
    og, oh : ndarray of shape (m,), int64
        Gradients of ``rows``, in that order (:func:`gather`).
    out : ndarray of shape (n_features, n_bins, 3), int64, zeroed (IN/OUT)
    parallel : bool
        Use numba threads (over features) for nodes of at least SERIAL_ROWS rows.
    """
    n = bins.shape[1] if rows is None else rows.shape[0]
    serial = not parallel or n < SERIAL_ROWS
    if rows is None:
        (_hist_all_rows_serial_kernel if serial else _hist_all_rows_kernel)(bins, og, oh, out)
    else:
        (_hist_rows_serial_kernel if serial else _hist_rows_kernel)(bins, rows, og, oh, out)
    return out


def build_histogram_packed(bins, g, hc, n_bins: int, count_bits: int, rows=None) -> np.ndarray:
    """Histogram of one node from packed ``hc = q_h << count_bits | 1`` rows.

    Same parameters as :func:`build_histogram` with ``hc`` in place of ``h``;
    returns the unpacked ``(n_features, n_bins, 3)`` histogram.
    """
    _check(bins, g, hc)
    hist2 = np.zeros((bins.shape[0], n_bins, 2), dtype=G_INT_DTYPE)
    if rows is None:
        return build_histogram_packed_ordered(bins, None, g, hc, count_bits, hist2)
    rows = np.ascontiguousarray(rows, dtype=ROW_INDEX_DTYPE)
    og = np.empty(rows.shape[0], dtype=G_INT_DTYPE)
    ohc = np.empty(rows.shape[0], dtype=G_INT_DTYPE)
    _gather_kernel(rows, g, hc, og, ohc)
    return build_histogram_packed_ordered(bins, rows, og, ohc, count_bits, hist2)


def build_histogram_packed_ordered(
    bins, rows, og, ohc, count_bits: int, out2, *, parallel: bool = True, out=None
) -> np.ndarray:
    """Packed twin of :func:`build_histogram_ordered`; ``out2`` has shape (n_features, n_bins, 2).

    Returns the unpacked ``(n_features, n_bins, 3)`` histogram (written into
    ``out`` if given).
    """
    build_histogram_packed_accumulate(bins, rows, og, ohc, out2, parallel=parallel)
    return unpack_histogram(out2, count_bits, out)


def build_histogram_packed_accumulate(bins, rows, og, ohc, out2, *, parallel: bool = True) -> np.ndarray:
    """Packed accumulators only: ``out2`` (IN/OUT, shape (n_features, n_bins, 2)) += the node's packed sums."""
    n = bins.shape[1] if rows is None else rows.shape[0]
    serial = not parallel or n < SERIAL_ROWS
    if rows is None:
        (_hist_all_rows_packed_serial_kernel if serial else _hist_all_rows_packed_kernel)(bins, og, ohc, out2)
    else:
        (_hist_rows_packed_serial_kernel if serial else _hist_rows_packed_kernel)(bins, rows, og, ohc, out2)
    return out2


def pack_hess_count(h: np.ndarray, count_bits: int) -> np.ndarray:
    """``hc = h << count_bits | 1`` per row (``h`` int64, non-negative)."""
    return (h << count_bits) | 1


def unpack_histogram(hist2: np.ndarray, count_bits: int, out=None) -> np.ndarray:
    """``(..., 2)`` packed (grad, hess|count) histograms -> ``(..., 3)`` (grad, hess, count).

    ``out`` (OUT), if given, receives a 3-D ``(n_features, n_bins, 3)`` result.
    """
    if out is not None and hist2.ndim == 3:
        _unpack_kernel(hist2, int(count_bits), out)
        return out
    out = np.empty(hist2.shape[:-1] + (HIST_FIELDS,), dtype=G_INT_DTYPE)
    out[..., GRAD] = hist2[..., 0]
    out[..., HESS] = hist2[..., 1] >> count_bits
    out[..., COUNT] = hist2[..., 1] & ((1 << count_bits) - 1)
    return out


def subtract(parent: np.ndarray, child: np.ndarray) -> np.ndarray:
    """Sibling histogram ``parent - child`` (exact in integers)."""
    return parent - child


def build_histogram_numpy(bins, g, h, n_bins: int, rows=None) -> np.ndarray:
    """Plain numpy twin of :func:`build_histogram` (and of the packed kernels)."""
    if rows is None:
        rows = np.arange(bins.shape[1])
    rows = np.asarray(rows, dtype=np.int64)
    n_features = bins.shape[0]
    out = np.zeros((n_features, n_bins, HIST_FIELDS), dtype=G_INT_DTYPE)
    for f in range(n_features):
        b = bins[f, rows].astype(np.int64)
        np.add.at(out[f, :, GRAD], b, g[rows])
        np.add.at(out[f, :, HESS], b, h[rows])
        np.add.at(out[f, :, COUNT], b, 1)
    return out


# ---------------------------------------------------------------------------
# the compact layout on the wire: only the cells a row can reach
# ---------------------------------------------------------------------------


def reachable_cells(n_bins: np.ndarray, max_bin: int) -> np.ndarray:
    """Histogram cells a row can reach: bins below ``n_bins[f]``, and the NaN bin ``max_bin``.

    Returns
    -------
    cells : ndarray of shape (n_features, max_bin + 1), bool
        The other cells (padding of features with fewer bins) are zero for
        every data set.
    """
    n_bins = np.asarray(n_bins, dtype=np.int64)
    cells = np.arange(max_bin + 1)[None, :] < n_bins[:, None]
    cells[:, max_bin] = True
    return cells


def cell_index(cells: np.ndarray) -> np.ndarray:
    """Flat positions ``f * (max_bin + 1) + b`` of the reachable cells, in the compact order (int64)."""
    return np.flatnonzero(np.asarray(cells, dtype=bool).ravel()).astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _compact_kernel(hist, index, out):  # pragma: no cover - numba
    # hist (n_features * n_bins, W) -> out (n_cells, W)
    for i in range(index.shape[0]):
        c = index[i]
        for w in range(hist.shape[1]):
            out[i, w] = hist[c, w]


@numba.njit(cache=True, nogil=True)
def _expand_kernel(compact, index, count_bits, out):  # pragma: no cover - numba
    # compact (n_nodes, n_cells, 2 or 3) -> out (n_nodes, n_features * n_bins, 3), zeroed; 2 fields: packed
    mask = (np.int64(1) << count_bits) - 1
    packed = compact.shape[2] == 2
    for j in range(compact.shape[0]):
        for i in range(index.shape[0]):
            c = index[i]
            out[j, c, 0] = compact[j, i, 0]
            if packed:
                v = compact[j, i, 1]
                out[j, c, 1] = v >> count_bits
                out[j, c, 2] = v & mask
            else:
                out[j, c, 1] = compact[j, i, 1]
                out[j, c, 2] = compact[j, i, 2]


def compact_into(hist: np.ndarray, index: np.ndarray, out: np.ndarray) -> np.ndarray:
    """One node's ``(n_features, n_bins, W)`` histogram -> ``out`` (OUT) of shape ``(n_cells, W)``.

    ``index`` is :func:`cell_index` of the training's cells.
    """
    _compact_kernel(hist.reshape(-1, hist.shape[-1]), index, out)
    return out


def expand_fields(compact: np.ndarray, index: np.ndarray, shape: tuple, count_bits: int) -> np.ndarray:
    """Compact histograms (packed or not) -> the full ``(n_nodes, n_features, n_bins, 3)`` layout, in one pass.

    ``compact`` has shape ``(n_nodes, n_cells, 2)`` (:func:`pack_fields`'
    layout, ``count_bits > 0``) or ``(n_nodes, n_cells, 3)``; ``shape`` is
    ``(n_features, n_bins)``. Equals ``expand_histograms(unpack_fields(...))``.
    """
    compact = np.ascontiguousarray(compact, dtype=G_INT_DTYPE)
    out = np.zeros((compact.shape[0], shape[0] * shape[1], HIST_FIELDS), dtype=G_INT_DTYPE)
    _expand_kernel(compact, index, int(count_bits), out)
    return out.reshape(compact.shape[0], shape[0], shape[1], HIST_FIELDS)


def compact_histograms(hists: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``(n_nodes, n_features, max_bin + 1, 3)`` -> ``(n_nodes, n_cells, 3)``: each feature's own bins only.

    The layout is the same at every party (the federation's bins), so compact
    histograms add up, under masks too, to the compact histogram of the sum.
    """
    return np.ascontiguousarray(hists[:, cells])


def expand_histograms(compact: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Inverse of :func:`compact_histograms`: padding cells are zero (as no row reaches them)."""
    out = np.zeros((compact.shape[0], *cells.shape, compact.shape[-1]), dtype=compact.dtype)
    out[:, cells] = compact
    return out


def pack_fields(hists: np.ndarray, count_bits: int) -> np.ndarray:
    """``(..., 3)`` (grad, hess, count) -> ``(..., 2)`` (grad, hess << count_bits | count) for the wire.

    Exact when ``count_bits > 0`` was chosen for the federation's rows (every
    count below ``2**count_bits``, every packed sum inside int64), as for the
    packed accumulators: packed answers then add up to the packed sum, masked
    or not, and :func:`unpack_fields` gives back the three fields.
    """
    out = np.empty((*hists.shape[:-1], 2), dtype=G_INT_DTYPE)
    out[..., 0] = hists[..., GRAD]
    out[..., 1] = (hists[..., HESS] << count_bits) | hists[..., COUNT]
    return out


def unpack_fields(packed: np.ndarray, count_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_fields`."""
    out = np.empty((*packed.shape[:-1], HIST_FIELDS), dtype=G_INT_DTYPE)
    out[..., GRAD] = packed[..., 0]
    out[..., HESS] = packed[..., 1] >> count_bits
    out[..., COUNT] = packed[..., 1] & ((1 << count_bits) - 1)
    return out
