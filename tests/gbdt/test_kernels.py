"""Every numba kernel of the engine against its plain numpy twin."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from fedmine.gbdt import binning, histogram, partition, predictor, quantize, sampling
from fedmine.gbdt.booster import train_pooled
from fedmine.gbdt.dtypes import CAT_WORDS


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 5000
    X = rng.normal(size=(n, 6))
    X[rng.random(n) < 0.1, 0] = np.nan
    X[:, 2] = np.exp(X[:, 2])
    X[:, 3] = rng.integers(0, 9, n).astype(float)
    X[rng.random(n) < 0.05, 3] = np.nan
    X[:, 4] = np.round(X[:, 4], 1)  # few distinct values
    X[:, 5] = 1.0  # constant
    return X


@pytest.fixture(scope="module")
def mapper(data):
    return binning.fit_bins(data, max_bin=63, categorical=[3], n_grid=512)


def test_feature_ranges_kernel_matches_numpy(data):
    assert np.array_equal(binning.feature_ranges(data), binning.feature_ranges_numpy(data))
    empty = np.full((3, 2), np.nan)
    assert np.array_equal(binning.feature_ranges(empty), binning.feature_ranges_numpy(empty))


@pytest.mark.parametrize("spacing", ["uniform", "log"])
def test_grid_counts_kernel_matches_numpy(data, spacing):
    grids = binning.make_grids(binning.feature_ranges(data), n_grid=257, spacing=spacing)
    got = binning.grid_counts(data, grids, categorical=[3])
    assert np.array_equal(got, binning.grid_counts_numpy(data, grids, categorical=[3]))
    assert (got.sum(axis=1) == data.shape[0]).all()


@pytest.mark.parametrize("lut", [True, False])
@pytest.mark.parametrize("parallel", [True, False])
def test_bin_columns_kernel_matches_numpy(data, mapper, parallel, lut):
    # unseen values: below the min, above the max, unseen and negative categories
    X = np.vstack([data, [[-99, 99, 0, 50, -7, 2], [99, -99, 1e9, -0.5, 7, 0]]])
    X = np.vstack([X, mapper.grids.T[::7], np.nextafter(mapper.grids.T[::7], np.inf)])  # on and just above grid points
    if not lut:
        mapper = dataclasses.replace(mapper, grids=None, lut=None)
    got = binning.bin_columns(X, mapper, parallel=parallel)
    assert got.dtype == np.uint8 and got.flags.c_contiguous and got.shape == (6, X.shape[0])
    assert np.array_equal(got, binning.bin_columns_numpy(X, mapper))


def test_bins_agree_with_raw_thresholds(data, mapper):
    """bin <= b  <=>  x <= edges[b]: the engine's test and LightGBM's are the same."""
    b = binning.bin_columns(data, mapper)
    for f in (0, 1, 2, 4):
        x = data[:, f]
        ok = ~np.isnan(x)
        for t in range(mapper.n_bins[f] - 1):
            assert np.array_equal(b[f, ok] <= t, x[ok] <= mapper.threshold(f, t))
    assert (b[0, np.isnan(data[:, 0])] == mapper.nan_bin).all()


def test_edges_at_most_max_bin_and_deterministic(data):
    grids = binning.make_grids(binning.feature_ranges(data), n_grid=1024)
    counts = binning.grid_counts(data, grids, categorical=[3])
    a = binning.edges_from_grid_counts(counts, grids, max_bin=16, categorical=[3])
    b = binning.edges_from_grid_counts(counts.copy(), grids.copy(), max_bin=16, categorical=[3])
    assert np.array_equal(a.edges, b.edges) and (a.n_bins <= 16).all()
    assert a.n_bins[3] == 9 and a.n_bins[5] == 1


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("n_rows", [None, 17, 3000])
def test_histogram_kernels_match_numpy(data, mapper, packed, parallel, n_rows):
    rng = np.random.default_rng(1)
    bins = binning.bin_columns(data, mapper)
    n = bins.shape[1]
    g = rng.integers(-(2**40), 2**40, n).astype(np.int64)
    h = rng.integers(0, 2**30, n).astype(np.int64)
    rows = None if n_rows is None else np.sort(rng.choice(n, n_rows, replace=False)).astype(np.int32)
    want = histogram.build_histogram_numpy(bins, g, h, mapper.max_bin + 1, rows)
    r = np.arange(n, dtype=np.int32) if rows is None else rows
    og, oh = np.empty(r.size, np.int64), np.empty(r.size, np.int64)
    bits = (n).bit_length()
    histogram.gather(r, g, histogram.pack_hess_count(h, bits) if packed else h, og, oh)
    if packed:
        out2 = np.zeros((bins.shape[0], mapper.max_bin + 1, 2), np.int64)
        got = histogram.build_histogram_packed_ordered(bins, rows, og, oh, bits, out2, parallel=parallel)
    else:
        got = np.zeros_like(want)
        histogram.build_histogram_ordered(bins, rows, og, oh, got, parallel=parallel)
    assert np.array_equal(got, want)
    assert np.array_equal(histogram.build_histogram(bins, g, h, mapper.max_bin + 1, rows), want)
    child = histogram.build_histogram_numpy(bins, g, h, mapper.max_bin + 1, r[::3])
    assert np.array_equal(
        histogram.subtract(want, child),
        histogram.build_histogram_numpy(bins, g, h, mapper.max_bin + 1, np.setdiff1d(r, r[::3])),
    )


@pytest.mark.parametrize("packed", [False, True])
def test_wire_layout_kernels_match_numpy(data, mapper, packed):
    """Compact answers built from the accumulators equal the full histograms compacted (and packed), and back."""
    from fedmine.gbdt.rows import NODE_STRIDE, LocalRows

    rng = np.random.default_rng(3)
    bins = binning.bin_columns(data, mapper)
    n = bins.shape[1]
    g = rng.integers(-(2**40), 2**40, (2, n)).astype(np.int64)
    h = rng.integers(0, 2**20, (2, n)).astype(np.int64)
    bits = n.bit_length() if packed else 0
    rows = LocalRows(bins, max_bin=mapper.max_bin)
    rows.set_gradients(g, h, None, max_nodes=3, count_bits=bits)
    rows.apply_split(NODE_STRIDE, 0, 20, True, None, NODE_STRIDE + 1, NODE_STRIDE + 2)
    nodes = np.array([0, NODE_STRIDE + 1, NODE_STRIDE + 2])
    cells = histogram.reachable_cells(mapper.n_bins, mapper.max_bin)
    assert cells.sum() < cells.size  # some feature has fewer bins than max_bin: the layout drops cells
    index = histogram.cell_index(cells)
    full = rows.histograms(nodes)
    want = histogram.compact_histograms(full, cells)
    if packed:
        want = histogram.pack_fields(want, bits)
    got = rows.compact_histograms(nodes, index)
    assert got.shape == (3, int(cells.sum()), 2 if packed else 3)
    np.testing.assert_array_equal(got, want)
    one = np.empty_like(got[0])
    histogram.compact_into(full[1] if not packed else histogram.pack_fields(full[1], bits), index, one)
    np.testing.assert_array_equal(one, want[1])
    back = histogram.expand_fields(got, index, cells.shape, bits)
    np.testing.assert_array_equal(back, full)
    plain = histogram.unpack_fields(got, bits) if packed else got
    np.testing.assert_array_equal(back, histogram.expand_histograms(plain, cells))


@pytest.mark.parametrize("is_cat", [False, True])
@pytest.mark.parametrize("default_left", [False, True])
def test_partition_kernel_matches_numpy(data, mapper, is_cat, default_left):
    bins = binning.bin_columns(data, mapper)
    col = bins[3 if is_cat else 0]
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(bins.shape[1], 1000, replace=False)).astype(np.int32)
    bitset = np.zeros(CAT_WORDS, np.uint32)
    bitset[0] = 0b101010
    part = partition.DataPartition(rows, 3)
    n_left = part.split(0, col, 20, default_left, bitset if is_cat else None, 1, 2, mapper.nan_bin)
    want, want_left = partition.split_segment_numpy(
        rows, 0, rows.size, col, 20, default_left, is_cat, bitset, mapper.nan_bin
    )
    assert n_left == want_left and np.array_equal(part.indices, want)
    assert np.array_equal(np.sort(np.concatenate([part.rows(1), part.rows(2)])), rows)


def test_quantize_kernel_matches_numpy():
    v = np.random.default_rng(3).normal(size=10000)
    v[:3] = [0.5 / 2**20, -1.5 / 2**20, 2.5 / 2**20]  # exact halves: round half to even
    s = quantize.choose_scale(4.0, 10000)
    assert np.array_equal(quantize.quantize(v, s), quantize.quantize_numpy(v, s))


def test_scale_bound_holds():
    for bound, n in [(1.0, 1), (0.25, 7000), (3.7, 10**6), (1e-9, 10**9), (123456.0, 5)]:
        s = quantize.choose_scale(bound, n)
        assert (n * (bound * s + 0.5) < 2.0**62 and n * bound * s * 2 >= 2.0**61 * 0.999) or bound * s >= 1
        assert np.frexp(s)[0] == 0.5  # a power of two


def test_exact_sum_is_exact_and_partition_free():
    rng = np.random.default_rng(4)
    v = rng.normal(size=5000) * 10.0 ** rng.integers(-30, 30, 5000)
    want = float(sum(Fraction(x) for x in v))
    assert quantize.exact_sum(v) == want
    parts = [quantize.exact_sum_parts(p) for p in np.array_split(v[rng.permutation(v.size)], 7)]
    assert quantize.exact_total(np.sum(parts, axis=0)) == want


def test_bagging_kernel_matches_numpy_and_depends_on_ids_only():
    ids = np.arange(100000, dtype=np.uint64) * 3 + 11
    a = sampling.bag_rows(ids, seed=5, bag_round=2, fraction=0.3)
    assert np.array_equal(a, sampling.bag_rows_numpy(ids, seed=5, bag_round=2, fraction=0.3))
    assert abs(a.size / ids.size - 0.3) < 0.01
    sub = sampling.bag_rows(ids[50000:], seed=5, bag_round=2, fraction=0.3)
    assert np.array_equal(ids[50000:][sub], ids[a[a >= 50000]])
    assert not np.array_equal(a, sampling.bag_rows(ids, seed=5, bag_round=3, fraction=0.3))


@pytest.fixture(scope="module")
def model(data):
    rng = np.random.default_rng(6)
    y = (np.nan_to_num(data[:, 0]) + (data[:, 3] % 3 == 0) + rng.normal(size=data.shape[0]) > 0.5).astype(float)
    return train_pooled(
        data,
        y,
        dict(objective="binary", num_boost_round=5, num_leaves=8, min_data_per_group=10, cat_smooth=1),
        categorical=[3],
    )


def test_predict_raw_kernel_matches_numpy(data, model):
    X = np.vstack(
        [
            data,
            [
                [np.nan, np.nan, np.nan, np.nan, np.nan, np.nan],
                [1, 2, 3, -0.5, 5, 6],
                [1, 2, 3, 1e12, 5, 6],
                [1, 2, 3, -3, 5, 6],
            ],
        ]
    )
    got = predictor.predict_raw(model.trees, X, init_scores=model.init_scores)
    assert np.array_equal(got, predictor.predict_raw_numpy(model.trees, X, init_scores=model.init_scores))
    assert any(t.cat_bitsets.shape[0] for t in model.trees)


def test_binned_tree_values_match_numpy_and_raw(data, mapper, model):
    m = binning.fit_bins(data, max_bin=255, categorical=[3])
    bins = binning.bin_columns(data, m)
    rows = np.arange(0, data.shape[0], 3)
    for t in model.trees:
        a = predictor.tree_values_binned(t, bins, rows, m.nan_bin)
        assert np.array_equal(a, predictor.tree_values_binned_numpy(t, bins, rows, m.nan_bin))
        assert np.array_equal(a, predictor.predict_raw([t], data[rows])[0])


@pytest.mark.parametrize("name", ["binary", "regression", "poisson", "tweedie", "multiclass"])
def test_gradient_kernels_match_numpy(name):
    from fedmine.gbdt.objectives import _bounds, make_objective

    rng = np.random.default_rng(7)
    obj = make_objective(name, num_class=3)
    n = 1000
    y = {"binary": rng.integers(0, 2, n), "multiclass": rng.integers(0, 3, n)}.get(name, rng.gamma(1.0, 2.0, n))
    y = np.asarray(y, dtype=float)
    score = rng.normal(size=(obj.n_trees, n))
    g, h, b = obj.gradients_and_bounds(y, score)
    g2, h2 = obj.gradients(y, score)
    np.testing.assert_allclose(g, g2, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(h, h2, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(b, _bounds(g2, h2), rtol=1e-15)


@pytest.mark.parametrize("is_cat", [False, True])
def test_goes_left_is_the_partition_rule(data, mapper, is_cat):
    bins = binning.bin_columns(data, mapper)
    col = bins[3 if is_cat else 0]
    bitset = np.zeros(CAT_WORDS, np.uint32)
    bitset[0] = 0b101010
    rows = np.arange(col.size, dtype=np.int32)
    part = partition.DataPartition(rows, 3)
    part.split(0, col, 20, True, bitset if is_cat else None, 1, 2, mapper.nan_bin)
    left = partition.goes_left(col, 20, True, bitset if is_cat else None, mapper.nan_bin)
    assert np.array_equal(np.flatnonzero(left), np.sort(part.rows(1)))


def test_leaves_from_decisions_walk_as_the_binned_predictor(data, mapper, model):
    m = binning.fit_bins(data, max_bin=255, categorical=[3])
    bins = binning.bin_columns(data, m)
    for t in model.trees:
        nd = t.nodes
        decisions = {}
        for j in np.flatnonzero(nd["is_leaf"] == 0):
            bits = t.cat_bitsets[nd["cat_index"][j]] if nd["is_categorical"][j] else None
            decisions[int(j)] = partition.goes_left(
                bins[nd["feature"][j]], nd["bin_threshold"][j], nd["default_left"][j], bits, m.nan_bin
            )
        leaves = predictor.leaves_from_decisions(t, decisions, data.shape[0])
        assert nd["is_leaf"][leaves].all()
        want = predictor.tree_values_binned_numpy(t, bins, np.arange(data.shape[0]), m.nan_bin)
        assert np.array_equal(nd["value"][leaves], want)


def test_owners_bins_joined_are_the_joined_tables(data):
    declared = np.full((6, 2), np.nan)
    declared[1] = (-5.0, 5.0)
    whole = binning.fit_bins(data, max_bin=63, categorical=[3], n_grid=512, ranges=declared)
    parts = [np.array([0, 3, 5]), np.array([1, 2, 4])]
    mask = np.zeros(6, bool)
    mask[3] = True
    mappers = [
        (i, binning.fit_bins(data[:, i], max_bin=63, categorical=mask[i], n_grid=512, ranges=declared[i]))
        for i in parts
    ]
    joined = binning.join_mappers(mappers, 6)
    for key in ("edges", "n_bins", "categorical", "feature_min", "feature_max"):
        assert np.array_equal(getattr(joined, key), getattr(whole, key), equal_nan=True)
    assert whole.feature_min[1] == -5.0
    hidden = binning.hidden_mapper(whole.n_bins[parts[1]], mask[parts[1]], max_bin=63)
    assert np.isnan(hidden.threshold(0, 3)) and np.array_equal(hidden.n_bins, whole.n_bins[parts[1]])
    with pytest.raises(Exception, match=r"features \[0, 3, 5\] have no holder"):
        binning.join_mappers(mappers[1:], 6)
