"""The federation config: the documented shape loads; every error names file, key and what is allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fedmine.config import load_config
from fedmine.errors import ConfigError

ISSUE_EXAMPLE = """\
name: retail-credit            # MLflow experiment and registered-model name
objective: binary              # binary | multiclass | regression
label: defaulted
features:                      # the canonical schema
  age: {type: float}
  income: {type: float}
  region: {type: category, categories: [north, south, east, west]}
organisations:
  bank:
    source: data/bank.csv
    read: {sep: ";", na_values: ["?", "-9"]}
    rename: {customer_age: age, yearly_income: income, default_flag: defaulted}
    values: {region: {N: north, S: south, E: east, W: west}}
  retailer:
    source: data/retailer.parquet
    rename: {age_years: age, income_k: income, late_payer: defaulted}
    scale: {income: 1000}
training:
  strategy: bagging
  rounds: 30
  learning_rate: 0.1
  num_leaves: 31
  validation_fraction: 0.2
  seed: 7
tracking:
  uri: sqlite:///mlruns/mlflow.db
"""


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "federation.yaml"
    path.write_text(ISSUE_EXAMPLE)
    return path


def test_documented_shape_loads(cfg_file):
    cfg = load_config(cfg_file)
    assert cfg.name == "retail-credit"
    assert list(cfg.organisations) == ["bank", "retailer"]
    assert cfg.organisations["bank"].read == {"sep": ";", "na_values": ["?", "-9"]}
    assert cfg.organisations["retailer"].scale == {"income": 1000}
    assert cfg.training.rounds == 30 and cfg.training.strategy == "bagging"
    assert cfg.base_dir == cfg_file.parent.resolve()
    assert cfg.num_class == 1


def test_set_overrides_by_dotted_path(cfg_file):
    cfg = load_config(cfg_file, ["training.rounds=50", "training.strategy=cyclic", "tracking.uri=sqlite:///x.db"])
    assert cfg.training.rounds == 50
    assert cfg.training.strategy == "cyclic"
    assert cfg.tracking.uri == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.strategy=boost"], r"federation.yaml: training.strategy: 'boost' is not allowed; allowed: histogram, bagging, cyclic, local"),
        (["training.roundz=3"], r"training.roundz: unknown key; allowed: strategy, rounds, "),
        (["training.rounds=0"], r"training.rounds: input should be greater than or equal to 1"),
        (["objective=ranking"], r"objective: 'ranking' is not allowed; allowed: binary, multiclass, regression, poisson, tweedie"),
        (["organisations.bank.colour=red"], r"organisations.bank.colour: unknown key; allowed: source, endpoint, read, rename"),
        (["organisations.bank.values.zip={a: b}"], r"organisations.bank.values.zip: not a canonical column; allowed: age, defaulted, income, region"),
        (["training.validation_fraction=1.5"], r"training.validation_fraction: input should be less than 1"),
        (["name=has space"], r"name: 'has space' is not allowed"),
        (["objective=multiclass"], r"objective multiclass needs 'classes'"),
        (["training.rounds"], r"--set 'training.rounds': expected KEY=VALUE"),
    ],
)
def test_bad_config_names_file_key_and_allowed(cfg_file, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cfg_file, overrides)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nfeatures: {age: {type: float}\norganisations: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: malformed YAML at line \d+, column \d+"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_required_key_missing(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(textwrap.dedent("""\
        name: x
        features: {age: {type: float}}
        organisations: {a: {source: a.csv}}
    """))
    with pytest.raises(ConfigError, match=r"f.yaml: label: required key is missing"):
        load_config(path)


def test_two_columns_onto_one_feature(cfg_file):
    with pytest.raises(ConfigError, match=r"organisations.bank.rename: customer_age and yearly_income both map to 'age'"):
        load_config(cfg_file, ["organisations.bank.rename={customer_age: age, yearly_income: age}"])


def test_category_needs_vocabulary(cfg_file):
    with pytest.raises(ConfigError, match=r"features.region: .*needs 'categories'"):
        load_config(cfg_file, ["features.region={type: category}"])
