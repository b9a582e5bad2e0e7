"""Training parameters: names, defaults and validation, LightGBM's spelling.

This module owns the one place where training parameters enter the engine.
Every bad value raises :class:`fedmine.errors.ConfigError` naming the key, the
value and what is allowed; nothing downstream re-checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from fedmine.errors import ConfigError
from fedmine.gbdt.dtypes import MAX_BIN_LIMIT
from fedmine.gbdt.grower import MAX_LOOKAHEAD
from fedmine.gbdt.objectives import OBJECTIVES
from fedmine.gbdt.splitting import SplitRules

METRICS = {
    "binary": ("binary_logloss", "auc"),
    "multiclass": ("multi_logloss",),
    "regression": ("l2", "rmse"),
    "poisson": ("poisson", "l2", "rmse"),
    "tweedie": ("tweedie", "l2", "rmse"),
}

#: LightGBM aliases accepted on input and mapped to the canonical name.
ALIASES = {
    "eta": "learning_rate",
    "shrinkage_rate": "learning_rate",
    "num_leaf": "num_leaves",
    "max_leaves": "num_leaves",
    "min_data": "min_data_in_leaf",
    "min_child_samples": "min_data_in_leaf",
    "min_child_weight": "min_sum_hessian_in_leaf",
    "reg_alpha": "lambda_l1",
    "reg_lambda": "lambda_l2",
    "min_split_gain": "min_gain_to_split",
    "colsample_bytree": "feature_fraction",
    "subsample": "bagging_fraction",
    "subsample_freq": "bagging_freq",
    "num_iterations": "num_boost_round",
    "n_estimators": "num_boost_round",
    "num_round": "num_boost_round",
    "early_stopping_round": "early_stopping_rounds",
    "random_state": "seed",
    "application": "objective",
}

#: LightGBM keys that do not change the model and are accepted and ignored.
IGNORED = ("verbose", "verbosity", "num_threads", "n_jobs", "deterministic", "force_col_wise", "force_row_wise")


@dataclass(frozen=True)
class Params:
    """Validated training parameters (LightGBM names and defaults)."""

    objective: str = "binary"
    num_class: int = 1
    num_boost_round: int = 100
    learning_rate: float = 0.1
    num_leaves: int = 31
    max_depth: int = -1
    min_data_in_leaf: int = 20
    min_sum_hessian_in_leaf: float = 1e-3
    lambda_l1: float = 0.0
    lambda_l2: float = 0.0
    min_gain_to_split: float = 0.0
    feature_fraction: float = 1.0
    bagging_fraction: float = 1.0
    bagging_freq: int = 0
    seed: int = 0
    max_bin: int = 255
    cat_smooth: float = 10.0
    cat_l2: float = 10.0
    max_cat_threshold: int = 32
    min_data_per_group: int = 100
    max_cat_to_onehot: int = 4
    poisson_max_delta_step: float = 0.7
    tweedie_variance_power: float = 1.5
    metric: str = ""
    early_stopping_rounds: int = 0
    packed: str = "auto"  # "auto": packed (grad, hess|count) accumulators when the bits allow; "off"
    lookahead: int = 2  # extra leaves opened per exchange: fewer exchanges, the same trees

    @property
    def rules(self) -> SplitRules:
        return SplitRules(
            lambda_l1=self.lambda_l1,
            lambda_l2=self.lambda_l2,
            min_data_in_leaf=self.min_data_in_leaf,
            min_sum_hessian_in_leaf=self.min_sum_hessian_in_leaf,
            min_gain_to_split=self.min_gain_to_split,
            cat_smooth=self.cat_smooth,
            cat_l2=self.cat_l2,
            max_cat_threshold=self.max_cat_threshold,
            min_data_per_group=self.min_data_per_group,
            max_cat_to_onehot=self.max_cat_to_onehot,
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _int(key, value, lo=None, hi=None, allowed=""):
    if isinstance(value, bool) or not isinstance(value, int) and not (hasattr(value, "__index__")):
        raise ConfigError(f"{key} must be an integer{allowed}, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key} must be an integer{allowed}, got {value!r}")
    return value


def _float(key, value, lo=None, hi=None, allowed="", lo_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ConfigError(f"{key} must be a number{allowed}, got {value!r}")
    value = float(value)
    bad = value != value
    if lo is not None:
        bad |= value <= lo if lo_open else value < lo
    if hi is not None:
        bad |= value > hi
    if bad:
        raise ConfigError(f"{key} must be a number{allowed}, got {value!r}")
    return value


def make_params(params: dict | Params | None = None, **overrides) -> Params:
    """Validate a LightGBM-style parameter dict.

    Raises
    ------
    ConfigError
        Unknown key (with the known keys), or a value outside its allowed set.
    """
    if isinstance(params, Params):
        raw = params.as_dict()
    else:
        raw = dict(params or {})
    raw.update(overrides)
    known = {f.name for f in fields(Params)}
    clean = {}
    for key, value in raw.items():
        key = ALIASES.get(key, key)
        if key in IGNORED:
            continue
        if key not in known:
            raise ConfigError(f"unknown parameter {key!r}; allowed: {sorted(known)}")
        clean[key] = value
    p = {**Params().as_dict(), **clean}

    if p["objective"] not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {list(OBJECTIVES)}, got {p['objective']!r}")
    if p["objective"] == "multiclass":
        p["num_class"] = _int("num_class", p["num_class"], 2, None, " >= 2 for objective 'multiclass'")
    else:
        p["num_class"] = _int("num_class", p["num_class"], 1, 1, " equal to 1 unless objective is 'multiclass'")
    p["num_boost_round"] = _int("num_boost_round", p["num_boost_round"], 1, None, " >= 1")
    p["learning_rate"] = _float("learning_rate", p["learning_rate"], 0.0, None, " > 0", lo_open=True)
    p["num_leaves"] = _int("num_leaves", p["num_leaves"], 2, 1 << 15, " in [2, 32768]")
    p["max_depth"] = _int("max_depth", p["max_depth"], -1, None, " >= 1, or <= 0 for no limit")
    p["min_data_in_leaf"] = _int("min_data_in_leaf", p["min_data_in_leaf"], 0, None, " >= 0")
    p["min_sum_hessian_in_leaf"] = _float("min_sum_hessian_in_leaf", p["min_sum_hessian_in_leaf"], 0.0, None, " >= 0")
    for key in ("lambda_l1", "lambda_l2", "min_gain_to_split", "cat_l2"):
        p[key] = _float(key, p[key], 0.0, None, " >= 0")
    p["cat_smooth"] = _float("cat_smooth", p["cat_smooth"], 0.0, None, " >= 0")
    p["feature_fraction"] = _float("feature_fraction", p["feature_fraction"], 0.0, 1.0, " in (0, 1]", lo_open=True)
    p["bagging_fraction"] = _float("bagging_fraction", p["bagging_fraction"], 0.0, 1.0, " in (0, 1]", lo_open=True)
    p["bagging_freq"] = _int("bagging_freq", p["bagging_freq"], 0, None, " >= 0 (0 disables bagging)")
    p["seed"] = _int("seed", p["seed"], 0, (1 << 63) - 1, " in [0, 2**63)")
    p["max_bin"] = _int("max_bin", p["max_bin"], 2, MAX_BIN_LIMIT, f" in [2, {MAX_BIN_LIMIT}]")
    p["max_cat_threshold"] = _int("max_cat_threshold", p["max_cat_threshold"], 1, None, " >= 1")
    p["min_data_per_group"] = _int("min_data_per_group", p["min_data_per_group"], 1, None, " >= 1")
    p["max_cat_to_onehot"] = _int("max_cat_to_onehot", p["max_cat_to_onehot"], 1, None, " >= 1")
    p["poisson_max_delta_step"] = _float("poisson_max_delta_step", p["poisson_max_delta_step"], 0.0, None, " > 0", lo_open=True)
    p["tweedie_variance_power"] = _float(
        "tweedie_variance_power", p["tweedie_variance_power"], 1.0, 2.0, " in [1, 2)"
    )
    if p["tweedie_variance_power"] >= 2.0:
        raise ConfigError(f"tweedie_variance_power must be a number in [1, 2), got {p['tweedie_variance_power']!r}")
    p["early_stopping_rounds"] = _int("early_stopping_rounds", p["early_stopping_rounds"], 0, None, " >= 0 (0 disables)")
    allowed_metrics = METRICS[p["objective"]]
    if p["metric"] in ("", None):
        p["metric"] = allowed_metrics[0]
    if p["metric"] not in allowed_metrics:
        raise ConfigError(
            f"metric must be one of {list(allowed_metrics)} for objective {p['objective']!r}, got {p['metric']!r}"
        )
    p["lookahead"] = _int("lookahead", p["lookahead"], 0, MAX_LOOKAHEAD, f" in [0, {MAX_LOOKAHEAD}]")
    if p["packed"] not in ("auto", "off"):
        raise ConfigError(f"packed must be one of ['auto', 'off'], got {p['packed']!r}")
    return Params(**p)
