"""A coordinator that stops after any round and resumes from its checkpoint ends with the same model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmine.coordinator.training import Coordinator
from fedmine.errors import ConfigError
from tests.coordinator.test_histogram_strategy import ORGS, cfg_for, make_rows, partition
from tests.coordinator.test_secure_training import parties_for

STRATEGIES = ["histogram", "bagging", "cyclic"]


def uninterrupted(cfg, X, y, parts):
    coord = Coordinator(cfg, parties_for(cfg, X, y, parts))
    coord.start()
    for r in range(1, cfg.training.rounds + 1):
        coord.run_round(r)
    return coord.model_text()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resume_after_crash_gives_the_same_model(strategy, tmp_path):
    X, y = make_rows("binary")
    parts = partition(y, 3, "skewed")
    cfg = cfg_for("binary", ORGS[:3], rounds=8, strategy=strategy)
    want = uninterrupted(cfg, X, y, parts)

    first = Coordinator(cfg, parties_for(cfg, X, y, parts))
    first.start()
    for r in range(1, 4):
        first.run_round(r)
    state, arrays = first.checkpoint()
    state = json.loads(json.dumps(state))  # it travels as JSON, the arrays as .npz
    path = tmp_path / "arrays.npz"
    np.savez(path, **arrays)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    # a new coordinator process, and parties that prepared their data again
    second = Coordinator(cfg, parties_for(cfg, X, y, parts))
    second.start()
    nxt = second.restore(state, arrays)
    assert nxt == 4
    for r in range(nxt, cfg.training.rounds + 1):
        second.run_round(r)
    assert second.model_text() == want
    assert second.last_round == 8


def test_local_strategy_cannot_resume():
    X, y = make_rows("binary")
    parts = partition(y, 2, "iid")
    cfg = cfg_for("binary", ORGS[:2], rounds=2, strategy="local")
    coord = Coordinator(cfg, parties_for(cfg, X, y, parts))
    coord.start()
    coord.run_round(1)
    state, arrays = coord.checkpoint()
    with pytest.raises(ConfigError, match=r"--resume: the local strategy keeps each organisation's model"):
        coord.restore(state, arrays)
