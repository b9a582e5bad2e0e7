"""Secure aggregation in the histogram strategy, the privacy config, and parties that fail mid-training."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fedmine.config import config_from_dict
from fedmine.coordinator.training import Coordinator
from fedmine.errors import ConfigError, PartyError
from fedmine.party.organisation import Party, TrainValidRows
from tests.coordinator.test_histogram_strategy import ORGS, cfg_for, make_rows, partition


def parties_for(cfg, X, y, parts, cls=Party):
    return [
        cls(
            o,
            TrainValidRows(X[i], y[i], X[i][:40], y[i][:40]),
            objective=cfg.objective,
            num_class=cfg.num_class,
            feature_names=list(cfg.features),
            categorical=[3],
        )
        for o, i in zip(cfg.organisations, parts)
    ]


def run(cfg, parties):
    coord = Coordinator(cfg, parties)
    coord.start()
    for r in range(1, cfg.training.rounds + 1):
        coord.run_round(r)
    return coord


def test_secure_aggregation_changes_no_bit():
    X, y = make_rows("binary")
    parts = partition(y, 3, "skewed")
    texts = {}
    for on in (False, True):
        cfg = cfg_for("binary", ORGS[:3], rounds=5)
        cfg.privacy.secure_aggregation = on
        assert cfg.secure_aggregation is on
        texts[on] = run(cfg, parties_for(cfg, X, y, parts)).model_text()
    assert texts[True] == texts[False]


def record_histograms(parties) -> dict[str, list[np.ndarray]]:
    """What each party answers to ``histograms``, as the coordinator receives it."""
    seen = {p.name: [] for p in parties}
    for p in parties:
        original = p.call

        def spy(call, *a, _orig=original, _name=p.name, **k):
            answer = _orig(call, *a, **k)
            if call in ("histograms", "split_histograms"):
                seen[_name].append(answer)
            return answer

        p.call = spy
    return seen


def test_coordinator_holds_only_masked_messages_and_their_sum():
    X, y = make_rows("binary")
    parts = partition(y, 3, "iid")
    answers = {}
    for secure in (True, False):
        cfg = cfg_for("binary", ORGS[:3], rounds=2)
        cfg.privacy.secure_aggregation = secure
        parties = parties_for(cfg, X, y, parts)
        answers[secure] = record_histograms(parties)
        run(cfg, parties)
    seen, plain_seen = answers[True], answers[False]
    first = seen[ORGS[0]][0].view(np.uint64).ravel()
    # one party's message looks uniform: each bit set about half the time (a plain histogram has empty high bits)
    bits = np.unpackbits(first.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01
    assert not np.array_equal(seen[ORGS[0]][0], plain_seen[ORGS[0]][0])
    # ... and the masks cancel in the sum
    for k in range(len(seen[ORGS[0]])):
        masked_sum = sum(seen[o][k] for o in ORGS[:3])
        plain_sum = sum(plain_seen[o][k] for o in ORGS[:3])
        assert np.array_equal(masked_sum, plain_sum)


def test_two_parties_warn_and_min_parties_refuses():
    X, y = make_rows("binary")
    parts = partition(y, 2, "iid")
    cfg = cfg_for("binary", ORGS[:2], rounds=1)
    coord = Coordinator(cfg, parties_for(cfg, X, y, parts))
    with pytest.warns(UserWarning, match="two parties"):
        coord.start()
    assert any("two parties" in n for n in coord.notices)
    raw = cfg.model_dump()
    raw["privacy"]["min_parties"] = 3
    with pytest.raises(ConfigError, match=r"privacy.min_parties is 3 but organisations lists 2"):
        config_from_dict(raw)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "secure_aggregation",
            True,
            r"privacy.secure_aggregation: masks cover the histogram strategy's sums; "
            r"training.strategy bagging sends whole trees",
        ),
        (
            "epsilon",
            1.0,
            r"privacy.epsilon: differential privacy is accounted for the histogram strategy only, not bagging",
        ),
    ],
)
def test_privacy_needs_histogram(key, value, message):
    raw = cfg_for("binary", ORGS[:3]).model_dump()
    raw["training"]["strategy"] = "bagging"
    raw["privacy"][key] = value
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_dp_regression_needs_gradient_bound():
    raw = cfg_for("regression", ORGS[:3]).model_dump()
    raw["privacy"]["epsilon"] = 4.0
    with pytest.raises(
        ConfigError, match=r"privacy.gradient_bound: required with privacy.epsilon and objective regression"
    ):
        config_from_dict(raw)


class FlakyParty(Party):
    """Fails in its third local training."""

    calls = 0

    def train_local(self, params, num_boost_round):
        FlakyParty.calls += 1
        if self.name == "clinic" and FlakyParty.calls >= 7:
            raise ConnectionError("link to clinic lost")
        return super().train_local(params, num_boost_round)


@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_party_failing_mid_round(policy):
    X, y = make_rows("binary")
    parts = partition(y, 3, "iid")
    cfg = cfg_for("binary", ORGS[:3], rounds=5, strategy="bagging")
    cfg.privacy.on_party_failure = policy
    FlakyParty.calls = 0
    coord = Coordinator(cfg, parties_for(cfg, X, y, parts, cls=FlakyParty))
    coord.start()
    if policy == "stop":
        with pytest.raises(PartyError, match=r"party clinic: train_local failed: ConnectionError: link to clinic lost"):
            for r in range(1, 6):
                coord.run_round(r)
        return
    for r in range(1, 6):
        result = coord.run_round(r)
    assert [d["organisation"] for d in coord.dropped] == ["clinic"] and coord.dropped[0]["round"] == 3
    assert set(result.org_metrics) == {"bank", "shop"}
    # rounds 1-2 have 3 trees each, rounds 3-5 two: the failed round was redone without clinic
    assert coord.strategy.num_trees(coord._ctx) == 2 * 3 + 3 * 2
    assert any("clinic" in n for n in coord.notices)


class FailingEngineParty(Party):
    """Fails in the middle of the third round's histogram exchanges."""

    exchanges = 0

    def call(self, name, *args, **kwargs):
        if self.name == "clinic" and name in ("histograms", "split_histograms"):
            FailingEngineParty.exchanges += 1
            if FailingEngineParty.exchanges == 25:
                raise ConnectionError("clinic went away")
        return super().call(name, *args, **kwargs)


class LateEngineParty(FailingEngineParty):
    """As :class:`FailingEngineParty`; shop answers the exchange clinic fails only after clinic has failed it."""

    clinic_failed = threading.Event()
    seen = 0

    def call(self, name, *args, **kwargs):
        if self.name == "shop" and name in ("histograms", "split_histograms"):
            LateEngineParty.seen += 1
            if LateEngineParty.seen == 25 and LateEngineParty.clinic_failed.wait(5):
                time.sleep(0.05)  # a slow link: the coordinator has seen clinic fail and must wait for this answer
        try:
            return super().call(name, *args, **kwargs)
        except ConnectionError:
            LateEngineParty.clinic_failed.set()
            raise


@pytest.mark.parametrize("cls", [FailingEngineParty, LateEngineParty])
def test_histogram_round_restarts_among_the_remaining_parties(cls):
    X, y = make_rows("binary")
    parts = partition(y, 3, "iid")
    cfg = cfg_for("binary", ORGS[:3], rounds=6)
    cfg.privacy.on_party_failure = "continue"
    FailingEngineParty.exchanges = LateEngineParty.seen = 0
    LateEngineParty.clinic_failed.clear()
    coord = Coordinator(cfg, parties_for(cfg, X, y, parts, cls=cls))
    coord.start()
    for r in range(1, 7):
        result = coord.run_round(r)
    assert [d["organisation"] for d in coord.dropped] == ["clinic"]
    assert set(result.org_metrics) == {"bank", "shop"}
    assert result.stats["privacy/parties"] == 2.0
    assert lgb_trees(coord) == 6


def lgb_trees(coord):
    import lightgbm as lgb

    return lgb.Booster(model_str=coord.model_text()).num_trees()
