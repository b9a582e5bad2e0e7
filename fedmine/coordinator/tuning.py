"""Federated hyperparameter search: Optuna's TPE over the config's ``tune`` space, judged by the federation.

This module owns :class:`Search`: the study (TPE sampler, median pruner),
each trial's parameters as config overrides, the pruning listener that
follows a trial's federation-wide validation metric round by round
(:mod:`fedmine.progress`), and the best parameters as an overlay for
``fedmine run --set`` (``training.KEY=VALUE`` lines, or a YAML file read with
``--set @FILE``). A trial is an ordinary training of the config with its
overrides; the flow (flows/tune.py) runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from fedmine import metrics
from fedmine.config import FederationConfig, SearchDimension, TrainingSpec, load_config
from fedmine.errors import ConfigError

#: A trial's end, as its MLflow tag and the summary say it.
COMPLETE, PRUNED = "complete", "pruned"


def config_spellings(config: str | Path) -> dict[str, str]:
    """Training field name -> the key the config file's ``training`` section spells it with (``rounds``)."""
    raw = yaml.safe_load(Path(config).read_text()) or {}
    training = raw.get("training") or {} if isinstance(raw, dict) else {}
    spellings = TrainingSpec.spellings()
    return {spellings[k]: k for k in training if k in spellings}


@dataclass
class TrialRecord:
    """One trial as it ended: number, parameters, state, value, rounds run, seconds, MLflow run, epsilon."""

    number: int
    params: dict[str, Any]
    state: str
    value: float | None
    rounds: int
    seconds: float
    run_id: str
    epsilon: float | None = None


@dataclass
class Search:
    """One federated search over ``cfg.tune.space``.

    Parameters
    ----------
    config : the federation YAML file (trials load it with their overrides).
    cfg : the loaded config (with ``overrides``), whose ``tune`` section is the search.
    overrides : the ``--set`` overrides every trial starts from.
    """

    config: str
    cfg: FederationConfig
    overrides: list[str] = field(default_factory=list)
    records: list[TrialRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.cfg.tune is None:
            raise ConfigError(
                f"{self.config}: no tune section; declare tune.space, e.g. "
                "tune: {space: {learning_rate: {low: 0.02, high: 0.3, log: true}}}"
            )
        if self.cfg.privacy.epsilon is not None:
            raise ConfigError(
                f"{self.config}: privacy.epsilon: fedmine tune judges trials on the federation's validation "
                "metrics, which are not released under differential privacy; tune without privacy.epsilon"
            )
        spec = self.cfg.tune
        self.metric = spec.metric or metrics.primary(self.cfg.objective)
        self.higher_is_better = metrics.higher_is_better(self.metric)
        names = TrainingSpec.spellings()
        self._field = {key: names[key] for key in spec.space}
        spelled = config_spellings(self.config)
        self._key = {key: spelled.get(name, key) for key, name in self._field.items()}
        seed = spec.seed if spec.seed is not None else self.cfg.training.seed
        pruner: optuna.pruners.BasePruner = (
            optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_rounds + 1)
            if spec.pruner == "median"
            else optuna.pruners.NopPruner()
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(
            direction="maximize" if self.higher_is_better else "minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=pruner,
            study_name=f"{self.cfg.name}-tune",
        )

    # -- the space -------------------------------------------------------------
    def check_space(self) -> None:
        """Load the config at every bound and choice of every parameter (the others as given): one line if one fails.

        Catches what a bound alone cannot show, e.g. a strategy choice that the
        privacy settings do not allow, before any trial runs.
        """
        assert self.cfg.tune is not None
        for key, dim in self.cfg.tune.space.items():
            candidates = (
                [("choices", c) for c in dim.choices]
                if dim.choices is not None
                else [("low", dim.low), ("high", dim.high)]
            )
            for where, value in candidates:
                try:
                    load_config(self.config, [*self.overrides, *self.as_overrides({key: self._typed(key, value)})])
                except ConfigError as exc:
                    reason = str(exc).split(": ", 1)[-1]
                    raise ConfigError(f"{self.config}: tune.space.{key}.{where}: {value!r}: {reason}") from None

    def _typed(self, key: str, value: Any) -> Any:
        annotation = TrainingSpec.model_fields[self._field[key]].annotation
        if annotation is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    def _suggest(self, trial: optuna.Trial, key: str, dim: SearchDimension) -> Any:
        if dim.choices is not None:
            return trial.suggest_categorical(key, dim.choices)
        assert dim.low is not None and dim.high is not None
        if TrainingSpec.model_fields[self._field[key]].annotation is int:
            return trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        return trial.suggest_float(key, dim.low, dim.high, log=dim.log)

    def ask(self) -> tuple[optuna.Trial, dict[str, Any]]:
        """The next trial and its parameters (space key -> value)."""
        assert self.cfg.tune is not None
        trial = self.study.ask()
        return trial, {key: self._suggest(trial, key, dim) for key, dim in self.cfg.tune.space.items()}

    def as_overrides(self, params: dict[str, Any]) -> list[str]:
        """``training.KEY=VALUE`` for ``fedmine run --set``, spelled as the config spells each key."""
        return [f"training.{self._key[k]}={_yaml_value(v)}" for k, v in params.items()]

    def trial_config(self, params: dict[str, Any]) -> FederationConfig:
        """The config of a trial: the file, the search's overrides, then the trial's."""
        return load_config(self.config, [*self.overrides, *self.as_overrides(params)])

    # -- rounds and ends ------------------------------------------------------------
    def pruning(self, trial: optuna.Trial, pruned: list[int]):
        """A :mod:`fedmine.progress` listener: reports each round's metric; True (stop) when the trial is pruned.

        The round at which it was pruned is appended to ``pruned``.
        """

        def on_round(round_id: int, rounds: int, global_metrics: dict) -> bool:
            value = global_metrics.get(self.metric)
            if value is None or not math.isfinite(float(value)):
                return False
            trial.report(float(value), step=round_id)
            if trial.should_prune():
                pruned.append(round_id)
                return True
            return False

        return on_round

    def tell(self, trial: optuna.Trial, record: TrialRecord) -> None:
        """Record how a trial ended (pruned trials count with their last reported value)."""
        if record.state == PRUNED:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif record.value is None or not math.isfinite(record.value):
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, record.value)
        self.records.append(record)

    def best(self) -> TrialRecord | None:
        """The complete trial with the best value (None if none completed)."""
        done = [r for r in self.records if r.state == COMPLETE and r.value is not None and math.isfinite(r.value)]
        if not done:
            return None
        return (max if self.higher_is_better else min)(done, key=lambda r: r.value)

    def overlay_yaml(self, params: dict[str, Any]) -> str:
        """The best parameters as a YAML overlay (``fedmine run CONFIG --set @FILE`` reads it)."""
        body = {"training": {self._key[k]: v for k, v in params.items()}}
        return (
            f"# fedmine tune: the best trial's parameters for {self.cfg.name} ({self.metric}); "
            f"use with: fedmine run {self.config} --set @THIS_FILE\n" + yaml.safe_dump(body, sort_keys=False)
        )


def trial_value(history: list, metric: str, *, early_stopped: bool, higher_is_better: bool) -> float | None:
    """A trial's value: its final model's federation-wide metric.

    That is the last round's, unless early stopping cut the model back to its
    best round (then that round's).
    """
    values = [r.global_metrics.get(metric) for r in history]
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return None
    if early_stopped:
        return max(values) if higher_is_better else min(values)
    return values[-1]


def _yaml_value(value: Any) -> str:
    """A value as ``--set`` reads it back (YAML): floats keep every digit."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
