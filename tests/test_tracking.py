"""The MLflow side: the experiment's kind, links into the UI's training view."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from fedmine.config import load_config
from fedmine.tracking import Tracker, experiments_url, open_store, run_url


def test_run_url_opens_the_training_view():
    assert run_url("http://127.0.0.1:5000/", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc/model-metrics?workflowType=machine_learning"
    )
    assert (
        run_url("http://h:1", "3", "abc", tab="overview")
        == "http://h:1/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert experiments_url("http://h:1") == "http://h:1/#/experiments?workflowType=machine_learning"


def test_an_experiment_made_before_the_tag_is_tagged_as_training(demo_config, tmp_path):
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    cfg = load_config(demo_config, [f"tracking.uri={uri}"])
    client = MlflowClient(uri)
    exp = client.create_experiment(cfg.name)
    assert "mlflow.experimentKind" not in client.get_experiment(exp).tags
    tracker = Tracker(cfg)
    tracker.start()
    tracker.finish()
    assert tracker.experiment_id == exp
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"


def test_open_store_creates_a_new_store_and_leaves_a_bad_one_to_the_tracker(demo_config, tmp_path):
    """The store is made ready before the training; one that cannot be opened fails where the training starts."""
    import sqlite3

    import pytest

    db = tmp_path / "new" / "mlflow.db"
    open_store(load_config(demo_config, [f"tracking.uri=sqlite:///{db}"]))
    with sqlite3.connect(db) as con:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"experiments", "runs", "metrics", "registered_models", "alembic_version"} <= tables
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    bad = load_config(demo_config, [f"tracking.uri=sqlite:///{garbage}"])
    open_store(bad)  # nothing raised here
    with pytest.raises(Exception, match="file is not a database"):  # as before: where the training starts
        Tracker(bad).start()
