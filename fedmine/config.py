"""The federation config: pydantic models of the YAML file and its loading.

A config names the canonical schema (``features``, ``label``), the
organisations with their mapping onto it, the training parameters and where
MLflow records the run. :func:`load_config` reads the YAML, applies
``--set key=value`` overrides by dotted path, validates once and raises a
one-line :class:`~fedmine.errors.ConfigError` naming the file, the key and what
is allowed. docs/config.md documents every key.
"""

from __future__ import annotations

import datetime as _dt
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fedmine.errors import ConfigError
from fedmine.gbdt import params as gbdt_params
from fedmine.gbdt.dtypes import MAX_BIN_LIMIT
from fedmine.gbdt.params import TrainingParams, redeclare

OBJECTIVES = ("binary", "multiclass", "regression", "poisson", "tweedie")
STRATEGIES = ("histogram", "bagging", "cyclic", "local")
FEATURE_TYPES = ("float", "int", "category", "bool", "date")
UNKNOWN_POLICIES = ("error", "other", "missing")
DERIVATIONS = ("years_since", "months_since", "days_since", "year", "month", "weekday")
EPOCH = _dt.date(1970, 1, 1)
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"

#: Names of the federation and of organisations (matched in full: no trailing newline or space).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NAME_ALLOWED = "letters, digits, '.', '_' or '-', starting with a letter or digit ([A-Za-z0-9][A-Za-z0-9_.-]*)"


def _is_number(annotation: Any) -> bool:
    """Whether a field holds a number (int or float, maybe also None or a date), never a bool."""
    args = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return bool not in args and any(a in (int, float) for a in args)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false is not a number: pydantic would read true as 1."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        annotation = field.annotation
        if isinstance(value, bool) and _is_number(annotation):
            raise ValueError(f"must be {gbdt_params.allowed(field)}, got {value!r}")
        if isinstance(value, dict) and get_origin(annotation) is dict and _is_number(get_args(annotation)[1]):
            for key, item in value.items():
                if isinstance(item, bool):
                    raise ValueError(f"{key}: must be a number, got {item!r}")
        return value


def date_to_days(value: _dt.date) -> float:
    """A date as days since 1970-01-01: how ``date`` features are encoded."""
    if isinstance(value, _dt.datetime):
        value = value.date()
    return float((value - EPOCH).days)


class FeatureSpec(_Strict):
    """One canonical feature: type, unit, allowed range, vocabulary, whether required.

    ``date`` features are encoded as days since 1970-01-01; their ``min`` and
    ``max`` may be written as dates and are stored as such days.
    """

    type: Literal["float", "int", "category", "bool", "date"] = "float"
    categories: list[str] | None = None
    min: float | _dt.date | None = None
    max: float | _dt.date | None = None
    unit: str | None = None
    quantity: str | None = Field(
        None, description="what is measured (glucose, ...): picks substance-dependent unit factors"
    )
    required: bool = Field(
        True, description="every organisation must map it; when false an unmapped feature is all missing"
    )
    description: str | None = None

    @model_validator(mode="after")
    def _categories_match_type(self) -> FeatureSpec:
        if self.type == "category" and not self.categories:
            raise ValueError("a category feature needs 'categories' (its vocabulary)")
        if self.type != "category" and self.categories is not None:
            raise ValueError(f"'categories' is only allowed with type: category (type is {self.type})")
        if self.categories is not None and len(set(self.categories)) != len(self.categories):
            raise ValueError("'categories' has duplicates")
        for key in ("min", "max"):
            bound = getattr(self, key)
            if isinstance(bound, _dt.date):
                if self.type != "date":
                    raise ValueError(
                        f"{key} is a date ({bound}); dates are allowed with type: date (type is {self.type})"
                    )
                setattr(self, key, date_to_days(bound))
        if self.min is not None and self.max is not None and self.min >= self.max:  # type: ignore[operator]  # dates are days by now
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class DeriveSpec(_Strict):
    """A canonical feature computed from a date column: ``{from: birth_date, as: years_since, at: 2024-01-01}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    from_: str = Field(alias="from", description="the date column (after rename) it is computed from")
    as_: Literal["years_since", "months_since", "days_since", "year", "month", "weekday"] = Field(alias="as")
    at: _dt.date | None = Field(None, description="reference date of years_since, months_since, days_since")

    @model_validator(mode="after")
    def _reference_date(self) -> DeriveSpec:
        if self.as_.endswith("_since") and self.at is None:
            raise ValueError(f"as: {self.as_} needs 'at', the reference date (for example at: 2024-01-01)")
        if not self.as_.endswith("_since") and self.at is not None:
            raise ValueError(
                f"'at' is only allowed with as: years_since, months_since or days_since (as is {self.as_})"
            )
        return self


#: Training strategies an organisation on a cluster supports (its rows never gather in one process).
CLUSTER_STRATEGIES = ("histogram",)


class ComputeSpec(_Strict):
    """Where an organisation's party computes: ``{dask: local, workers: 2}`` or ``{dask: tcp://host:8786}``.

    Its rows are held as partitions on the cluster's workers (docs/scale.md).
    """

    dask: str = Field(description="local (a LocalCluster on the party's machine) or tcp://host:port of a scheduler")
    workers: int | None = Field(None, ge=1, le=1024, description="worker processes of a local cluster (default 2)")
    threads_per_worker: int = Field(1, ge=1, le=256, description="threads per worker process of a local cluster")
    memory_limit: str | None = Field(None, description="per worker of a local cluster, e.g. 4GiB (default: Dask's)")
    partition_rows: int = Field(
        1_000_000, ge=1, description="rows per partition at most (Parquet: whole row groups; SQL: key ranges)"
    )
    partitions: int | None = Field(None, ge=1, description="SQL sources: key ranges (default from partition_rows)")

    @field_validator("dask")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v != "local" and not re.match(r"^(tcp|tls)://[^/:]+:\d+$", v):
            raise ValueError(
                f"{v!r} is not allowed; allowed: local, or tcp://host:port (tls://host:port) of a scheduler"
            )
        return v

    @model_validator(mode="after")
    def _local_only(self) -> ComputeSpec:
        if self.dask != "local":
            for key in ("workers", "memory_limit"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} sets up a local cluster (dask: local); {self.dask} has its own workers")
        return self


class IdSpec(_Strict):
    """The shared customer key of one organisation (vertical federation) and how its values are normalised."""

    column: str = Field(description="the source column holding the id")
    trim: bool = Field(True, description="remove surrounding whitespace before hashing")
    case: Literal["keep", "lower", "upper"] = Field("lower", description="fold case before hashing")

    @field_validator("column")
    @classmethod
    def _column_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the id column is empty; name the source column of the shared customer key")
        return v


class OrganisationSpec(_Strict):
    """One organisation: where its rows are and how they map onto the canonical schema.

    ``rename`` maps source columns to canonical names; ``values``, ``units``,
    ``scale``, ``offset``, ``missing``, ``dates`` and ``derive`` name canonical
    features (they apply after rename). ``missing`` may also list markers under
    ``"*"``: they mean missing in every column.
    """

    source: str | None = None
    endpoint: str | None = Field(
        None, description="grpc+tls://host:port of the organisation's party server (fedmine party serve)"
    )
    read: dict[str, Any] = Field(default_factory=dict)
    rename: dict[str, str] = Field(default_factory=dict)
    values: dict[str, dict[Any, Any]] = Field(default_factory=dict)
    units: dict[str, str] = Field(default_factory=dict)
    scale: dict[str, float] = Field(default_factory=dict)
    offset: dict[str, float] = Field(default_factory=dict)
    missing: dict[str, list[Any]] = Field(default_factory=dict)
    dates: dict[str, str] = Field(default_factory=dict)
    derive: dict[str, DeriveSpec] = Field(default_factory=dict)
    unknown_categories: str | dict[str, str] = Field(
        "error", description="error | other | missing, or per category feature {feature: policy}"
    )
    industry: str | None = None
    compute: ComputeSpec | None = Field(None, description="hold the rows as partitions on a Dask cluster")
    id: IdSpec | None = Field(None, description="vertical: the shared customer key (a column name or {column, ...})")
    features: list[str] | None = Field(None, description="vertical: the canonical features this organisation holds")
    holds_label: bool = Field(False, description="vertical: this organisation holds the label (exactly one does)")

    @field_validator("id", mode="before")
    @classmethod
    def _id_shorthand(cls, v: Any) -> Any:
        return {"column": v} if isinstance(v, str) else v

    @field_validator("endpoint")
    @classmethod
    def _endpoint_scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^grpc(\+tls|\+tcp)?://[^/:]+:\d+$", v):
            raise ValueError(
                f"{v!r} is not an endpoint; allowed: grpc+tls://host:port (grpc+tcp://host:port for local tests)"
            )
        return v

    @model_validator(mode="after")
    def _source_or_endpoint(self) -> OrganisationSpec:
        if self.source is None and self.endpoint is None:
            raise ValueError(
                "needs a source (its data, for simulation and for `fedmine party serve`) "
                "or an endpoint (grpc+tls://host:port of its party server)"
            )
        return self

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("source is empty; give a path or URI (csv, parquet, sqlite:///..., postgresql://...)")
        return v

    @field_validator("unknown_categories", mode="before")
    @classmethod
    def _known_policies(cls, v: Any) -> Any:
        for policy in v.values() if isinstance(v, dict) else [v]:
            if policy not in UNKNOWN_POLICIES:
                raise ValueError(f"{policy!r} is not allowed; allowed: {', '.join(UNKNOWN_POLICIES)}")
        return v

    def unknown_policy(self, feature: str) -> str:
        """What happens to a value outside ``feature``'s vocabulary: error, other or missing."""
        policy = self.unknown_categories
        return policy.get(feature, "error") if isinstance(policy, dict) else policy


class ProfileSpec(_Strict):
    """Settings of ``fedmine profile`` (docs/schema.md)."""

    psi_threshold: float = Field(
        0.25, gt=0, description="flag a feature whose PSI against the other organisations exceeds this"
    )


def check_mapping(org: str, spec: OrganisationSpec, features: dict[str, FeatureSpec], label: str) -> None:
    """Raise ValueError when an organisation's mapping contradicts the canonical schema or itself."""
    canonical = set(features) | {label}
    derive_sources = {d.from_ for d in spec.derive.values()}

    def not_canonical(key: str, col: str, allowed: set[str]) -> ValueError:
        return ValueError(
            f"organisations.{org}.{key}.{col}: not a canonical column; allowed: {', '.join(sorted(allowed))}"
        )

    for key in ("values", "scale", "offset", "missing", "units", "derive"):
        for col in getattr(spec, key):
            if col not in canonical and not (key == "missing" and col == "*"):
                raise not_canonical(key, col, canonical)
    for col in spec.dates:
        if col not in features and col not in derive_sources:
            raise not_canonical("dates", col, set(features) | derive_sources)
        feat = features.get(col)
        if feat is not None and feat.type != "date":
            raise ValueError(f"organisations.{org}.dates.{col}: features.{col} has type {feat.type}, not date")
    targets = list(spec.rename.values())
    dup = sorted({t for t in targets if targets.count(t) > 1})
    if dup:
        sources = [s for s, t in spec.rename.items() if t == dup[0]]
        raise ValueError(
            f"organisations.{org}.rename: {' and '.join(sources)} both map to {dup[0]!r}; map one column per feature"
        )
    for name, d in spec.derive.items():
        if name == label:
            raise ValueError(f"organisations.{org}.derive.{name}: the label cannot be derived")
        renamed = [s for s, t in spec.rename.items() if t == name]
        if renamed:
            raise ValueError(
                f"organisations.{org}: {renamed[0]} (rename) and {d.from_} (derive) both map to {name!r}; "
                f"map one column per feature"
            )
        if features[name].type not in ("float", "int"):
            raise ValueError(
                f"organisations.{org}.derive.{name}: features.{name} has type {features[name].type}; "
                f"derived values are numbers (type float or int)"
            )
    for name, unit in spec.units.items():
        feat = features.get(name)
        where = f"organisations.{org}.units.{name}"
        if feat is None or feat.type not in ("float", "int"):
            what = "the label" if feat is None else f"type {feat.type}"
            raise ValueError(f"{where}: units convert numbers; {name} is {what} (allowed with type float or int)")
        if feat.unit is None:
            raise ValueError(f"{where}: features.{name} declares no unit to convert {unit!r} to; add its unit")
        if name in spec.scale or name in spec.offset:
            raise ValueError(f"{where}: {name} has both units and scale/offset; use one of them")
        from fedmine.schema.units import UnitError, conversion  # here: fedmine.schema imports this module

        try:
            conversion(unit, feat.unit, quantity=feat.quantity or name)
        except UnitError as exc:
            raise ValueError(f"{where}: {exc}") from None
    policies = spec.unknown_categories
    named = (
        policies if isinstance(policies, dict) else {n: policies for n, f in features.items() if f.type == "category"}
    )
    for name, policy in named.items():
        feat = features.get(name)
        if feat is None or feat.type != "category":
            allowed = sorted(n for n, f in features.items() if f.type == "category")
            raise ValueError(
                f"organisations.{org}.unknown_categories.{name}: not a category feature; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )
        if policy == "other" and "other" not in (feat.categories or []):
            raise ValueError(
                f"organisations.{org}.unknown_categories: 'other' needs 'other' in features.{name}.categories "
                f"({', '.join(feat.categories or [])})"
            )


class _StrategyFirst(_Strict):
    # A base of TrainingSpec listed after TrainingParams: pydantic collects fields from the last base first, so
    # strategy leads the training keys in messages and in the resolved config.
    strategy: Literal["histogram", "bagging", "cyclic", "local"] = "histogram"


class TrainingSpec(TrainingParams, _StrategyFirst):
    """How the global model is trained.

    The training parameters are the engine's :class:`~fedmine.gbdt.params.TrainingParams`
    (LightGBM's names and aliases, the engine's bounds), so a config that loads
    trains; ``rounds`` is ``num_boost_round``. The rest are the federation's.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=False, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    num_boost_round: int = redeclare("num_boost_round", 30, first_alias="rounds")
    seed: int = redeclare("seed", 7)
    validation_fraction: float = Field(0.2, ge=0, lt=1)
    local_rounds: int = Field(1, ge=1, le=1000, description="trees each organisation adds per round (bagging, cyclic)")
    server_learning_rate: float = Field(1.0, gt=0, le=10, description="beta in theta_global = theta_agg + beta * delta")

    @model_validator(mode="before")
    @classmethod
    def _numbers_from_text(cls, data: Any) -> Any:
        """YAML reads ``1e-3`` as text: numbers written as text (and whole floats for integers) are numbers."""
        if not isinstance(data, dict):
            return data
        spellings = cls.spellings()
        out = dict(data)
        for key, value in data.items():
            name = spellings.get(key)
            if name is None or name not in TrainingParams.model_fields:
                continue
            integer = TrainingParams.model_fields[name].annotation is int
            if isinstance(value, str):
                try:
                    out[key] = int(value) if integer else float(value)
                except ValueError:
                    pass
            elif integer and isinstance(value, float) and value.is_integer():
                out[key] = int(value)
        return out

    @property
    def rounds(self) -> int:
        """Boosting rounds (``num_boost_round``); each is one MLflow step."""
        return self.num_boost_round

    def lightgbm_params(self, objective: str, num_class: int | None) -> dict[str, Any]:
        """The LightGBM parameters these settings mean, for local training."""
        return gbdt_params.lightgbm_params(self, objective, num_class)

    def engine_params(self, objective: str, num_class: int | None, metric: str) -> dict[str, Any]:
        """Parameters of fedmine's own engine (the ``histogram`` strategy): LightGBM's names."""
        return gbdt_params.engine_params(self, objective, num_class, metric)


#: Commands whose releases ``privacy.epsilon`` does not cover: what each one sends exactly.
OUTSIDE_BUDGET = {
    "profile": "exact feature ranges, grid counts and quantiles of every organisation",
    "explain": "exact sums of |SHAP| over every organisation's rows",
}


class PrivacySpec(_Strict):
    """Secure aggregation and differential privacy (docs/privacy.md).

    Both protect what the ``histogram`` strategy sends; ``bagging`` and
    ``cyclic`` send whole trees, which neither can hide.
    """

    secure_aggregation: bool | None = Field(
        None, description="mask every party's histogram messages (default: on for histogram with 2+ organisations)"
    )
    min_parties: int = Field(2, ge=2, description="refuse to train with fewer parties")
    on_party_failure: Literal["stop", "continue"] = "stop"
    epsilon: float | None = Field(None, gt=0, description="differential-privacy budget (histogram only)")
    delta: float = Field(1e-6, gt=0, lt=1)
    gradient_bound: float | None = Field(
        None, gt=0, description="clip gradients to +-bound (DP; regression-like objectives)"
    )
    hessian_bound: float | None = Field(
        None, gt=0, description="clip hessians to [0, bound] (DP; regression-like objectives)"
    )
    dp_method: Literal["leaf", "histogram"] | None = Field(
        None,
        description="under epsilon: leaf (random split candidates, noise on leaf sums only, Newton leaves) or "
        "histogram (noisy histograms of every node); default leaf when every feature declares its range",
    )
    leaf_trees: Literal["cyclic", "random"] = Field(
        "cyclic",
        description="trees of dp_method leaf: cyclic (one feature per round in turn, a leaf per bin) or random "
        "(full trees of max_depth levels with random splits)",
    )
    organisation_metrics: Literal["shared", "own"] | None = Field(
        None,
        description="each organisation's metrics of the global model: sent to the coordinator (shared) or "
        "kept and logged by the organisation (own); default: own when epsilon is set, else shared",
    )
    outside_budget: list[Literal["profile", "explain"]] = Field(
        default_factory=list,
        description="under epsilon: the commands whose exact answers the organisation gives anyway, outside the "
        "budget (profile: ranges, grid counts, quantiles; explain: sums of |SHAP|); default none",
    )
    label_min: float | None = Field(
        None, description="the label's declared lower bound (DP: regression, poisson, tweedie; labels clipped to it)"
    )
    label_max: float | None = Field(
        None, description="the label's declared upper bound (DP: regression, poisson, tweedie; labels clipped to it)"
    )

    @property
    def label_range(self) -> tuple[float, float] | None:
        """``(label_min, label_max)`` when both are declared, else None."""
        if self.label_min is None or self.label_max is None:
            return None
        return (float(self.label_min), float(self.label_max))

    def check_outside_budget(self, command: str) -> None:
        """Under ``epsilon``, ``command`` (``profile``, ``explain``) only when ``outside_budget`` lists it.

        Raises
        ------
        ConfigError
            One line naming the command, what it releases and the key that allows it.
        """
        if self.epsilon is not None and command not in self.outside_budget:
            raise ConfigError(
                f"privacy.epsilon={self.epsilon:g} covers the training only: fedmine {command} releases "
                f"{OUTSIDE_BUDGET[command]} outside the budget; to run it anyway, every organisation's config "
                f"lists it in privacy.outside_budget (allowed: {', '.join(OUTSIDE_BUDGET)})"
            )

    @property
    def shares_organisation_metrics(self) -> bool:
        """Whether organisations send their own metrics and row counts (``organisation_metrics`` resolved)."""
        mode = self.organisation_metrics or ("own" if self.epsilon is not None else "shared")
        return mode == "shared"


#: Training keys a search may not vary: they decide each organisation's train/validation split, made once.
UNTUNABLE = ("seed", "validation_fraction")


class SearchDimension(_Strict):
    """One parameter's search range: ``{low, high}`` (``log: true`` samples its logarithm) or ``{choices: [...]}``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> SearchDimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("give either choices: [...] or low and high (and log), not both")
            if not self.choices:
                raise ValueError("choices is empty; list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (and optionally log: true), or choices: [...]")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low {self.low:g}")
        return self


class TuneSpec(_Strict):
    """``fedmine tune``: the search space over training parameters and how trials are judged (docs/tune.md)."""

    space: dict[str, SearchDimension] = Field(
        description="training parameter (LightGBM name or alias) -> {low, high, log} or {choices}"
    )
    trials: int = Field(20, ge=1, le=10000, description="trials when --trials is not given")
    metric: str | None = Field(None, description="the federation-wide validation metric (default: the primary)")
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = Field(2, ge=0, description="trials finished before any is pruned")
    warmup_rounds: int = Field(5, ge=0, description="rounds of a trial before it can be pruned")
    seed: int | None = Field(None, description="the sampler's seed (default: training.seed)")

    @field_validator("space")
    @classmethod
    def _tunable(cls, v: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
        spellings = TrainingSpec.spellings()
        allowed = sorted(n for n in TrainingSpec.model_fields if n not in UNTUNABLE)
        if not v:
            raise ValueError("empty; declare at least one parameter, e.g. learning_rate: {low: 0.02, high: 0.3}")
        seen: dict[str, str] = {}
        for key, dim in v.items():
            name = spellings.get(str(key))
            if name is None or name in UNTUNABLE:
                why = " (it decides the train/validation split)" if name in UNTUNABLE else ""
                raise ValueError(
                    f"{key}: not a training parameter that can be tuned{why}; allowed: {', '.join(allowed)}"
                )
            if name in seen:
                raise ValueError(f"{seen[name]} and {key} are the same parameter ({name}); give it once")
            seen[name] = str(key)
            field = TrainingSpec.model_fields[name]
            if field.annotation is int and dim.choices is None:
                bounds = (dim.low, dim.high)
                if not all(float(b).is_integer() for b in bounds if b is not None):
                    raise ValueError(f"{key}: an integer parameter; low and high must be integers, got {bounds}")
            if get_origin(field.annotation) is Literal and dim.choices is None:
                raise ValueError(f"{key}: takes one of {', '.join(map(str, get_args(field.annotation)))}; use choices")
        return v


class VerticalSpec(_Strict):
    """Vertical federation (``partition: vertical``): organisations share customers, not columns (docs/vertical.md)."""

    salt: str = Field("", description="text prepended to every id before hashing; the same in every organisation")
    min_shared_rows: int = Field(100, ge=1, description="refuse to train on fewer shared customers")
    publish_thresholds: bool = Field(
        False, description="this organisation lets its split thresholds into one LightGBM model (all must agree)"
    )
    key_bits: int = Field(2048, ge=2048, le=8192, description="Paillier modulus bits of the label holder's key")


class TransportSpec(_Strict):
    """How the coordinator reaches organisations that have an ``endpoint`` (Arrow Flight, mutual TLS)."""

    certs: str = Field("certs", description="folder with ca.pem and NAME.pem/NAME.key (fedmine certs init/issue)")
    coordinator: str = Field("coordinator", description="the coordinator's certificate name")
    allow_insecure: bool = Field(False, description="allow grpc+tcp:// without TLS (local tests only)")
    timeout_seconds: float = Field(600.0, gt=0)
    retries: int = Field(3, ge=0, le=100)
    rejoin_seconds: float = Field(120.0, ge=0, description="how long to wait for a failed party to come back")

    def certs_dir(self, base: Path) -> Path:
        path = Path(self.certs)
        return path if path.is_absolute() else base / path


class TrackingSpec(_Strict):
    """Where MLflow records runs. ``uri`` is any MLflow tracking URI."""

    uri: str = DEFAULT_TRACKING_URI
    artifacts: str | None = None
    register_model: bool = True


class FederationConfig(_Strict):
    """The whole federation: canonical schema, organisations, training, tracking."""

    name: str
    objective: Literal["binary", "multiclass", "regression", "poisson", "tweedie"] = "binary"
    partition: Literal["horizontal", "vertical"] = Field(
        "horizontal", description="horizontal: organisations share columns; vertical: they share customers"
    )
    label: str
    classes: list[Any] | None = None
    features: dict[str, FeatureSpec]
    organisations: dict[str, OrganisationSpec]
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    transport: TransportSpec = Field(default_factory=TransportSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    tune: TuneSpec | None = None
    vertical: VerticalSpec = Field(default_factory=VerticalSpec)

    # Not part of the YAML: where it was read from, to resolve relative sources.
    _path: Path | None = None

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not allowed; allowed: {_NAME_ALLOWED}")
        return v

    @field_validator("features")
    @classmethod
    def _features_not_empty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("no features; list the canonical features (name: {type: ...})")
        return v

    @field_validator("organisations")
    @classmethod
    def _organisations_named(cls, v: dict) -> dict:
        if not v:
            raise ValueError("no organisations; list at least one (name: {source: ...})")
        for name in v:
            if not _NAME.fullmatch(str(name)):
                raise ValueError(f"organisation name {name!r} is not allowed; allowed: {_NAME_ALLOWED}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> FederationConfig:
        if self.partition == "vertical" and "strategy" not in self.training.model_fields_set:
            self.training.strategy = "histogram"  # the only strategy of vertical federation: its default there
        if self.label in self.features:
            raise ValueError(f"label {self.label!r} is also listed under features; the label is not a feature")
        if self.objective == "multiclass" and (not self.classes or len(self.classes) < 3):
            raise ValueError("objective multiclass needs 'classes' with at least 3 values (the label vocabulary)")
        if self.objective == "binary" and self.classes is not None and len(self.classes) != 2:
            raise ValueError(
                f"objective binary needs exactly 2 'classes' [negative, positive]; got {len(self.classes)}"
            )
        if self.objective in ("regression", "poisson", "tweedie") and self.classes is not None:
            raise ValueError(f"'classes' is not allowed with objective {self.objective}")
        max_bin = self.training.max_bin
        for name, feat in self.features.items():
            k = len(feat.categories or ())
            if k > max_bin:
                fix = (
                    f"raise training.max_bin to at least {k}"
                    if k <= MAX_BIN_LIMIT
                    else f"merge categories to at most {MAX_BIN_LIMIT}"
                )
                raise ValueError(
                    f"features.{name}: {k} categories, but training.max_bin is {max_bin} "
                    f"(each category takes one bin); {fix}"
                )
        strategy, privacy = self.training.strategy, self.privacy
        if privacy.secure_aggregation and strategy != "histogram":
            raise ValueError(
                f"privacy.secure_aggregation: masks cover the histogram strategy's sums; training.strategy "
                f"{strategy} sends whole trees or nothing to add (allowed with: histogram)"
            )
        if privacy.epsilon is not None and strategy != "histogram":
            raise ValueError(
                f"privacy.epsilon: differential privacy is accounted for the histogram strategy only, "
                f"not {strategy} (allowed with: histogram)"
            )
        if (
            privacy.epsilon is not None
            and self.objective in ("regression", "poisson", "tweedie")
            and privacy.gradient_bound is None
        ):
            raise ValueError(
                f"privacy.gradient_bound: required with privacy.epsilon and objective {self.objective} "
                f"(gradients are clipped to it so each row's influence is bounded)"
            )
        if privacy.epsilon is not None and self.objective in ("poisson", "tweedie") and privacy.hessian_bound is None:
            raise ValueError(
                f"privacy.hessian_bound: required with privacy.epsilon and objective {self.objective} "
                f"(hessians are clipped to it)"
            )
        if privacy.epsilon is not None and self.partition == "horizontal":
            self._check_dp()
        if self.secure_aggregation and len(self.organisations) < privacy.min_parties:
            raise ValueError(
                f"privacy.min_parties is {privacy.min_parties} but organisations lists {len(self.organisations)}"
            )
        for org, spec in self.organisations.items():
            check_mapping(org, spec, self.features, self.label)
            if spec.compute is not None and strategy not in CLUSTER_STRATEGIES:
                raise ValueError(
                    f"organisations.{org}.compute: an organisation on a Dask cluster trains with "
                    f"training.strategy {', '.join(CLUSTER_STRATEGIES)}, not {strategy} "
                    f"(its rows never gather in one process for LightGBM)"
                )
        if self.tune is not None and self.tune.metric is not None:
            from fedmine.metrics import METRICS

            if self.tune.metric not in METRICS[self.objective]:
                raise ValueError(
                    f"tune.metric: {self.tune.metric!r} is not a metric of objective {self.objective}; "
                    f"allowed: {', '.join(METRICS[self.objective])}"
                )
        if self.partition == "vertical":
            self._check_vertical()
        else:
            for org, spec in self.organisations.items():
                for key in ("id", "features", "holds_label"):
                    if getattr(spec, key) not in (None, False):
                        raise ValueError(
                            f"organisations.{org}.{key}: only with partition: vertical (partition is horizontal)"
                        )
        return self

    def _check_dp(self) -> None:
        """Under ``privacy.epsilon`` nothing leaves an organisation un-noised: what that needs declared."""
        privacy = self.privacy
        if self.objective in ("regression", "poisson", "tweedie"):
            if privacy.label_min is None or privacy.label_max is None:
                raise ValueError(
                    f"privacy.label_min and privacy.label_max: required with privacy.epsilon and objective "
                    f"{self.objective} (labels are clipped to them so the noisy label sum bounds each row)"
                )
            if not privacy.label_min < privacy.label_max:
                raise ValueError(
                    f"privacy.label_min ({privacy.label_min:g}) must be below privacy.label_max ({privacy.label_max:g})"
                )
        undeclared = [
            name
            for name, f in self.features.items()
            if f.type not in ("category", "bool") and (f.min is None or f.max is None)
        ]
        if undeclared:
            raise ValueError(
                f"features.{undeclared[0]}.min and .max: required with privacy.epsilon (bins come from declared "
                f"ranges, never from the rows); undeclared: {', '.join(undeclared)}"
            )
        if privacy.organisation_metrics == "shared":
            raise ValueError(
                "privacy.organisation_metrics: shared is not allowed with privacy.epsilon "
                "(each organisation's exact metrics would leave it un-noised); use own"
            )
        if self.training.early_stopping_rounds:
            raise ValueError(
                "training.early_stopping_rounds: not allowed with privacy.epsilon (validation sums are not "
                "released under differential privacy); set it to 0 or drop privacy.epsilon"
            )

    def _check_vertical(self) -> None:
        """Every organisation has an id column; every feature one holder; exactly one label holder."""
        training = self.training
        if training.strategy != "histogram":
            raise ValueError(
                f"training.strategy: {training.strategy!r} is not allowed with partition: vertical; allowed: histogram"
            )
        if self.privacy.epsilon is not None:
            raise ValueError("privacy.epsilon: differential privacy is not offered with partition: vertical")
        if self.privacy.secure_aggregation:
            raise ValueError(
                "privacy.secure_aggregation: vertical federation sums nothing across organisations "
                "(owners' histograms are encrypted under the label holder's key); leave it unset"
            )
        owner: dict[str, str] = {}
        for org, spec in self.organisations.items():
            if spec.compute is not None:
                raise ValueError(f"organisations.{org}.compute: not offered with partition: vertical")
            if spec.id is None:
                raise ValueError(
                    f"organisations.{org}.id: required with partition: vertical (the column of the shared customer key)"
                )
            if spec.features is None:
                raise ValueError(
                    f"organisations.{org}.features: required with partition: vertical "
                    f"(the canonical features it holds; allowed: {', '.join(self.features)})"
                )
            for name in spec.features:
                if name not in self.features:
                    raise ValueError(
                        f"organisations.{org}.features: {name!r} is not a canonical feature; "
                        f"allowed: {', '.join(self.features)}"
                    )
                if name in owner:
                    raise ValueError(
                        f"features.{name}: claimed by organisations {owner[name]} and {org}; "
                        f"every feature belongs to exactly one organisation"
                    )
                owner[name] = org
        missing = [name for name in self.features if name not in owner]
        if missing:
            raise ValueError(
                f"features.{missing[0]}: held by no organisation; list it under one organisation's features"
            )
        holders = [org for org, spec in self.organisations.items() if spec.holds_label]
        if not holders:
            raise ValueError(
                f"no organisation holds the label {self.label!r}; set holds_label: true on exactly one organisation"
            )
        if len(holders) > 1:
            raise ValueError(
                f"organisations {' and '.join(holders)} both set holds_label: true; "
                f"exactly one organisation holds the label {self.label!r}"
            )
        if len(self.organisations) < 2:
            raise ValueError("partition: vertical needs at least 2 organisations")

    @property
    def label_holder(self) -> str | None:
        """The organisation holding the label (vertical federation), else None."""
        return next((org for org, spec in self.organisations.items() if spec.holds_label), None)

    def feature_holder(self) -> dict[str, str]:
        """Canonical feature -> the organisation holding it (vertical federation)."""
        return {name: org for org, spec in self.organisations.items() for name in spec.features or []}

    def organisation_view(self, org: str) -> FederationConfig:
        """The canonical schema as one vertical organisation maps it: its own features only."""
        own = set(self.organisations[org].features or [])
        view = self.model_copy(update={"features": {n: f for n, f in self.features.items() if n in own}})
        view._path = self._path
        return view

    @property
    def secure_aggregation(self) -> bool:
        """Whether parties mask their messages (default: on under the histogram strategy with 2+ organisations)."""
        on = self.privacy.secure_aggregation
        if self.partition == "vertical":
            return False
        if on is None:
            return self.training.strategy == "histogram" and len(self.organisations) >= 2
        return on

    @property
    def num_class(self) -> int:
        """Trees per round: the number of classes for multiclass, else 1."""
        return len(self.classes or []) if self.objective == "multiclass" else 1

    @property
    def base_dir(self) -> Path:
        """The folder relative sources resolve against: the config file's folder."""
        return self._path.parent if self._path is not None else Path.cwd()


def _set_dotted(raw: dict, dotted: str, value: Any, *, source: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}: a key is empty; use a dotted path such as training.rounds=50")
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: i + 1])} in {source} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value``; the value is read as YAML (``50`` is an int, ``[a, b]`` a list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example training.rounds=50")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def overlay_overrides(path: str | Path) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every value in a YAML overlay file (``--set @FILE``; ``fedmine tune --out``)."""
    where = f"--set @{path}"
    try:
        raw = _read_yaml(Path(path).read_text(), str(path))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{where}: malformed YAML") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a mapping of config keys, e.g. training: {{learning_rate: 0.05}}")
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out.append((prefix, node))

    walk("", raw)
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names allowed at ``loc`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        else:  # a dict[str, Model]: the part is the dict key
            args = getattr(current, "__args__", ())
            current = args[-1] if args else None
        args = getattr(current, "__args__", None)
        if args and not (isinstance(current, type) and issubclass(current, BaseModel)):
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if models and getattr(current, "__origin__", None) is not dict:
                current = models[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.serialization_alias or name for name, f in current.model_fields.items()]
    return []


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line: the file, the dotted key, what is wrong and what is allowed."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(FederationConfig, loc)
        msg = f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        msg = f"{given!r} is not allowed; allowed: {expected.replace(chr(39), '').replace(' or ', ', ')}"
    elif kind == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        if key.startswith("(top level)") or not loc:
            return f"{source}: {msg}"
    else:
        msg = f"{err['msg'].lower()} (got {given!r})"
    more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    return f"{source}: {key}: {msg}{more}"


def config_from_dict(raw: Any, *, source: str = "<config>", path: Path | None = None) -> FederationConfig:
    """Validate a parsed YAML document."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping of keys (name, objective, label, features, organisations, ...); "
            f"got {type(raw).__name__}"
        )
    try:
        cfg = FederationConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    cfg._path = path
    return cfg


def _no_duplicate_keys(node: yaml.Node, source: str, path: tuple[str, ...] = (), seen: set[int] | None = None) -> None:
    """Raise when a mapping of the composed YAML gives a key twice (PyYAML would keep the last silently)."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                where = ".".join((*path, key.value))
                if (key.tag, key.value) in first:
                    raise ConfigError(
                        f"{source}: {where}: duplicate key at line {line} (first at line "
                        f"{first[key.tag, key.value]}); YAML keeps only the last, give it once"
                    )
                first[key.tag, key.value] = line
                _no_duplicate_keys(value, source, (*path, key.value), seen)
            else:
                _no_duplicate_keys(value, source, path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicate_keys(item, source, (*path, str(i)), seen)


def _read_yaml(text: str, source: str) -> Any:
    """One YAML document, refusing duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _no_duplicate_keys(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config(path: str | Path, overrides: list[str] | None = None) -> FederationConfig:
    """Read, override and validate a federation YAML file.

    Parameters
    ----------
    path : the YAML file.
    overrides : ``KEY=VALUE`` strings; KEY is a dotted path (``training.rounds``); ``@FILE`` applies every
        value of a YAML overlay file (:func:`overlay_overrides`).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: config file not found")
    try:
        raw = _read_yaml(path.read_text(), source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{source}: malformed YAML{where}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{source}: the file is empty")
    if isinstance(raw, dict):
        for text in overrides or []:
            pairs = overlay_overrides(text[1:]) if text.startswith("@") else [parse_override(text)]
            for key, value in pairs:
                _set_dotted(raw, key, value, source=source)
    return config_from_dict(raw, source=source, path=path.resolve())


def resolved_dict(cfg: FederationConfig) -> dict[str, Any]:
    """The config with every default filled in, as plain data (logged to MLflow)."""
    return cfg.model_dump(mode="json")
