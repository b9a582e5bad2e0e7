"""Vertical training gives the engine's model on the inner-joined table, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from fedmine.errors import PartyError
from fedmine.gbdt import to_lightgbm_text, train_pooled
from fedmine.party.feature_owner import FeatureOwner
from fedmine.party.label_holder import MESSAGE_HEADROOM, LabelHolder, layout_bounds
from fedmine.protocol import ProtocolError
from tests.support import plain_cipher

N, NV = 1200, 300
CALLS = {
    "owner_bins": "bins",
    "owner_gradients": "gradients",
    "owner_histograms": "histograms",
    "owner_split": "split",
    "owner_decisions": "decisions",
    "owner_thresholds": "thresholds",
}


def _data(objective: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[rng.random(n) < 0.1, 0] = np.nan
    X[:, 3] = rng.integers(0, 10, n).astype(float)
    X[rng.random(n) < 0.05, 3] = np.nan
    X[rng.random(n) < 0.2, 5] = np.nan
    lin = X[:, 1] + np.nan_to_num(X[:, 0], nan=1.0) + np.isin(X[:, 3], [1, 4, 7]) * 1.5 + 0.5 * X[:, 4]
    if objective == "binary":
        y = (lin + rng.normal(size=n) > 0.5).astype(float)
    elif objective == "multiclass":
        y = np.digitize(lin + rng.normal(size=n) * 0.3, [-0.5, 0.5, 1.5]).astype(float)
    else:
        y = 3.0 * lin + rng.normal(size=n) * 0.1
    return X, y


PARAMS = dict(
    num_boost_round=5,
    num_leaves=10,
    learning_rate=0.2,
    min_data_in_leaf=10,
    min_data_per_group=20,
    cat_smooth=5.0,
    max_cat_to_onehot=4,
    feature_fraction=0.9,
    bagging_fraction=0.7,
    bagging_freq=2,
    seed=3,
    lambda_l2=0.5,
    max_bin=63,
)


def _ask(owners, log=None):
    def ask(requests):
        if log is not None:
            log.extend((name, len(args)) for _, name, args, _ in requests)
        return [getattr(owners[o], CALLS[name])(*args, **kwargs) for o, name, args, kwargs in requests]

    return ask


def _vertical(X, y, Xv, yv, params, layout, *, publish=True, message_bytes=None, owners_out=None):
    """``layout``: feature positions per organisation; the first holds the label."""
    lead_idx, *owner_idx = (np.asarray(i) for i in layout)
    owners = {
        f"org{i}": FeatureOwner(f"org{i}", X[:, idx], Xv[:, idx], publish_thresholds=True, cipher=plain_cipher)
        for i, idx in enumerate(owner_idx, 1)
    }
    lead = LabelHolder(
        "lead",
        X[:, lead_idx],
        y,
        Xv[:, lead_idx],
        yv,
        own=lead_idx,
        owners={f"org{i}": idx for i, idx in enumerate(owner_idx, 1)},
        feature_names=[f"f{i}" for i in range(X.shape[1])],
        categorical=[3],
        objective=params["objective"],
        num_class=params.get("num_class", 1),
        cipher=plain_cipher,
        **({} if message_bytes is None else {"message_bytes": message_bytes}),
    )
    log: list = []
    if owners_out is not None:
        owners_out.update(owners)
        owners_out["log"] = log
    ask = _ask(owners, log)
    lead.begin(ask, params)
    results = []
    while True:
        results.append(lead.round(ask))
        if results[-1]["done"]:
            break
    return lead.model(ask, publish=publish), results


LAYOUTS = {
    "2 orgs": [[1, 2], [0, 3, 4, 5]],
    "3 orgs": [[4], [0, 3], [1, 2, 5]],
    "lead holds the categorical": [[3, 5], [0, 1, 2, 4]],
}


@pytest.mark.parametrize("objective", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_vertical_equals_joined_table(objective, layout):
    X, y = _data(objective, N, 0)
    Xv, yv = _data(objective, NV, 1)
    extra = {"num_class": 4} if objective == "multiclass" else {}
    params = dict(PARAMS, objective=objective, **extra)
    want = train_pooled(
        X, y, params, categorical=[3], X_valid=Xv, y_valid=yv, feature_names=[f"f{i}" for i in range(6)]
    )
    got, results = _vertical(X, y, Xv, yv, params, LAYOUTS[layout])
    assert len(got.trees) == len(want.trees)
    for a, b in zip(got.trees, want.trees):
        assert a.equal(b)
    assert to_lightgbm_text(got) == to_lightgbm_text(want)
    assert got.history == want.history
    used = {int(f) for t in want.trees for f in t.nodes["feature"][t.nodes["is_leaf"] == 0]}
    owned = {f for idx in LAYOUTS[layout][1:] for f in idx}
    assert used & owned and used - owned  # splits on owners' and on the label holder's features
    assert any(t.cat_bitsets.shape[0] for t in want.trees)
    assert set(results[-1]["metrics"]) and set(results[-1]["alone"]) == set(results[-1]["metrics"])


def test_thresholds_stay_with_their_owner_unless_published():
    X, y = _data("binary", N, 0)
    Xv, yv = _data("binary", NV, 1)
    params = dict(PARAMS, objective="binary")
    kept, _ = _vertical(X, y, Xv, yv, params, LAYOUTS["2 orgs"], publish=False)
    owned = np.array([0, 3, 4, 5])
    for t in kept.trees:
        nd = t.nodes
        inner = (nd["is_leaf"] == 0) & (nd["is_categorical"] == 0)
        assert np.isnan(nd["threshold"][inner & np.isin(nd["feature"], owned)]).all()
        assert np.isfinite(nd["threshold"][inner & ~np.isin(nd["feature"], owned)]).all()
    assert all(kept.feature_infos[f] == "none" for f in (0, 4, 5))


@pytest.mark.parametrize("objective", ["binary", "multiclass", "regression"])
def test_the_layout_owners_read_is_fixed_before_training(objective):
    """The encrypted rows' bounds come from the row count alone: the same every round, and they hold."""
    X, y = _data(objective, N, 0)
    Xv, yv = _data(objective, NV, 1)
    extra = {"num_class": 4} if objective == "multiclass" else {}
    params = dict(PARAMS, objective=objective, num_boost_round=3, bagging_freq=0, **extra)
    plain_cipher.LAYOUTS.clear()
    _vertical(X, y, Xv, yv, params, LAYOUTS["2 orgs"])  # encrypt_rows asserts every row is within the bounds
    count_bits = N.bit_length()  # each objective bounds its hessian a priori: hess << count_bits | count
    assert set(plain_cipher.LAYOUTS) == {(*layout_bounds(N, count_bits), N)}
    assert len(plain_cipher.LAYOUTS) == 3 * (4 if objective == "multiclass" else 1)


def test_rows_larger_than_a_message_go_in_chunks_and_give_the_same_model():
    X, y = _data("multiclass", N, 0)
    Xv, yv = _data("multiclass", NV, 1)
    params = dict(PARAMS, objective="multiclass", num_class=4, num_boost_round=2)
    whole, _ = _vertical(X, y, Xv, yv, params, LAYOUTS["3 orgs"])
    owners: dict = {}
    chunked, _ = _vertical(
        X, y, Xv, yv, params, LAYOUTS["3 orgs"], message_bytes=MESSAGE_HEADROOM + 5000, owners_out=owners
    )
    assert to_lightgbm_text(chunked) == to_lightgbm_text(whole)
    # 2 rounds of 4 trees, N rows of 16 plain bytes: 5000 // (2 owners x 16) = 156 rows per chunk, 8 per tree
    assert owners["log"].count(("owner_gradients", 3)) == 2 * 4 * 8 * 2
    assert ("owner_gradients", 2) not in owners["log"]
    owner = owners["org1"]
    key = b"plain"
    arr = np.zeros((N, 16), dtype=np.uint8)
    owner.gradients(key, [arr[:100]], [0, 2, 0, N])
    with pytest.raises(
        PartyError,
        match=r"^party org1: owner_gradients: chunk at row 300 of tree 0 \(2 trees, 1200 rows\) is out of order",
    ):
        owner.gradients(key, [arr[300:400]], [0, 2, 300, N])
    with pytest.raises(ProtocolError, match=r"owner_gradients first"):
        owner.histograms(np.array([0]), [np.arange(5)])
    owner.gradients(key, [arr[:N]], [0, 2, 0, N])
    owner.gradients(key, [arr[:N]], [1, 2, 0, N])
    assert len(owner._rows) == 2
