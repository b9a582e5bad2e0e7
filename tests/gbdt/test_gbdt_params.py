"""Bad parameters fail where they enter, naming the key and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest

from fedmine.errors import ConfigError, DataError
from fedmine.gbdt import make_params, train_pooled


@pytest.mark.parametrize(
    "params, match",
    [
        ({"objective": "lambdarank"}, r"objective must be one of \['binary', 'multiclass', 'regression', 'poisson', 'tweedie'\], got 'lambdarank'"),
        ({"objective": "multiclass"}, r"num_class must be an integer >= 2 for objective 'multiclass', got 1"),
        ({"num_class": 3}, r"num_class must be an integer equal to 1 unless objective is 'multiclass', got 3"),
        ({"num_leaves": 1}, r"num_leaves must be an integer in \[2, 32768\], got 1"),
        ({"max_bin": 256}, r"max_bin must be an integer in \[2, 255\], got 256"),
        ({"max_bin": 3.5}, r"max_bin must be an integer in \[2, 255\], got 3.5"),
        ({"learning_rate": 0}, r"learning_rate must be a number > 0, got 0.0"),
        ({"feature_fraction": 1.5}, r"feature_fraction must be a number in \(0, 1\], got 1.5"),
        ({"bagging_fraction": 0.0}, r"bagging_fraction must be a number in \(0, 1\], got 0.0"),
        ({"lambda_l2": -1}, r"lambda_l2 must be a number >= 0, got -1.0"),
        ({"min_data_in_leaf": "20"}, r"min_data_in_leaf must be an integer >= 0, got '20'"),
        ({"metric": "auc", "objective": "regression"}, r"metric must be one of \['l2', 'rmse'\] for objective 'regression', got 'auc'"),
        ({"tweedie_variance_power": 2.0}, r"tweedie_variance_power must be a number in \[1, 2\), got 2.0"),
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
