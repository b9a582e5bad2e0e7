"""The MLflow side: the experiment's kind, links into the UI's training view."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from fedmine.config import load_config
from fedmine.tracking import Tracker, experiments_url, run_url


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
