"""The search: the space as Optuna draws it, overrides spelled as the config spells them, pruning, the overlay."""

from __future__ import annotations

import pytest
import yaml

from fedmine.config import load_config
from fedmine.coordinator.training import RoundResult
from fedmine.coordinator.tuning import COMPLETE, Search, TrialRecord, trial_value
from fedmine.errors import ConfigError
from tests.test_config import ISSUE_EXAMPLE

SPACE = """\
tune:
  seed: 3
  startup_trials: 1
  warmup_rounds: 1
  space:
    learning_rate: {low: 0.01, high: 0.3, log: true}
    num_boost_round: {low: 5, high: 40}
    strategy: {choices: [histogram, bagging]}
"""


def search_for(tmp_path, extra=SPACE, overrides=()):
    path = tmp_path / "federation.yaml"
    path.write_text(ISSUE_EXAMPLE + extra)
    return Search(str(path), load_config(path, list(overrides)), list(overrides))


def test_each_trial_draws_inside_the_space_with_the_parameters_types(tmp_path):
    search = search_for(tmp_path)
    for _ in range(5):
        trial, params = search.ask()
        assert 0.01 <= params["learning_rate"] <= 0.3 and isinstance(params["learning_rate"], float)
        assert 5 <= params["num_boost_round"] <= 40 and isinstance(params["num_boost_round"], int)
        assert params["strategy"] in ("histogram", "bagging")
        cfg = search.trial_config(params)
        assert (cfg.training.learning_rate, cfg.training.rounds) == (params["learning_rate"], params["num_boost_round"])
        search.tell(trial, TrialRecord(trial.number, params, COMPLETE, 0.5, 1, 0.0, "run"))


def test_overrides_and_the_overlay_spell_keys_as_the_config_does(tmp_path):
    search = search_for(tmp_path)
    params = {"learning_rate": 0.123456789012345, "num_boost_round": 17, "strategy": "histogram"}
    # the config writes `rounds:`; --set training.num_boost_round would give the key twice
    assert search.as_overrides(params) == [
        "training.learning_rate=0.123456789012345",
        "training.rounds=17",
        "training.strategy=histogram",
    ]
    overlay = tmp_path / "best.yaml"
    overlay.write_text(search.overlay_yaml(params))
    assert yaml.safe_load(overlay.read_text()) == {
        "training": {"learning_rate": 0.123456789012345, "rounds": 17, "strategy": "histogram"}
    }
    cfg = load_config(search.config, [f"@{overlay}"])
    assert (cfg.training.learning_rate, cfg.training.rounds, cfg.training.strategy) == (
        0.123456789012345,
        17,
        "histogram",
    )


def test_a_choice_the_rest_of_the_config_refuses_fails_before_any_trial(tmp_path):
    search = search_for(tmp_path, overrides=["privacy.secure_aggregation=true", "training.strategy=histogram"])
    with pytest.raises(
        ConfigError, match=r"tune.space.strategy.choices: 'bagging': privacy.secure_aggregation: masks cover"
    ):
        search.check_space()


def test_no_tune_section_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"federation.yaml: no tune section; declare tune.space"):
        search_for(tmp_path, extra="")


def test_a_trial_that_lags_the_median_is_pruned_after_the_warmup(tmp_path):
    search = search_for(tmp_path)
    first, params = search.ask()
    listener = search.pruning(first, pruned := [])
    assert not any(listener(r, 4, {"auc": 0.7 + 0.01 * r}) for r in range(1, 5)) and pruned == []
    search.tell(first, TrialRecord(0, params, COMPLETE, 0.74, 4, 0.0, "run-0"))
    second, params = search.ask()
    listener = search.pruning(second, pruned := [])
    assert listener(1, 4, {"auc": 0.6}) is False  # round 1: still warming up
    assert listener(2, 4, {"auc": 0.6}) is True and pruned == [2]
    assert listener(3, 4, {"auc": float("nan")}) is False  # an undefined metric is not reported


def test_a_trials_value_is_its_final_models():
    history = [RoundResult(r, {"auc": v}, {}, 0.0, 0, 0, 1) for r, v in enumerate([0.7, 0.8, 0.75], 1)]
    assert trial_value(history, "auc", early_stopped=False, higher_is_better=True) == 0.75
    assert trial_value(history, "auc", early_stopped=True, higher_is_better=True) == 0.8
    assert trial_value([], "auc", early_stopped=False, higher_is_better=True) is None
