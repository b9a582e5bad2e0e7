"""The party side: its stages, and the calls a federation wires to messages."""

from __future__ import annotations

import numpy as np
import pytest

from fedmine.gbdt import EngineGroup, EngineState, HistogramSource, LocalRows, SumOfSources, binning, make_params
from fedmine.gbdt.grower import TreeGrower, max_slots
from fedmine.gbdt.quantize import choose_scale
from fedmine.gbdt.sampling import feature_mask
from fedmine.gbdt.state import ProtocolError


def _party(seed=0, n=400):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] + rng.normal(size=n) > 0).astype(float)
    return EngineState(X, y, X_valid=X[:50], y_valid=y[:50])


def _bins(party):
    ranges = party.feature_ranges()
    grids = binning.make_grids(ranges, n_grid=256)
    counts = party.grid_counts(grids, np.zeros(3, bool))
    return binning.edges_from_grid_counts(counts, grids, max_bin=32, ranges=ranges)


def test_sources_implement_the_protocol():
    party = _party()
    party.set_bins(_bins(party))
    assert isinstance(party, HistogramSource)
    assert isinstance(SumOfSources([party]), HistogramSource)
    assert issubclass(EngineState, LocalRows)


def test_a_round_by_hand_and_every_out_of_order_call_rejected():
    params = make_params({"objective": "binary", "num_leaves": 4, "min_data_in_leaf": 5})
    party = _party()
    assert party.stage_ == "created"
    with pytest.raises(ProtocolError, match=r"configure is not accepted in stage 'created'; it needs one of"):
        party.configure(params, np.zeros(1))
    mapper = _bins(party)
    party.set_bins(mapper)
    assert party.stage_ == "binned"
    with pytest.raises(ProtocolError, match="begin_round is not accepted in stage 'binned'"):
        party.begin_round(0, None)
    party.configure(params, np.zeros(1))
    with pytest.raises(ProtocolError, match="set_bins is not accepted in stage 'ready'"):
        party.set_bins(mapper)
    with pytest.raises(ProtocolError, match="start_trees is not accepted in stage 'ready'"):
        party.start_trees(0, [1.0], [1.0], count_bits=0, max_nodes=7)
    with pytest.raises(ProtocolError, match="histograms is not accepted in stage 'ready'"):
        party.histograms(np.array([0]))
    bounds = party.begin_round(0, None)
    assert bounds.shape == (1, 2) and 0 < bounds[0, 0] <= 1 and 0 < bounds[0, 1] <= 0.25
    with pytest.raises(ProtocolError, match="apply_split is not accepted in stage 'gradients'"):
        party.apply_split(0, 0, 3, True, None, 1, 2)
    gs, hs = [choose_scale(1.0, 400)], [choose_scale(0.25, 400)]
    party.start_trees(0, gs, hs, count_bits=0, max_nodes=max_slots(4, 0))
    hist = party.histograms(np.array([0]))
    assert hist.shape == (1, 3, 33, 3) and hist[0, 0, :, 2].sum() == 400
    grower = TreeGrower(
        party,
        mapper=mapper,
        rules=params.rules,
        num_leaves=4,
        max_depth=-1,
        learning_rate=0.1,
        grad_scales=gs,
        hess_scales=hs,
        feature_masks=feature_mask(3, seed=0, iteration=0, tree=0, fraction=1.0)[None],
    )
    trees = grower.grow()
    assert trees[0].n_leaves == 4
    before = party.metric_stats("binary_logloss")
    party.begin_round(1, trees)  # applies the tree: the validation loss moves
    assert not np.array_equal(party.metric_stats("binary_logloss"), before)
    with pytest.raises(ProtocolError, match="begin_round is not accepted in stage 'gradients'"):
        party.begin_round(2, None)


def test_group_merges_answers():
    a, b = _party(1), _party(2, n=100)
    group = EngineGroup([a, b])
    d = group.describe()
    assert (d["n_rows"], d["n_valid"], d["n_features"]) == (500, 100, 3)
    r = group.feature_ranges()
    assert (r[:, 0] == np.minimum(a.feature_ranges()[:, 0], b.feature_ranges()[:, 0])).all()
    grids = binning.make_grids(r, n_grid=64)
    mask = np.zeros(3, bool)
    assert np.array_equal(group.grid_counts(grids, mask), a.grid_counts(grids, mask) + b.grid_counts(grids, mask))


def test_split_queue_is_flushed_before_scores_move():
    """Splits ride with the next request; begin_round and finish flush what is left."""
    params = dict(objective="binary", num_leaves=4, num_boost_round=2, min_data_in_leaf=5, lookahead=0)
    from fedmine.gbdt import predict_raw, train

    parties = [_party(3), _party(4)]
    model = train(EngineGroup(parties), params)
    for p in parties:  # scores after finish() equal the model's predictions
        want = predict_raw(model.trees, p.X, init_scores=model.init_scores)[0]
        np.testing.assert_allclose(p.scores_[0], want, rtol=0, atol=1e-12)
