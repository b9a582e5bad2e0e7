"""Vertical federation in process: intersection, rounds through the coordinator, the joined-table model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmine.config import config_from_dict
from fedmine.coordinator.vertical import VerticalCoordinator, sorted_points
from fedmine.demo import make_vertical_frames, vertical_demo_config
from fedmine.errors import DataError
from fedmine.gbdt import to_lightgbm_text
from fedmine.gbdt.booster import train
from fedmine.gbdt.state import EngineState
from fedmine.party.vertical import harmonise_own, read_ids, row_ids, validation_rows, vertical_party
from tests.support import plain_cipher


def _cfg(**training):
    raw = vertical_demo_config("sqlite:///unused.db")
    raw["training"].update(rounds=4, num_leaves=8, **training)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def frames():
    return make_vertical_frames(5, n=900)


def _parties(cfg, frames):
    return [vertical_party(cfg, org, frames[org], cipher=plain_cipher) for org in cfg.organisations]


def _joined(cfg, frames):
    """The inner-joined table of the organisations' harmonised features, by normalised id."""
    parts = []
    for org in cfg.organisations:
        ids, present = read_ids(frames[org], cfg, org)
        data = harmonise_own(frames[org], cfg, org)
        cols = [f for f in cfg.features if f in set(cfg.organisations[org].features)]
        part = pd.DataFrame(data.X[present], columns=cols)
        if cfg.organisations[org].holds_label:
            part["__y"] = data.y[present]
        part["__id"] = ids
        parts.append(part)
    joined = parts[0]
    for p in parts[1:]:
        joined = joined.merge(p, on="__id", how="inner")
    return joined


def test_vertical_training_equals_the_engine_on_the_joined_table(frames):
    cfg = _cfg(bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.9)
    coord = VerticalCoordinator(cfg, _parties(cfg, frames))
    coord.start()
    for r in range(1, cfg.training.rounds + 1):
        result = coord.run_round(r)
        assert "eval/alone/auc" in result.stats and "gain/round/auc" in result.stats
        if coord.stopped:
            break
    assert coord.history[-1].global_metrics["auc"] > 0.6
    text = coord.model_text()

    joined = _joined(cfg, frames)
    assert coord.shared_rows == len(joined) > 100
    ids = list(joined["__id"])
    valid = validation_rows(ids, fraction=cfg.training.validation_fraction, seed=cfg.training.seed)
    X, y = joined[list(cfg.features)].to_numpy(), joined["__y"].to_numpy()
    state = EngineState(
        X[~valid],
        y[~valid],
        row_ids=row_ids([i for i, v in zip(ids, valid) if not v]),
        X_valid=X[valid],
        y_valid=y[valid],
    )
    from fedmine import metrics

    params = cfg.training.engine_params(cfg.objective, cfg.num_class, metrics.primary(cfg.objective))
    categorical = [i for i, f in enumerate(cfg.features.values()) if f.type == "category"]
    from fedmine.coordinator.training import declared_ranges

    want = train(state, params, categorical=categorical, feature_names=list(cfg.features), ranges=declared_ranges(cfg))
    assert text == to_lightgbm_text(want, list(cfg.features))
    assert coord.history[-1].global_metrics["auc"] == pytest.approx(
        metrics.exact(y[valid], state.scores_valid_[0], "binary")["auc"]
    )
    receipt = coord.receipt().as_dict()
    assert receipt["param.shared_rows"] == len(joined) and "owner_histograms" in receipt["disclosed"]


def test_predict_over_the_parties_scores_as_the_published_model(frames):
    import lightgbm as lgb

    cfg = _cfg()
    coord = VerticalCoordinator(cfg, _parties(cfg, frames))
    coord.start()
    for r in range(1, cfg.training.rounds + 1):
        coord.run_round(r)
    booster = lgb.Booster(model_str=coord.model_text())
    joined = _joined(cfg, frames)
    ids = [i.decode()[len(cfg.vertical.salt) :] for i in joined["__id"][:50]] + ["nobody"]
    raw = coord.predict_raw(ids)
    X = np.vstack([joined[list(cfg.features)].to_numpy()[:50], np.full((1, len(cfg.features)), np.nan)])
    assert np.allclose(raw[:, 0], booster.predict(X, raw_score=True), rtol=0, atol=1e-12)
    contrib = booster.predict(X, pred_contrib=True)  # the published model explains itself as any LightGBM model
    assert contrib.shape == (51, len(cfg.features) + 1)
    assert np.allclose(contrib.sum(axis=1), raw[:, 0], atol=1e-9)
    owned = [i for i, f in enumerate(cfg.features) if cfg.feature_holder()[f] != "bank"]
    assert np.abs(contrib[:, owned]).sum() > 0


def test_an_intersection_below_the_minimum_is_refused(frames):
    cfg = _cfg()
    cfg.vertical.min_shared_rows = 5000
    coord = VerticalCoordinator(cfg, _parties(cfg, frames))
    with pytest.raises(
        DataError,
        match=r"share \d+ customers \(ids: bank \d+, retailer \d+, telecom \d+\); vertical.min_shared_rows is 5000",
    ):
        coord.intersect()


def test_no_shared_customer_is_refused(frames):
    cfg = _cfg()
    moved = dict(frames)
    moved["telecom"] = frames["telecom"].assign(msisdn_owner=lambda f: "T" + f.msisdn_owner)
    coord = VerticalCoordinator(cfg, _parties(cfg, moved))
    with pytest.raises(DataError, match=r"the organisations share no customer \(ids: bank \d+"):
        coord.intersect()


def test_the_coordinator_sees_sorted_sets_and_sizes_only(frames):
    cfg = _cfg()
    parties = _parties(cfg, frames)
    coord = VerticalCoordinator(cfg, parties)
    coord.intersect()
    lead = next(p for p in parties if p.name == "bank")
    # each organisation kept its shared rows; all in the same (common) order of customers
    orders = [[p.ids[i] for i in p.shared_] for p in parties]
    assert orders[0] == orders[1] == orders[2] and len(orders[0]) == coord.shared_rows
    assert lead.describe()["n_rows"] + lead.describe()["n_valid"] == coord.shared_rows
    pts = np.random.default_rng(0).integers(0, 256, (20, 32), dtype=np.uint8)
    s = sorted_points(pts)
    assert sorted(map(bytes, pts)) == list(map(bytes, s))


@pytest.mark.parametrize(
    "org, change, message",
    [
        (
            "retailer",
            lambda f: f.drop(columns="shopper"),
            r"organisation retailer: data/retailer.csv has no id column 'shopper'",
        ),
        (
            "bank",
            lambda f: f.assign(customer_id=np.nan),
            r"organisation bank: id column 'customer_id' has no value in its \d+ rows",
        ),
        (
            "telecom",
            lambda f: f.assign(msisdn_owner=f.msisdn_owner.where(f.index % 50 != 0, "C00001")),
            r"organisation telecom: id column 'msisdn_owner' has \d+ duplicate id\(s\) \(for example 'c00001'\)",
        ),
    ],
)
def test_bad_ids_name_the_organisation_and_column(frames, org, change, message):
    cfg = _cfg()
    with pytest.raises(DataError, match=message):
        vertical_party(cfg, org, change(frames[org]), cipher=plain_cipher)
