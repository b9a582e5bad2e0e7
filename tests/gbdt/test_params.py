"""Bad parameters fail where they enter, naming the key and what is allowed; the parameters are declared once."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest

from fedmine.config import config_from_dict
from fedmine.errors import ConfigError, DataError
from fedmine.gbdt import make_params, train_pooled
from fedmine.gbdt.params import (
    ALIASES,
    LIGHTGBM_KEYS,
    MAX_LEAVES,
    Params,
    TrainingParams,
    _bounds,
    check_lightgbm_params,
    lightgbm_params,
)
from fedmine.gbdt.rows import NODE_STRIDE
from fedmine.gbdt.splitting import SplitRules


@pytest.mark.parametrize(
    "params, match",
    [
        (
            {"objective": "lambdarank"},
            r"objective must be one of \['binary', 'multiclass', 'regression', 'poisson', 'tweedie'\], got 'lambdarank'",
        ),
        ({"objective": "multiclass"}, r"num_class must be an integer >= 2 for objective 'multiclass', got 1"),
        ({"num_class": 3}, r"num_class must be an integer equal to 1 unless objective is 'multiclass', got 3"),
        ({"num_leaves": 1}, r"num_leaves must be an integer in \[2, 32768\], got 1"),
        ({"max_bin": 256}, r"max_bin must be an integer in \[2, 255\], got 256"),
        ({"max_bin": 3.5}, r"max_bin must be an integer in \[2, 255\], got 3.5"),
        ({"learning_rate": 0}, r"learning_rate must be a number in \(0, 1\], got 0.0"),
        ({"learning_rate": 1.5}, r"learning_rate must be a number in \(0, 1\], got 1.5"),
        ({"feature_fraction": 1.5}, r"feature_fraction must be a number in \(0, 1\], got 1.5"),
        ({"bagging_fraction": 0.0}, r"bagging_fraction must be a number in \(0, 1\], got 0.0"),
        ({"lambda_l2": -1}, r"lambda_l2 must be a number >= 0, got -1.0"),
        ({"min_data_in_leaf": "20"}, r"min_data_in_leaf must be an integer in \[0, 2147483647\], got '20'"),
        ({"min_child_samples": True}, r"min_child_samples must be an integer in \[0, 2147483647\], got True"),
        ({"num_boost_round": 100_001}, r"num_boost_round must be an integer in \[1, 100000\], got 100001"),
        ({"max_depth": -2}, r"max_depth must be an integer in \[-1, 2147483647\] \(-1 or 0: no limit\), got -2"),
        ({"seed": -1}, r"seed must be an integer in \[0, 9223372036854775807\], got -1"),
        ({"min_sum_hessian_in_leaf": float("nan")}, r"min_sum_hessian_in_leaf must be a number >= 0, got nan"),
        (
            {"metric": "auc", "objective": "regression"},
            r"metric must be one of \['l2', 'rmse'\] for objective 'regression', got 'auc'",
        ),
        ({"tweedie_variance_power": 2.0}, r"tweedie_variance_power must be a number in \(1, 2\), got 2.0"),
        ({"tweedie_variance_power": 1}, r"tweedie_variance_power must be a number in \(1, 2\), got 1.0"),
        ({"packed": "yes"}, r"packed must be one of \['auto', 'off'\], got 'yes'"),
        ({"num_leafs": 31}, r"unknown parameter 'num_leafs'; allowed: \[.*'num_leaves'.*\]"),
    ],
)
def test_bad_params_name_the_key_and_allowed_values(params, match):
    with pytest.raises(ConfigError, match=match):
        make_params(params)


def test_aliases_and_ignored_keys():
    p = make_params({"eta": 0.3, "num_leaf": 7, "verbose": -1, "n_estimators": 5, "subsample": 0.5})
    assert (p.learning_rate, p.num_leaves, p.num_boost_round, p.bagging_fraction) == (0.3, 7, 5, 0.5)
    assert make_params({"objective": "binary"}).metric == "binary_logloss"


def test_bad_labels_are_data_errors():
    X = np.zeros((10, 2))
    with pytest.raises(DataError, match="labels of objective 'binary' must be 0 or 1"):
        train_pooled(X, np.arange(10.0), {"objective": "binary"})
    with pytest.raises(DataError, match=r"labels of objective 'multiclass' must be integers in \[0, 3\)"):
        train_pooled(X, np.arange(10.0), {"objective": "multiclass", "num_class": 3})
    with pytest.raises(DataError, match="labels of objective 'poisson' must be finite and >= 0"):
        train_pooled(X, -np.ones(10), {"objective": "poisson"})


def test_too_many_categories_is_a_data_error():
    X = np.arange(300, dtype=float)[:, None]
    with pytest.raises(DataError, match="categorical feature 0 has 300 categories; at most max_bin=255"):
        train_pooled(X, np.zeros(300), {"objective": "regression"}, categorical=[0], n_grid=512)


# -- one declaration: aliases, bounds, defaults ------------------------------------------------------------------

FIELDS = TrainingParams.model_fields


def spellings_of(name: str) -> list[str]:
    return [a for a, n in TrainingParams.spellings().items() if n == name]


def a_valid_value(name: str):
    """A value other than the default that every bound allows."""
    field = FIELDS[name]
    lo, lo_open, hi, hi_open = _bounds(field)
    candidates = [1, 3, 5] if field.annotation is int else [0.3, 0.6, 1.3, 1.7, 2.5]
    for value in candidates:
        above = lo is None or (value > lo if lo_open else value >= lo)
        below = hi is None or (value < hi if hi_open else value <= hi)
        if above and below and value != field.default:
            return value
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_alias_sets_the_same_parameter(name):
    value = a_valid_value(name)
    assert value != FIELDS[name].default
    for alias in spellings_of(name):
        if name == "num_threads":  # not part of the engine's model; checked, then dropped
            assert make_params({alias: value}) == make_params({})
            continue
        assert getattr(make_params({alias: value}), name) == value, alias
        assert getattr(TrainingParams.model_validate({alias: value}), name) == value, alias


def test_familiar_aliases():
    p = make_params(
        {
            "num_iterations": 7,
            "max_leaves": 9,
            "min_child_samples": 3,
            "reg_lambda": 0.5,
            "subsample": 0.8,
            "colsample_bytree": 0.7,
            "shrinkage_rate": 0.2,
            "random_state": 11,
        }
    )
    assert (p.num_boost_round, p.num_leaves, p.min_data_in_leaf, p.lambda_l2) == (7, 9, 3, 0.5)
    assert (p.bagging_fraction, p.feature_fraction, p.learning_rate, p.seed) == (0.8, 0.7, 0.2, 11)
    for alias in ("n_estimators", "num_boost_round", "num_round"):
        assert make_params({alias: 5}).num_boost_round == 5
    assert ALIASES["eta"] == "learning_rate" and ALIASES["n_estimators"] == "num_boost_round"


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ({"num_leaves": 31, "max_leaves": 63}, "num_leaves and max_leaves"),
        ({"n_estimators": 5, "num_iterations": 5}, "n_estimators and num_iterations"),  # even when they agree
        ({"lambda_l2": 1.0, "reg_lambda": 2.0}, "lambda_l2 and reg_lambda"),
        ({"eta": 0.1, "shrinkage_rate": 0.2}, "eta and shrinkage_rate"),
    ],
)
def test_conflicting_aliases_are_rejected_naming_both(given, names):
    with pytest.raises(ConfigError, match=f"{names} both set"):
        make_params(given)
    with pytest.raises(ConfigError, match=f"training: {names} both set"):
        config_from_dict(config_with(given))


def test_aliases_agree_with_lightgbm():
    """Every alias the engine accepts is an alias of the same parameter in LightGBM."""
    lgb = pytest.importorskip("lightgbm")
    table = lgb.basic._ConfigAliases._get_all_param_aliases()
    canonical = {alias: name for name, aliases in table.items() for alias in aliases}
    for spelling, name in TrainingParams.spellings().items():
        if name == "lookahead":  # fedmine's own
            continue
        lgb_name = canonical.get(name) or canonical[{"early_stopping_rounds": "early_stopping_round"}.get(name, name)]
        assert canonical.get(spelling) == lgb_name, (spelling, name)


def config_with(training: dict) -> dict:
    return {
        "name": "edges",
        "label": "y",
        "features": {"a": {"type": "float"}},
        "organisations": {"o": {"source": "o.csv"}},
        "training": dict(training),
    }


def edge_values(name: str):
    """Values at and just past every bound of a field: (value, inside)."""
    field = FIELDS[name]
    lo, lo_open, hi, hi_open = _bounds(field)
    out = []
    if field.annotation is int:
        if lo is not None:
            out += [(lo, True), (lo - 1, False)]
        if hi is not None:
            out += [(hi, True), (hi + 1, False)]
        out += [(True, False), (2.5, False)]
    else:
        if lo is not None:
            out += [
                (float(lo), not lo_open),
                (math.nextafter(lo, -math.inf), False),
                (math.nextafter(lo, math.inf), True),
            ]
        if hi is not None:
            out += [
                (float(hi), not hi_open),
                (math.nextafter(hi, math.inf), False),
                (math.nextafter(hi, -math.inf), True),
            ]
        if hi is None:
            out += [(1e300, True)]
        out += [(float("nan"), False), (False, False)]
    return out


@pytest.mark.parametrize("name", list(FIELDS))
def test_config_and_engine_accept_and_reject_the_same_values(name):
    """Walk every field's bounds: config validation and make_params agree on each edge, with one message."""
    for value, inside in edge_values(name):
        if inside:
            make_params({name: value})
            assert getattr(config_from_dict(config_with({name: value})).training, name) == value
            continue
        with pytest.raises(ConfigError) as engine:
            make_params({name: value})
        key = "rounds" if name == "num_boost_round" else name
        with pytest.raises(ConfigError) as config:
            config_from_dict(config_with({key: value}))
        engine_msg, config_msg = str(engine.value), str(config.value)
        assert engine_msg.startswith(f"{name} must be "), engine_msg
        assert config_msg == f"<config>: training.{key}: {engine_msg[len(name) + 1 :]}", (config_msg, engine_msg)
        assert "\n" not in config_msg


def test_num_leaves_bound_is_what_node_slots_allow():
    assert FIELDS["num_leaves"].metadata[-1].le == MAX_LEAVES == 32768
    assert 2 * MAX_LEAVES * (1 + FIELDS["lookahead"].metadata[-1].le) <= NODE_STRIDE
    assert make_params({"num_leaves": 32768}).num_leaves == 32768
    with pytest.raises(ConfigError, match=r"num_leaves must be an integer in \[2, 32768\], got 40000"):
        make_params({"num_leaves": 40000})


def test_defaults_are_declared_once():
    """Params, SplitRules and TrainingParams have the same defaults; Params' default types are what the wire expects."""
    p = Params()
    assert make_params({}) == dataclasses.replace(p, metric="binary_logloss")
    for f in dataclasses.fields(Params):
        if f.name in FIELDS:
            assert f.default == FIELDS[f.name].default, f.name
            assert type(f.default) is FIELDS[f.name].annotation, f.name
    for f in dataclasses.fields(SplitRules):
        assert f.default == getattr(p, f.name), f.name
    assert p.rules == SplitRules()


def test_local_lightgbm_params_are_an_allow_list():
    spec = TrainingParams()
    for objective, num_class in (("binary", None), ("multiclass", 3), ("poisson", None), ("tweedie", None)):
        params = lightgbm_params(spec, objective, num_class)
        assert set(params) <= set(LIGHTGBM_KEYS)
        assert check_lightgbm_params(params) == params
    assert lightgbm_params(spec, "multiclass", 3)["num_class"] == 3
    assert "tweedie_variance_power" in lightgbm_params(spec, "tweedie", None)
    network_or_files = {
        "machines",
        "machine_list_filename",
        "local_listen_port",
        "num_machines",
        "tree_learner",
        "time_out",
        "input_model",
        "output_model",
        "output_result",
        "forcedsplits_filename",
        "forcedbins_filename",
        "saved_feature_importance_type",
        "data",
        "valid",
        "config",
        "initscore_filename",
        "convert_model",
        "gpu_platform_id",
        "device_type",
    }
    assert not network_or_files & set(LIGHTGBM_KEYS)
    base = lightgbm_params(spec, "binary", None)
    for key, value in (("machines", "10.0.0.1:12400"), ("output_model", "/tmp/x.txt"), ("tree_learner", "data")):
        with pytest.raises(ConfigError, match=f"LightGBM parameter '{key}' is not allowed in local training"):
            check_lightgbm_params(dict(base, **{key: value}))
    with pytest.raises(ConfigError, match=r"num_leaves must be an integer in \[2, 32768\], got 40000"):
        check_lightgbm_params(dict(base, num_leaves=40000))
    with pytest.raises(ConfigError, match=r"objective must be one of"):
        check_lightgbm_params(dict(base, objective="lambdarank"))
    with pytest.raises(ConfigError, match=r"metric must be among"):
        check_lightgbm_params(dict(base, metric="ndcg"))
    assert check_lightgbm_params(dict(base, metric=["auc", "binary_logloss"]))["metric"] == ["auc", "binary_logloss"]


def test_params_module_stays_engine_level():
    code = (
        "import sys, fedmine.gbdt.params\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'mlflow') or m.startswith(("
        "'fedmine.config', 'fedmine.party', 'fedmine.coordinator'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
