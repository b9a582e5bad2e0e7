"""Training parameters: declared once, with LightGBM's names, aliases and the engine's bounds.

:class:`TrainingParams` is the one declaration of the training parameters:
every name, LightGBM alias, default and allowed range. It is used by

* the engine: :func:`make_params` validates through it (adding the engine's
  ``objective``, ``num_class``, ``metric`` and ``packed``) and returns the
  frozen :class:`Params` the engine and the wire carry;
* the federation config: ``training:`` in :mod:`fedmine.config` is a subclass
  of it, so a config that loads is a config the engine accepts;
* local LightGBM training: :func:`lightgbm_params` builds the dict passed to
  ``lightgbm.train`` from it, and :func:`check_lightgbm_params` holds such a
  dict to :data:`LIGHTGBM_KEYS`, an allow-list with no key that opens a socket
  or names a file.

The bounds are the tightest of what the engine and LightGBM accept: for example
``num_leaves <= 32768`` (node slots per tree, ``NODE_STRIDE``), ``max_bin <=
255`` (bins are bytes) and LightGBM's 32-bit integers. A bad value raises
:class:`fedmine.errors.ConfigError` naming the key, the value and what is
allowed; nothing downstream re-checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from fedmine.errors import ConfigError
from fedmine.gbdt.dtypes import MAX_BIN_LIMIT
from fedmine.gbdt.grower import MAX_LOOKAHEAD
from fedmine.gbdt.objectives import OBJECTIVES
from fedmine.gbdt.rows import NODE_STRIDE
from fedmine.gbdt.splitting import SplitRules

#: objective -> the metrics ``metric`` may name, the default (LightGBM's) first: fedmine.metrics' table.
from fedmine.metrics import ENGINE_METRICS as METRICS

#: Largest ``num_leaves``: a tree uses fewer than ``2 * num_leaves * (1 +
#: lookahead)`` node slots, which must stay below ``NODE_STRIDE``.
MAX_LEAVES = 1 << 15
assert 2 * MAX_LEAVES * (1 + MAX_LOOKAHEAD) <= NODE_STRIDE

#: Largest number of boosting rounds.
MAX_ROUNDS = 100_000

#: LightGBM reads its integer parameters as C ``int``.
INT32_MAX = (1 << 31) - 1

#: Largest seed: the engine mixes it into 64-bit hashes.
MAX_SEED = (1 << 63) - 1

#: LightGBM keys that do not change the model: accepted by :func:`make_params` and ignored.
IGNORED = ("verbose", "verbosity", "deterministic", "force_col_wise", "force_row_wise")


def _param(default: Any, *aliases: str, note: str = "", **constraints: Any) -> Any:
    """A field of :class:`TrainingParams`: its default, LightGBM's aliases, bounds and a note on special values."""
    extra: dict[str, Any] | None = {"note": note} if note else None
    return Field(
        default, validation_alias=AliasChoices(*aliases) if aliases else None, json_schema_extra=extra, **constraints
    )


class _Declared(BaseModel):
    """Numbers are checked the same way everywhere: type, then range, one message naming what is allowed."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    @classmethod
    def spellings(cls) -> dict[str, str]:
        """Every accepted key (name or alias) -> the field it sets."""
        out: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            out[name] = name
            if isinstance(field.validation_alias, AliasChoices):
                out.update({str(a): name for a in field.validation_alias.choices})
        return out

    @model_validator(mode="before")
    @classmethod
    def _one_spelling_each(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        given: dict[str, list[str]] = {}
        spellings = cls.spellings()
        for key in data:
            if key in spellings:
                given.setdefault(spellings[key], []).append(str(key))
        for name, keys in given.items():
            if len(keys) > 1:
                shown = cls.model_fields[name].serialization_alias or name
                raise ValueError(f"{' and '.join(keys)} both set {shown} (they are aliases); give one of them")
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _number_in_range(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if name is None or name not in _CHECKED:
            return value
        return check_number(value, cls.model_fields[name])


class TrainingParams(_Declared):
    """The training parameters: LightGBM's names, aliases and defaults, the engine's bounds."""

    num_boost_round: int = _param(
        100,
        "num_boost_round",
        "num_iterations",
        "num_iteration",
        "n_iter",
        "num_tree",
        "num_trees",
        "num_round",
        "num_rounds",
        "nrounds",
        "n_estimators",
        "max_iter",
        ge=1,
        le=MAX_ROUNDS,
        description="boosting rounds",
    )
    learning_rate: float = _param(
        0.1, "learning_rate", "eta", "shrinkage_rate", gt=0, le=1, description="shrinkage of every tree"
    )
    num_leaves: int = _param(
        31,
        "num_leaves",
        "num_leaf",
        "max_leaves",
        "max_leaf",
        "max_leaf_nodes",
        ge=2,
        le=MAX_LEAVES,
        description="leaves per tree",
    )
    max_depth: int = _param(
        -1, "max_depth", ge=-1, le=INT32_MAX, note="-1 or 0: no limit", description="depth limit of a tree"
    )
    min_data_in_leaf: int = _param(
        20,
        "min_data_in_leaf",
        "min_data",
        "min_samples_leaf",
        "min_child_samples",
        "min_data_per_leaf",
        ge=0,
        le=INT32_MAX,
        description="rows a leaf needs at least",
    )
    min_sum_hessian_in_leaf: float = _param(
        1e-3,
        "min_sum_hessian_in_leaf",
        "min_hessian",
        "min_sum_hessian",
        "min_child_weight",
        "min_sum_hessian_per_leaf",
        ge=0,
        description="hessian sum a leaf needs at least",
    )
    lambda_l1: float = _param(0.0, "lambda_l1", "reg_alpha", "l1_regularization", ge=0, description="L1 regularisation")
    lambda_l2: float = _param(
        0.0, "lambda_l2", "lambda", "reg_lambda", "l2_regularization", ge=0, description="L2 regularisation"
    )
    min_gain_to_split: float = _param(
        0.0, "min_gain_to_split", "min_split_gain", ge=0, description="gain a split needs at least"
    )
    feature_fraction: float = _param(
        1.0,
        "feature_fraction",
        "sub_feature",
        "colsample_bytree",
        gt=0,
        le=1,
        description="share of features each tree may split on",
    )
    bagging_fraction: float = _param(
        1.0, "bagging_fraction", "bagging", "sub_row", "subsample", gt=0, le=1, description="share of rows in each bag"
    )
    bagging_freq: int = _param(
        0,
        "bagging_freq",
        "subsample_freq",
        ge=0,
        le=INT32_MAX,
        note="0 disables bagging",
        description="rounds between new bags",
    )
    max_bin: int = _param(255, "max_bin", "max_bins", ge=2, le=MAX_BIN_LIMIT, description="bins per feature")
    max_cat_threshold: int = _param(
        32, "max_cat_threshold", ge=1, le=INT32_MAX, description="categories on one side of a categorical split at most"
    )
    cat_smooth: float = _param(10.0, "cat_smooth", ge=0, description="smoothing of categorical split ordering")
    cat_l2: float = _param(10.0, "cat_l2", ge=0, description="L2 regularisation of categorical splits")
    min_data_per_group: int = _param(
        100, "min_data_per_group", ge=1, le=INT32_MAX, description="rows a categorical group needs at least"
    )
    max_cat_to_onehot: int = _param(
        4, "max_cat_to_onehot", ge=1, le=INT32_MAX, description="one-vs-rest splits up to this many categories"
    )
    poisson_max_delta_step: float = _param(
        0.7, "poisson_max_delta_step", gt=0, description="objective poisson: safeguard of the hessian"
    )
    tweedie_variance_power: float = _param(
        1.5, "tweedie_variance_power", gt=1, lt=2, description="objective tweedie: the variance power"
    )
    early_stopping_rounds: int = _param(
        0,
        "early_stopping_rounds",
        "early_stopping_round",
        "early_stopping",
        "n_iter_no_change",
        ge=0,
        note="0 disables",
        description="stop when the validation metric has not improved for this many rounds",
    )
    lookahead: int = _param(
        2,
        "lookahead",
        ge=0,
        le=MAX_LOOKAHEAD,
        description="extra leaves per tree whose histograms travel in the same exchange",
    )
    seed: int = _param(
        0, "seed", "random_seed", "random_state", ge=0, le=MAX_SEED, description="seeds bagging and feature sampling"
    )
    num_threads: int = _param(
        0,
        "num_threads",
        "num_thread",
        "nthread",
        "nthreads",
        "n_jobs",
        ge=0,
        le=INT32_MAX,
        note="0: all cores",
        description="LightGBM threads (the engine ignores it)",
    )


def redeclare(name: str, default: Any, *, first_alias: str | None = None) -> Any:
    """The field ``name`` of :class:`TrainingParams` with another default, bounds and aliases unchanged.

    ``first_alias`` is one more accepted spelling, also the one written on output
    (the config's ``rounds`` for ``num_boost_round``).
    """
    field = TrainingParams.model_fields[name]
    overrides: dict[str, Any] = {"default": default}
    if first_alias is not None:
        choices = field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices) else [name]
        overrides.update(validation_alias=AliasChoices(first_alias, *choices), serialization_alias=first_alias)
    return FieldInfo.merge_field_infos(field, **overrides)


class _EngineParams(TrainingParams):
    """What :func:`make_params` validates: the training parameters and the engine's objective settings."""

    objective: str = _param("binary", "objective", "objective_type", "app", "application", "loss")
    num_class: int = _param(1, "num_class", "num_classes")
    metric: str | None = _param("", "metric", "metrics", "metric_types")
    packed: str = "auto"  # "auto": packed (grad, hess|count) accumulators when the bits allow; "off"

    @field_validator("objective", mode="before")
    @classmethod
    def _known_objective(cls, value: Any) -> Any:
        if value not in OBJECTIVES:
            raise ValueError(f"must be one of {list(OBJECTIVES)}, got {value!r}")
        return value

    @field_validator("packed", mode="before")
    @classmethod
    def _packed_mode(cls, value: Any) -> Any:
        if value not in ("auto", "off"):
            raise ValueError(f"must be one of ['auto', 'off'], got {value!r}")
        return value

    @model_validator(mode="after")
    def _objective_settings(self) -> _EngineParams:
        if self.objective == "multiclass" and self.num_class < 2:
            raise ValueError(f"num_class must be an integer >= 2 for objective 'multiclass', got {self.num_class!r}")
        if self.objective != "multiclass" and self.num_class != 1:
            raise ValueError(
                f"num_class must be an integer equal to 1 unless objective is 'multiclass', got {self.num_class!r}"
            )
        allowed = METRICS[self.objective]
        if self.metric in ("", None):
            self.metric = allowed[0]
        if self.metric not in allowed:
            raise ValueError(
                f"metric must be one of {list(allowed)} for objective {self.objective!r}, got {self.metric!r}"
            )
        return self


#: Fields whose numbers are checked by :func:`check_number` (config-only fields keep pydantic's checks).
_CHECKED = frozenset(n for n, f in _EngineParams.model_fields.items() if f.annotation in (int, float))


def _bounds(field: FieldInfo) -> tuple[Any, bool, Any, bool]:
    """``(lo, lo_open, hi, hi_open)`` of a field, ``None`` where unbounded."""
    lo: Any = None
    hi: Any = None
    lo_open = hi_open = False
    for m in field.metadata:  # annotated_types.Ge, Gt, Le, Lt from Field(ge=..., ...)
        if getattr(m, "ge", None) is not None:
            lo, lo_open = m.ge, False
        elif getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        elif getattr(m, "le", None) is not None:
            hi, hi_open = m.le, False
        elif getattr(m, "lt", None) is not None:
            hi, hi_open = m.lt, True
    return lo, lo_open, hi, hi_open


def allowed(field: FieldInfo) -> str:
    """What a field allows, as messages say it: ``an integer in [2, 32768]``, ``a number > 0``."""
    integer = field.annotation is int
    kind = "an integer" if integer else "a number"

    def show(bound: Any) -> str:
        return str(int(bound)) if integer else f"{bound:g}"

    lo, lo_open, hi, hi_open = _bounds(field)
    if lo is not None and hi is not None:
        text = f" in {'(' if lo_open else '['}{show(lo)}, {show(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        text = f" {'>' if lo_open else '>='} {show(lo)}"
    elif hi is not None:
        text = f" {'<' if hi_open else '<='} {show(hi)}"
    else:
        text = ""
    extra = field.json_schema_extra
    note = extra.get("note") if isinstance(extra, dict) else None
    return f"{kind}{text}" + (f" ({note})" if note else "")


def check_number(value: Any, field: FieldInfo) -> int | float:
    """``value`` as the field's int or float, or ``ValueError("must be <allowed>, got <value>")``.

    Integers are ints (numpy's too), never bools, floats or text; numbers are
    ints or floats, never bools, text or NaN.
    """
    integer = field.annotation is int
    if isinstance(value, bool) or not (
        hasattr(value, "__index__") if integer else (isinstance(value, (int, float)) or hasattr(value, "__float__"))
    ):
        raise ValueError(f"must be {allowed(field)}, got {value!r}")
    number: int | float = int(value) if integer else float(value)
    lo, lo_open, hi, hi_open = _bounds(field)
    bad = isinstance(number, float) and math.isnan(number)
    if lo is not None:
        bad |= number <= lo if lo_open else number < lo
    if hi is not None:
        bad |= number >= hi if hi_open else number > hi
    if bad:
        raise ValueError(f"must be {allowed(field)}, got {number!r}")
    return number


def _default(name: str) -> Any:
    return _EngineParams.model_fields[name].get_default()


@dataclass(frozen=True)
class Params:
    """Validated training parameters (LightGBM names and defaults), as the engine and the wire carry them.

    Defaults come from :class:`TrainingParams`; build one with :func:`make_params`.
    """

    objective: str = _default("objective")
    num_class: int = _default("num_class")
    num_boost_round: int = _default("num_boost_round")
    learning_rate: float = _default("learning_rate")
    num_leaves: int = _default("num_leaves")
    max_depth: int = _default("max_depth")
    min_data_in_leaf: int = _default("min_data_in_leaf")
    min_sum_hessian_in_leaf: float = _default("min_sum_hessian_in_leaf")
    lambda_l1: float = _default("lambda_l1")
    lambda_l2: float = _default("lambda_l2")
    min_gain_to_split: float = _default("min_gain_to_split")
    feature_fraction: float = _default("feature_fraction")
    bagging_fraction: float = _default("bagging_fraction")
    bagging_freq: int = _default("bagging_freq")
    seed: int = _default("seed")
    max_bin: int = _default("max_bin")
    cat_smooth: float = _default("cat_smooth")
    cat_l2: float = _default("cat_l2")
    max_cat_threshold: int = _default("max_cat_threshold")
    min_data_per_group: int = _default("min_data_per_group")
    max_cat_to_onehot: int = _default("max_cat_to_onehot")
    poisson_max_delta_step: float = _default("poisson_max_delta_step")
    tweedie_variance_power: float = _default("tweedie_variance_power")
    metric: str = _default("metric")
    early_stopping_rounds: int = _default("early_stopping_rounds")
    packed: str = _default("packed")
    lookahead: int = _default("lookahead")

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_PARAMS_FIELDS = tuple(f.name for f in fields(Params))

#: LightGBM aliases accepted on input -> the canonical name.
ALIASES: dict[str, str] = {k: v for k, v in _EngineParams.spellings().items() if k != v}


def config_error(exc: ValidationError) -> ConfigError:
    """The first problem of a validation as one line: ``key must be ..., got ...``."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return ConfigError(f"unknown parameter {key!r}; allowed: {sorted(_EngineParams.model_fields)}")
    if err["type"] == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
    else:
        msg = f"{err['msg'].lower()}, got {err.get('input')!r}"
    return ConfigError(f"{key} {msg}" if key else msg)


def make_params(params: Mapping[str, Any] | Params | None = None, **overrides: Any) -> Params:
    """Validate a LightGBM-style parameter dict (names or LightGBM aliases).

    Raises
    ------
    ConfigError
        Unknown key (with the known keys), two aliases of one parameter, or a
        value outside its allowed set.
    """
    raw = params.as_dict() if isinstance(params, Params) else dict(params or {})
    raw.update(overrides)
    raw = {k: v for k, v in raw.items() if k not in IGNORED}
    try:
        valid = _EngineParams.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc) from None
    return Params(**{name: getattr(valid, name) for name in _PARAMS_FIELDS})


#: The keys local training may pass to ``lightgbm.train``, in this order, and
#: nothing else: none opens a socket (``machines``, ``tree_learner``, ports) or
#: names a file (``input_model``, ``output_model``, ``*_filename``).
_LIGHTGBM_ALWAYS: tuple[str, ...] = (
    "objective",
    "learning_rate",
    "num_leaves",
    "max_depth",
    "min_data_in_leaf",
    "min_sum_hessian_in_leaf",
    "lambda_l1",
    "lambda_l2",
    "min_gain_to_split",
    "feature_fraction",
    "bagging_fraction",
    "bagging_freq",
    "max_bin",
    "max_cat_threshold",
    "cat_smooth",
    "cat_l2",
    "min_data_per_group",
    "max_cat_to_onehot",
    "seed",
    "deterministic",
    "force_row_wise",
    "num_threads",
    "verbosity",
)
LIGHTGBM_KEYS: tuple[str, ...] = _LIGHTGBM_ALWAYS + (
    "num_class",
    "tweedie_variance_power",
    "poisson_max_delta_step",
    "metric",
)

#: Fixed LightGBM settings of local training: reproducible models, no log output.
LIGHTGBM_FIXED: dict[str, Any] = {"deterministic": True, "force_row_wise": True, "verbosity": -1}

#: LightGBM metric names local training may ask for.
LIGHTGBM_METRICS = (
    "auc",
    "binary_logloss",
    "binary_error",
    "multi_logloss",
    "multi_error",
    "rmse",
    "l1",
    "l2",
    "poisson",
    "tweedie",
)


def lightgbm_params(params: TrainingParams, objective: str, num_class: int | None) -> dict[str, Any]:
    """The ``lightgbm.train`` parameters of local training (bagging, cyclic, local, baselines).

    Exactly the :data:`LIGHTGBM_KEYS` that apply: the objective, the tree
    parameters of ``params``, :data:`LIGHTGBM_FIXED`, and ``num_class``,
    ``tweedie_variance_power`` or ``poisson_max_delta_step`` for their objective.
    Rounds travel separately (``num_boost_round=``), as do early stopping and
    ``lookahead`` (the coordinator's and the engine's).
    """
    out: dict[str, Any] = {"objective": objective}
    for key in _LIGHTGBM_ALWAYS[1:]:
        out[key] = LIGHTGBM_FIXED[key] if key in LIGHTGBM_FIXED else getattr(params, key)
    if objective == "multiclass":
        out["num_class"] = num_class
    if objective == "tweedie":
        out["tweedie_variance_power"] = params.tweedie_variance_power
    if objective == "poisson":
        out["poisson_max_delta_step"] = params.poisson_max_delta_step
    return check_lightgbm_params(out)


def check_lightgbm_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` if it is a local-training parameter dict, else :class:`ConfigError`.

    For a party to check what it is asked to pass to ``lightgbm.train``: keys
    from :data:`LIGHTGBM_KEYS` only, values within :class:`TrainingParams`'
    bounds, a known objective and metric.
    """
    unknown = sorted(set(params) - set(LIGHTGBM_KEYS))
    if unknown:
        raise ConfigError(
            f"LightGBM parameter {unknown[0]!r} is not allowed in local training; allowed: {', '.join(LIGHTGBM_KEYS)}"
        )
    for key in ("deterministic", "force_row_wise"):
        if key in params and not isinstance(params[key], bool):
            raise ConfigError(f"{key} must be true or false, got {params[key]!r}")
    if "verbosity" in params and (isinstance(params["verbosity"], bool) or not isinstance(params["verbosity"], int)):
        raise ConfigError(f"verbosity must be an integer, got {params['verbosity']!r}")
    metric = params.get("metric", [])
    for m in [metric] if isinstance(metric, str) else metric:
        if m not in LIGHTGBM_METRICS:
            raise ConfigError(f"metric must be among {list(LIGHTGBM_METRICS)}, got {m!r}")
    objective = params.get("objective")
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    num_class = params.get("num_class", 1)
    if objective == "multiclass" and (isinstance(num_class, bool) or not isinstance(num_class, int) or num_class < 2):
        raise ConfigError(f"num_class must be an integer >= 2 for objective 'multiclass', got {num_class!r}")
    if objective != "multiclass" and "num_class" in params:
        raise ConfigError(f"num_class is only allowed with objective 'multiclass', got objective {objective!r}")
    try:
        TrainingParams.model_validate({k: v for k, v in params.items() if k in TrainingParams.model_fields})
    except ValidationError as exc:
        raise config_error(exc) from None
    return dict(params)


def engine_params(params: TrainingParams, objective: str, num_class: int | None, metric: str) -> dict[str, Any]:
    """The engine's parameters (``histogram`` strategy) for ``params``: LightGBM's names, for :func:`make_params`."""
    out: dict[str, Any] = {"objective": objective}
    out.update({name: getattr(params, name) for name in _PARAMS_FIELDS if name in TrainingParams.model_fields})
    out.update(num_class=num_class if objective == "multiclass" else 1, metric=metric)
    return out
