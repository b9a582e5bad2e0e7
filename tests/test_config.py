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
        (
            ["training.strategy=boost"],
            r"federation.yaml: training.strategy: 'boost' is not allowed; allowed: histogram, bagging, cyclic, local",
        ),
        (["training.roundz=3"], r"training.roundz: unknown key; allowed: strategy, rounds, "),
        (["training.rounds=0"], r"training.rounds: must be an integer in \[1, 100000\], got 0"),
        (
            ["objective=ranking"],
            r"objective: 'ranking' is not allowed; allowed: binary, multiclass, regression, poisson, tweedie",
        ),
        (
            ["organisations.bank.colour=red"],
            r"organisations.bank.colour: unknown key; allowed: source, endpoint, read, rename",
        ),
        (
            ["organisations.bank.values.zip={a: b}"],
            r"organisations.bank.values.zip: not a canonical column; allowed: age, defaulted, income, region",
        ),
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
    path.write_text(
        textwrap.dedent("""\
        name: x
        features: {age: {type: float}}
        organisations: {a: {source: a.csv}}
    """)
    )
    with pytest.raises(ConfigError, match=r"f.yaml: label: required key is missing"):
        load_config(path)


def test_two_columns_onto_one_feature(cfg_file):
    with pytest.raises(
        ConfigError, match=r"organisations.bank.rename: customer_age and yearly_income both map to 'age'"
    ):
        load_config(cfg_file, ["organisations.bank.rename={customer_age: age, yearly_income: age}"])


def test_category_needs_vocabulary(cfg_file):
    with pytest.raises(ConfigError, match=r"features.region: .*needs 'categories'"):
        load_config(cfg_file, ["features.region={type: category}"])


def test_num_leaves_beyond_the_engine_is_rejected_at_load(cfg_file):
    """40000 leaves do not fit the engine's node slots: refused when the config loads, not after the run started."""
    with pytest.raises(ConfigError) as exc:
        load_config(cfg_file, ["training.num_leaves=40000"])
    message = str(exc.value)
    assert message == f"{cfg_file}: training.num_leaves: must be an integer in [2, 32768], got 40000"
    assert "\n" not in message
    assert load_config(cfg_file, ["training.num_leaves=32768"]).training.num_leaves == 32768


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.max_bin=256"], r"training.max_bin: must be an integer in \[2, 255\], got 256"),
        (["training.learning_rate=0"], r"training.learning_rate: must be a number in \(0, 1\], got 0.0"),
        (["training.seed=-1"], r"training.seed: must be an integer in \[0, 9223372036854775807\], got -1"),
        (
            ["training.min_data_in_leaf=2147483648"],
            r"training.min_data_in_leaf: must be an integer in \[0, 2147483647\]",
        ),
        (
            ["training.tweedie_variance_power=1"],
            r"training.tweedie_variance_power: must be a number in \(1, 2\), got 1.0",
        ),
        (["training.num_leaves=many"], r"training.num_leaves: must be an integer in \[2, 32768\], got 'many'"),
        (
            ["training.n_estimators=5"],
            r"training: rounds and n_estimators both set rounds \(they are aliases\); give one",
        ),
        (
            ["training.max_leaves=7", "training.num_leaf=9"],
            r"training: num_leaves and max_leaves and num_leaf both set",
        ),
    ],
)
def test_training_errors_name_the_key_and_allowed_range(cfg_file, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cfg_file, overrides)


def test_training_accepts_lightgbm_aliases(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(
        ISSUE_EXAMPLE.replace("  rounds: 30\n", "  n_estimators: 12\n")
        .replace("  learning_rate: 0.1\n", "  eta: 0.05\n")
        .replace(
            "  num_leaves: 31\n",
            "  max_leaves: 15\n  reg_lambda: 0.5\n  subsample: 0.8\n  colsample_bytree: 0.9\n  min_child_samples: 5\n",
        )
    )
    cfg = load_config(path)
    t = cfg.training
    assert (t.rounds, t.num_leaves, t.lambda_l2, t.bagging_fraction) == (12, 15, 0.5, 0.8)
    assert (t.feature_fraction, t.min_data_in_leaf, t.learning_rate) == (0.9, 5, 0.05)
    assert t.lightgbm_params("binary", None)["num_leaves"] == 15
    assert load_config(path, ["training.n_estimators=3"]).training.rounds == 3
    with pytest.raises(ConfigError, match=r"training.max_leaves: must be an integer in \[2, 32768\], got 40000"):
        load_config(path, ["training.max_leaves=40000"])


def test_yaml_numbers_written_as_text_still_load(tmp_path):
    """YAML reads 1e-3 as text; the documented keys keep taking it."""
    path = tmp_path / "f.yaml"
    path.write_text(
        ISSUE_EXAMPLE.replace("  seed: 7\n", "  seed: 7\n  min_sum_hessian_in_leaf: 1e-2\n  lambda_l2: 1e1\n")
    )
    t = load_config(path).training
    assert (t.min_sum_hessian_in_leaf, t.lambda_l2) == (0.01, 10.0)


def test_resolved_config_keeps_rounds_and_reloads(cfg_file):
    from fedmine.config import config_from_dict, resolved_dict

    cfg = load_config(cfg_file, ["training.rounds=12"])
    training = resolved_dict(cfg)["training"]
    assert training["rounds"] == 12 and "num_boost_round" not in training
    assert list(training)[:2] == ["strategy", "rounds"]
    assert config_from_dict(resolved_dict(cfg)).training == cfg.training


def test_defaults_are_unchanged():
    from fedmine.config import TrainingSpec

    t = TrainingSpec()
    assert (t.strategy, t.rounds, t.seed, t.learning_rate, t.num_leaves, t.max_bin) == (
        "histogram",
        30,
        7,
        0.1,
        31,
        255,
    )
    assert t.lightgbm_params("binary", None) == {
        "objective": "binary",
        "learning_rate": 0.1,
        "num_leaves": 31,
        "max_depth": -1,
        "min_data_in_leaf": 20,
        "min_sum_hessian_in_leaf": 1e-3,
        "lambda_l1": 0.0,
        "lambda_l2": 0.0,
        "min_gain_to_split": 0.0,
        "feature_fraction": 1.0,
        "bagging_fraction": 1.0,
        "bagging_freq": 0,
        "max_bin": 255,
        "max_cat_threshold": 32,
        "cat_smooth": 10.0,
        "cat_l2": 10.0,
        "min_data_per_group": 100,
        "max_cat_to_onehot": 4,
        "seed": 7,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 0,
        "verbosity": -1,
    }
    engine = t.engine_params("multiclass", 3, "multi_logloss")
    assert (engine["num_boost_round"], engine["num_class"], engine["seed"], engine["lookahead"]) == (30, 3, 7, 2)


def test_every_training_key_is_documented():
    from fedmine.config import TrainingSpec

    text = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    section = text[text.index("## training") : text.index("## privacy")]
    for name, field in TrainingSpec.model_fields.items():
        assert f"`{field.serialization_alias or name}`" in section, name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.rounds=true"], r"training.rounds: must be an integer in \[1, 100000\], got True$"),
        (["training.local_rounds=true"], r"training.local_rounds: must be an integer in \[1, 1000\], got True$"),
        (
            ["training.validation_fraction=false"],
            r"training.validation_fraction: must be a number in \[0, 1\), got False$",
        ),
        (["privacy.min_parties=true"], r"privacy.min_parties: must be an integer >= 2, got True$"),
        (["transport.retries=true"], r"transport.retries: must be an integer in \[0, 100\], got True$"),
        (["transport.timeout_seconds=true"], r"transport.timeout_seconds: must be a number > 0, got True$"),
        (
            ["organisations.retailer.scale={income: true}"],
            r"organisations.retailer.scale: income: must be a number, got True$",
        ),
        (["features.age={type: float, max: true}"], r"features.age.max: must be a number, got True$"),
    ],
)
def test_yaml_booleans_are_not_numbers(cfg_file, overrides, message):
    """Pydantic's lax mode reads true as 1; a config where a number belongs says true is not one."""
    with pytest.raises(ConfigError, match=message):
        load_config(cfg_file, overrides)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "  rounds: 30\n",
            "  rounds: 30\n  local_rounds: 2\n  rounds: 40\n",
            r"f.yaml: training.rounds: duplicate key at line 22 \(first at line 20\); YAML keeps only the last, give it once$",
        ),
        ("  retailer:\n", "  bank:\n", r"f.yaml: organisations.bank: duplicate key at line 14 \(first at line 9\)"),
        (
            "    scale: {income: 1000}\n",
            '    scale: {income: 1000, "income": 10}\n',
            r"f.yaml: organisations.retailer.scale.income: duplicate key at line 17 \(first at line 17\)",
        ),
        (
            "name: retail-credit ",
            "name: x\nname: retail-credit ",
            r"f.yaml: name: duplicate key at line 2 \(first at line 1\)",
        ),
    ],
)
def test_duplicate_yaml_keys_name_the_key_and_line(tmp_path, old, new, message):
    path = tmp_path / "f.yaml"
    path.write_text(ISSUE_EXAMPLE.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(
        ISSUE_EXAMPLE.replace("  bank:\n", "  bank: &bank\n", 1).replace(
            "  retailer:\n    source: data/retailer.parquet\n",
            "  retailer:\n    <<: *bank\n    source: data/retailer.parquet\n",
        )
    )
    assert load_config(path).organisations["retailer"].read == {"sep": ";", "na_values": ["?", "-9"]}


@pytest.mark.parametrize("name", ["bank\\n", "bank ", " bank", "ba\\tnk", "bank\\x00"])
def test_organisation_names_with_whitespace_or_control_characters(tmp_path, name):
    path = tmp_path / "f.yaml"
    path.write_text(ISSUE_EXAMPLE.replace("  bank:\n", f'  "{name}":\n', 1))
    shown = repr(name.encode().decode("unicode_escape"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == (
        f"{path}: organisations: organisation name {shown} is not allowed; allowed: letters, digits, '.', '_' or '-', "
        "starting with a letter or digit ([A-Za-z0-9][A-Za-z0-9_.-]*)"
    )
    with pytest.raises(ConfigError, match=r"name: 'retail-credit\\n' is not allowed; allowed: letters"):
        load_config(path, ['name="retail-credit\\n"'])


def test_more_categories_than_max_bin(cfg_file):
    vocabulary = "[" + ", ".join(f"c{i}" for i in range(40)) + "]"
    with pytest.raises(ConfigError) as exc:
        load_config(cfg_file, [f"features.region={{type: category, categories: {vocabulary}}}", "training.max_bin=32"])
    assert str(exc.value) == (
        f"{cfg_file}: features.region: 40 categories, but training.max_bin is 32 "
        "(each category takes one bin); raise training.max_bin to at least 40"
    )
    assert (
        load_config(
            cfg_file, [f"features.region={{type: category, categories: {vocabulary}}}", "training.max_bin=40"]
        ).training.max_bin
        == 40
    )
    vocabulary = "[" + ", ".join(f"c{i}" for i in range(300)) + "]"
    with pytest.raises(
        ConfigError,
        match=r"features.region: 300 categories, but training.max_bin is 255 "
        r"\(each category takes one bin\); merge categories to at most 255$",
    ):
        load_config(cfg_file, [f"features.region={{type: category, categories: {vocabulary}}}"])


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        (
            "{space: {learning_rat: {low: 0.1, high: 0.2}}}",
            r"tune.space: learning_rat: not a training parameter that can be tuned; allowed: bagging_fraction, ",
        ),
        (
            "{space: {seed: {choices: [1, 2]}}}",
            r"tune.space: seed: not a training parameter that can be tuned \(it decides the train/validation split\)",
        ),
        (
            "{space: {learning_rate: {low: 0.3, high: 0.2}}}",
            r"tune.space.learning_rate: low \(0.3\) must be below high \(0.2\)$",
        ),
        (
            "{space: {learning_rate: {low: 0, high: 1, log: true}}}",
            r"tune.space.learning_rate: log: true needs low > 0, got low 0$",
        ),
        (
            "{space: {learning_rate: {low: 0.1}}}",
            r"tune.space.learning_rate: needs low and high \(and optionally log: true\), or choices",
        ),
        ("{space: {learning_rate: {choices: []}}}", r"tune.space.learning_rate: choices is empty"),
        ("{space: {learning_rate: {choices: [0.1], low: 0.1}}}", r"give either choices: \[...\] or low and high"),
        (
            "{space: {learning_rate: {low: 0.1, high: 0.2, step: 3}}}",
            r"tune.space.learning_rate.step: unknown key; allowed: low, high, log, choices$",
        ),
        (
            "{space: {num_leaves: {low: 3.5, high: 9}}}",
            r"tune.space: num_leaves: an integer parameter; low and high must be integers",
        ),
        (
            "{space: {strategy: {low: 1, high: 2}}}",
            r"tune.space: strategy: takes one of histogram, bagging, cyclic, local; use choices$",
        ),
        (
            "{space: {rounds: {low: 2, high: 5}, num_boost_round: {low: 2, high: 5}}}",
            r"rounds and num_boost_round are the same parameter \(num_boost_round\); give it once",
        ),
        ("{space: {}}", r"tune.space: empty; declare at least one parameter"),
        (
            "{metric: rmse, space: {learning_rate: {low: 0.1, high: 0.2}}}",
            r"tune.metric: 'rmse' is not a metric of objective binary; allowed: auc, binary_logloss, binary_error$",
        ),
        (
            "{pruner: hyperband, space: {learning_rate: {low: 0.1, high: 0.2}}}",
            r"tune.pruner: 'hyperband' is not allowed; allowed: median, none$",
        ),
        (
            "{trials: 0, space: {learning_rate: {low: 0.1, high: 0.2}}}",
            r"tune.trials: input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_tune_sections_fail_with_one_line_naming_the_key(cfg_file, tune, message):
    cfg_file.write_text(ISSUE_EXAMPLE + f"tune: {tune}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(cfg_file)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{cfg_file}: ")


def test_an_overlay_file_applies_every_value_it_holds(cfg_file, tmp_path):
    overlay = tmp_path / "best.yaml"
    overlay.write_text("# from fedmine tune\ntraining:\n  learning_rate: 0.0625\n  num_leaves: 19\n")
    cfg = load_config(cfg_file, [f"@{overlay}", "training.rounds=12"])
    assert (cfg.training.learning_rate, cfg.training.num_leaves, cfg.training.rounds) == (0.0625, 19, 12)
    with pytest.raises(ConfigError, match=r"^--set @.*nope.yaml: cannot read it: No such file or directory$"):
        load_config(cfg_file, [f"@{tmp_path / 'nope.yaml'}"])
    overlay.write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"--set @.*best.yaml: expected a mapping of config keys"):
        load_config(cfg_file, [f"@{overlay}"])


DP = ["training.strategy=histogram", "privacy.epsilon=1"]
DECLARED = ["features.age.min=0", "features.age.max=120", "features.income.min=0", "features.income.max=1e7"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (DP, r"features.age.min and .max: required with privacy.epsilon .*undeclared: age, income$"),
        (
            [*DP, *DECLARED, "objective=regression", "privacy.gradient_bound=1"],
            r"privacy.label_min and privacy.label_max: required with privacy.epsilon and objective regression",
        ),
        (
            [
                *DP,
                *DECLARED,
                "objective=regression",
                "privacy.gradient_bound=1",
                "privacy.label_min=3",
                "privacy.label_max=1",
            ],
            r"privacy.label_min \(3\) must be below privacy.label_max \(1\)",
        ),
        (
            [*DP, *DECLARED, "privacy.organisation_metrics=shared"],
            r"privacy.organisation_metrics: shared is not allowed",
        ),
        (
            [*DP, *DECLARED, "training.early_stopping_rounds=5"],
            r"training.early_stopping_rounds: not allowed with privacy",
        ),
    ],
)
def test_under_epsilon_what_would_leave_un_noised_is_a_config_error(cfg_file, overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(cfg_file, overrides)
    assert "\n" not in str(caught.value)


def test_under_epsilon_a_declared_schema_loads(cfg_file):
    cfg = load_config(
        cfg_file,
        [
            *DP,
            *DECLARED,
            "objective=regression",
            "privacy.gradient_bound=1",
            "privacy.label_min=0",
            "privacy.label_max=1",
        ],
    )
    assert cfg.privacy.label_range == (0.0, 1.0) and not cfg.privacy.shares_organisation_metrics
