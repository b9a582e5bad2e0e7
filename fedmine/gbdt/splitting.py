"""Best split of a node from its summed integer histogram, with LightGBM semantics.

This module owns the split rules. Given a node's histogram (summed over every
party) it returns the best split as a :data:`~fedmine.gbdt.dtypes.SPLIT_DTYPE`
record, following LightGBM's ``FeatureHistogram``:

* gains: ``T(g)^2 / (h + l2)`` with ``T`` the L1 soft threshold, leaf output
  ``-T(g) / (h + l2)``; a split must beat the node's own gain (given its
  output) plus ``min_gain_to_split``, and reports the excess as its gain;
* ``min_data_in_leaf`` and ``min_sum_hessian_in_leaf`` on both children;
* numeric features: a reverse scan that sends the NaN bin left
  (``default_left = 1``) and a forward scan that sends it right, strict ``>``
  keeping the first best found (reverse first), so ties resolve as in LightGBM;
* categorical features: one-vs-rest when ``n_categories + 1 <=
  max_cat_to_onehot``, else many-vs-many: categories with at least
  ``cat_smooth`` rows sorted by ``sum_grad / (sum_hess + cat_smooth)``, scanned
  from both ends for at most ``max_cat_threshold`` categories, with groups of
  at least ``min_data_per_group`` rows and ``lambda_l2 + cat_l2``. NaN and
  unseen categories always go right;
* across features: larger gain wins, ties go to the lower feature index.

The sums are integers; they are converted to float once per candidate
(``q / scale``), so the same histogram always gives the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from fedmine.gbdt.dtypes import CAT_BITSET_DTYPE, CAT_WORDS, SPLIT_DTYPE

K_EPSILON = 1e-15


@dataclass(frozen=True)
class SplitRules:
    """Split hyper-parameters (validated by :mod:`fedmine.gbdt.params`)."""

    lambda_l1: float = 0.0
    lambda_l2: float = 0.0
    min_data_in_leaf: int = 20
    min_sum_hessian_in_leaf: float = 1e-3
    min_gain_to_split: float = 0.0
    cat_smooth: float = 10.0
    cat_l2: float = 10.0
    max_cat_threshold: int = 32
    min_data_per_group: int = 100
    max_cat_to_onehot: int = 4

    def as_array(self) -> np.ndarray:
        return np.array(
            [
                self.lambda_l1,
                self.lambda_l2,
                self.min_data_in_leaf,
                self.min_sum_hessian_in_leaf,
                self.min_gain_to_split,
                self.cat_smooth,
                self.cat_l2,
                self.max_cat_threshold,
                self.min_data_per_group,
                self.max_cat_to_onehot,
            ],
            dtype=np.float64,
        )


@numba.njit(cache=True, nogil=True, inline="always")
def _threshold_l1(s, l1):  # pragma: no cover - numba
    reg = abs(s) - l1
    if reg <= 0.0:
        return 0.0
    return reg if s > 0 else -reg


@numba.njit(cache=True, nogil=True, inline="always")
def leaf_output(g, h, l1, l2):  # pragma: no cover - numba
    """LightGBM's CalculateSplittedLeafOutput (no max_delta_step, no smoothing); 0 without hessian."""
    den = h + l2
    if den <= 0.0:
        return 0.0
    return -_threshold_l1(g, l1) / den


@numba.njit(cache=True, nogil=True, inline="always")
def _gain_given_output(g, h, l1, l2, out):  # pragma: no cover - numba
    sg = _threshold_l1(g, l1)
    return -(2.0 * sg * out + (h + l2) * out * out)


@numba.njit(cache=True, nogil=True, inline="always")
def _leaf_gain(g, h, l1, l2):  # pragma: no cover - numba
    return _gain_given_output(g, h, l1, l2, leaf_output(g, h, l1, l2))


@numba.njit(cache=True, nogil=True)
def _best_split_kernel(hist, allowed, n_bins, is_cat, nan_bin, inv_sg, inv_sh, p, parent_output, rec, bitset):
    # pragma: no cover - numba
    # rec (int64[9]):  feature, bin_threshold, default_left, is_cat, lg, lh, lc, -, dir
    # returns best gain (after the shift), -inf if none
    l1 = p[0]
    l2_base = p[1]
    min_data = p[2]
    min_hess = p[3]
    min_gain = p[4]
    cat_smooth = p[5]
    cat_l2 = p[6]
    max_cat_threshold = int(p[7])
    min_data_per_group = p[8]
    max_cat_to_onehot = p[9]

    n_features = hist.shape[0]
    tg = np.int64(0)
    th = np.int64(0)
    tc = np.int64(0)
    for b in range(hist.shape[1]):
        tg += hist[0, b, 0]
        th += hist[0, b, 1]
        tc += hist[0, b, 2]
    sum_g = tg * inv_sg
    sum_h = th * inv_sh
    gain_shift = _gain_given_output(sum_g, sum_h, l1, l2_base, parent_output)
    min_gain_shift = gain_shift + min_gain

    best_gain = -np.inf  # raw gain (before the shift)
    best_feature = -1
    best_rec = np.zeros(9, dtype=np.int64)
    best_bits = np.zeros(bitset.shape[0], dtype=np.uint32)
    best_l2 = l2_base

    for f in range(n_features):
        if not allowed[f]:
            continue
        nb = n_bins[f]
        hf = hist[f]
        f_gain = -np.inf
        f_rec = np.zeros(9, dtype=np.int64)
        f_bits = np.zeros(bitset.shape[0], dtype=np.uint32)
        f_l2 = l2_base
        if not is_cat[f]:
            if nb < 2:
                continue
            l2 = l2_base
            # reverse scan: right accumulates bins nb-1 .. t, NaN stays left
            rg = np.int64(0)
            rh = np.int64(0)
            rc = np.int64(0)
            for t in range(nb - 1, 0, -1):
                rg += hf[t, 0]
                rh += hf[t, 1]
                rc += hf[t, 2]
                frh = rh * inv_sh
                if rc < min_data or frh < min_hess:
                    continue
                lc = tc - rc
                if lc < min_data:
                    break
                lh = th - rh
                flh = lh * inv_sh
                if flh < min_hess:
                    break
                lg = tg - rg
                gain = _leaf_gain(lg * inv_sg, flh, l1, l2) + _leaf_gain(rg * inv_sg, frh, l1, l2)
                if gain <= min_gain_shift:
                    continue
                if gain > f_gain:
                    f_gain = gain
                    f_rec[1] = t - 1
                    f_rec[2] = 1
                    f_rec[4] = lg
                    f_rec[5] = lh
                    f_rec[6] = lc
            # forward scan: left accumulates bins 0 .. t, NaN goes right
            if hf[nan_bin, 2] > 0:
                lg = np.int64(0)
                lh = np.int64(0)
                lc = np.int64(0)
                for t in range(0, nb):
                    lg += hf[t, 0]
                    lh += hf[t, 1]
                    lc += hf[t, 2]
                    flh = lh * inv_sh
                    if lc < min_data or flh < min_hess:
                        continue
                    rc = tc - lc
                    if rc < min_data:
                        break
                    rh = th - lh
                    frh = rh * inv_sh
                    if frh < min_hess:
                        break
                    rg = tg - lg
                    gain = _leaf_gain(lg * inv_sg, flh, l1, l2) + _leaf_gain(rg * inv_sg, frh, l1, l2)
                    if gain <= min_gain_shift:
                        continue
                    if gain > f_gain:
                        f_gain = gain
                        f_rec[1] = t
                        f_rec[2] = 0
                        f_rec[4] = lg
                        f_rec[5] = lh
                        f_rec[6] = lc
        else:
            if nb + 1 <= max_cat_to_onehot:
                l2 = l2_base
                for t in range(nb):
                    c = hf[t, 2]
                    fh = hf[t, 1] * inv_sh
                    if c < min_data or fh < min_hess:
                        continue
                    oc = tc - c
                    if oc < min_data:
                        continue
                    oh = th - hf[t, 1]
                    foh = oh * inv_sh
                    if foh < min_hess:
                        continue
                    og = tg - hf[t, 0]
                    gain = _leaf_gain(og * inv_sg, foh, l1, l2) + _leaf_gain(hf[t, 0] * inv_sg, fh, l1, l2)
                    if gain <= min_gain_shift:
                        continue
                    if gain > f_gain:
                        f_gain = gain
                        f_rec[4] = hf[t, 0]
                        f_rec[5] = hf[t, 1]
                        f_rec[6] = c
                        for w in range(f_bits.shape[0]):
                            f_bits[w] = 0
                        f_bits[t >> 5] = np.uint32(1) << np.uint32(t & 31)
            else:
                l2 = l2_base + cat_l2
                n_used = 0
                idx = np.empty(nb, dtype=np.int64)
                for t in range(nb):
                    if hf[t, 2] >= cat_smooth:
                        idx[n_used] = t
                        n_used += 1
                idx = idx[:n_used]
                ctr = np.empty(n_used, dtype=np.float64)
                for i in range(n_used):
                    t = idx[i]
                    den = hf[t, 1] * inv_sh + cat_smooth
                    ctr[i] = (hf[t, 0] * inv_sg) / den if den > 0.0 else 0.0
                order = np.argsort(ctr, kind="mergesort")
                sidx = idx[order]
                max_num_cat = min(max_cat_threshold, (n_used + 1) // 2)
                best_i = -1
                best_dir = 1
                for d in range(2):
                    direction = 1 if d == 0 else -1
                    pos = 0 if d == 0 else n_used - 1
                    cnt_group = np.int64(0)
                    lg = np.int64(0)
                    lh = np.int64(0)
                    lc = np.int64(0)
                    i = 0
                    while i < n_used and i < max_num_cat:
                        t = sidx[pos]
                        pos += direction
                        lg += hf[t, 0]
                        lh += hf[t, 1]
                        lc += hf[t, 2]
                        cnt_group += hf[t, 2]
                        flh = lh * inv_sh
                        if lc < min_data or flh < min_hess:
                            i += 1
                            continue
                        rc = tc - lc
                        if rc < min_data or rc < min_data_per_group:
                            break
                        frh = (th - lh) * inv_sh
                        if frh < min_hess:
                            break
                        if cnt_group < min_data_per_group:
                            i += 1
                            continue
                        cnt_group = np.int64(0)
                        gain = _leaf_gain(lg * inv_sg, flh, l1, l2) + _leaf_gain((tg - lg) * inv_sg, frh, l1, l2)
                        if gain > min_gain_shift and gain > f_gain:
                            f_gain = gain
                            f_rec[4] = lg
                            f_rec[5] = lh
                            f_rec[6] = lc
                            best_i = i
                            best_dir = direction
                        i += 1
                if best_i >= 0:
                    for w in range(f_bits.shape[0]):
                        f_bits[w] = 0
                    pos = 0 if best_dir == 1 else n_used - 1
                    for _ in range(best_i + 1):
                        t = sidx[pos]
                        pos += best_dir
                        f_bits[t >> 5] |= np.uint32(1) << np.uint32(t & 31)
            f_rec[3] = 1
            f_rec[2] = 0
            f_l2 = l2
        if f_gain > best_gain:
            best_gain = f_gain
            best_feature = f
            best_l2 = f_l2
            for k in range(9):
                best_rec[k] = f_rec[k]
            for w in range(best_bits.shape[0]):
                best_bits[w] = f_bits[w]

    for k in range(9):
        rec[k] = best_rec[k]
    rec[0] = best_feature
    for w in range(bitset.shape[0]):
        bitset[w] = best_bits[w]
    if best_feature < 0:
        return -np.inf, 0.0, 0.0, tg, th, tc
    lg = best_rec[4]
    lh = best_rec[5]
    left_out = leaf_output(lg * inv_sg, lh * inv_sh, l1, best_l2)
    right_out = leaf_output((tg - lg) * inv_sg, (th - lh) * inv_sh, l1, best_l2)
    return best_gain - min_gain_shift, left_out, right_out, tg, th, tc


def find_best_split(hist, *, allowed, n_bins, categorical, nan_bin, grad_scale, hess_scale, rules, parent_output):
    """Best split of one node.

    Parameters
    ----------
    hist : ndarray of shape (n_features, max_bin + 1, 3), int64
        The node's histogram summed over all parties.
    allowed : ndarray of shape (n_features,), bool
        Features sampled for this tree (``feature_fraction``).
    n_bins : ndarray of shape (n_features,), int32
    categorical : ndarray of shape (n_features,), bool
    nan_bin : int
    grad_scale, hess_scale : float
        Fixed-point scales of the round.
    rules : SplitRules or ndarray from ``SplitRules.as_array()``
    parent_output : float
        The node's own (unshrunk) output, as LightGBM's ``parent_output``.

    Returns
    -------
    split : numpy record of SPLIT_DTYPE
        ``gain == -inf`` if no split is valid.
    bitset : ndarray of shape (8,), uint32
        Categories going left, for a categorical split.
    """
    p = rules.as_array() if isinstance(rules, SplitRules) else rules
    rec = np.zeros(9, dtype=np.int64)
    bitset = np.zeros(CAT_WORDS, dtype=CAT_BITSET_DTYPE)
    gain, lo, ro, tg, th, tc = _best_split_kernel(
        hist,
        allowed,
        n_bins,
        categorical,
        int(nan_bin),
        1.0 / grad_scale,
        1.0 / hess_scale,
        p,
        float(parent_output),
        rec,
        bitset,
    )
    out = np.zeros((), dtype=SPLIT_DTYPE)
    out["gain"] = gain
    out["feature"] = rec[0]
    out["bin_threshold"] = rec[1]
    out["default_left"] = rec[2]
    out["is_categorical"] = rec[3]
    out["left_grad"], out["left_hess"], out["left_count"] = rec[4], rec[5], rec[6]
    out["right_grad"], out["right_hess"], out["right_count"] = tg - rec[4], th - rec[5], tc - rec[6]
    out["left_value"], out["right_value"] = lo, ro
    return out, bitset
