"""The training flow under a Prefect test server, its records in MLflow, and its failures."""

from __future__ import annotations

import json
import shutil

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fedmine.errors import ConnectorError, DataError
from tests.conftest import DEMO_ROUNDS

pytestmark = pytest.mark.slow


def test_summary_has_documented_keys(trained):
    s = trained["summary"]
    for key in (
        "run_id",
        "strategy",
        "model_file",
        "feature_names",
        "global",
        "organisations",
        "bytes_sent",
        "train_seconds",
        "total_seconds",
    ):
        assert key in s
    assert json.loads(trained["summary_path"].read_text())["run_id"] == s["run_id"]
    assert set(s["organisations"]) == {"bank", "retailer", "telecom"}
    for org in s["organisations"].values():
        assert org["rows"] > 0 and "auc" in org["federated"] and "auc" in org["local_only"]
    model = lgb.Booster(model_file=s["model_file"])
    assert model.feature_name() == s["feature_names"]
    assert model.num_trees() == DEMO_ROUNDS  # histogram: one tree per round (binary)


def test_every_round_is_an_mlflow_step(trained, store):
    client = MlflowClient(store)
    run = client.get_run(trained["summary"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["training.strategy"] == "histogram"
    # a model-training experiment (the UI's training view), not a GenAI one
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    history = client.get_metric_history(run.info.run_id, "eval/auc")
    assert [m.step for m in history] == list(range(1, DEMO_ROUNDS + 1))
    for org in ("bank", "retailer", "telecom"):
        assert len(client.get_metric_history(run.info.run_id, f"eval/{org}/auc")) == DEMO_ROUNDS
    assert len(client.get_metric_history(run.info.run_id, "seconds/round")) == DEMO_ROUNDS
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "report", "model.txt", "summary.json", "schema", "privacy_receipt.json"} <= artifacts
    schema = {a.path for a in client.list_artifacts(run.info.run_id, "schema")}
    assert {"schema/check.json", "schema/check.md"} <= schema
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {
        "report/report.md",
        "report/report.html",
        "report/learning_curves.png",
        "report/federation_gain.png",
        "report/feature_importance.png",
    } <= report


def test_nested_run_per_organisation(trained, store):
    client = MlflowClient(store)
    parent = trained["summary"]["run_id"]
    exp = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["fedmine.organisation"] for r in children) == ["bank", "retailer", "telecom"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert "local_only/auc" in child.data.metrics and "final/auc" in child.data.metrics
        assert len(client.get_metric_history(child.info.run_id, "eval/auc")) == DEMO_ROUNDS


def test_model_registered_under_federation_name(trained, store):
    client = MlflowClient(store, registry_uri=store)
    versions = client.search_model_versions("name = 'retail-credit'")
    assert trained["summary"]["run_id"] in {v.run_id for v in versions}


def test_federation_beats_every_local_only_model(trained):
    # The demo data is built so that each organisation alone has too few rows.
    for org, o in trained["summary"]["organisations"].items():
        assert o["federated"]["auc"] > o["local_only"]["auc"], org


def _broken_copy(demo_config, tmp_path, edit):
    folder = tmp_path / "fed"
    shutil.copytree(demo_config.parent, folder)
    path = folder / "federation.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw, folder)
    path.write_text(yaml.safe_dump(raw))
    return path


def _latest_run(store, name="retail-credit"):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(name)
    return client.search_runs(
        [exp.experiment_id], "tags.`fedmine.strategy` != ''", order_by=["attributes.start_time DESC"], max_results=1
    )[0]


def test_unknown_category_fails_the_run(prefect_harness, demo_config, tmp_path, store):
    def edit(raw, folder):
        bank = pd.read_csv(folder / "data" / "bank.csv", sep=";")
        bank.loc[3, "region"] = "NE"
        bank.to_csv(folder / "data" / "bank.csv", sep=";", index=False)

    from fedmine.flows.train import federated_training

    path = _broken_copy(demo_config, tmp_path, edit)
    with pytest.raises(
        DataError,
        match=r"organisation bank: column 'region' has unknown category 'NE' \(1 rows\); allowed: north, south, east, west",
    ):
        federated_training(str(path), ["training.rounds=2"])
    run = _latest_run(store)
    assert run.info.status == "FAILED"
    assert "unknown category 'NE'" in run.data.tags["fedmine.error"]


def test_a_summary_path_that_cannot_be_written_stops_before_the_run(prefect_harness, demo_config, tmp_path):
    from fedmine.errors import ConfigError
    from fedmine.flows.train import federated_training

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(
        ConfigError,
        match=r"^summary_path /dev/null/s.json: cannot create folder /dev/null: "
        r"it is a file \(Not a directory\)$",
    ):
        federated_training(str(demo_config), ["training.rounds=2", f"tracking.uri={uri}"], "/dev/null/s.json")
    assert not (tmp_path / "mlflow.db").exists()  # no store opened, no run left RUNNING


def test_missing_source_file_fails_the_run(prefect_harness, demo_config, tmp_path, store):
    def edit(raw, folder):
        (folder / "data" / "retailer.parquet").unlink()

    from fedmine.flows.train import federated_training

    path = _broken_copy(demo_config, tmp_path, edit)
    with pytest.raises(ConnectorError, match=r"organisation 'retailer': source 'data/retailer.parquet': .*not found"):
        federated_training(str(path), ["training.rounds=2"])
    assert _latest_run(store).info.status == "FAILED"


def test_postgresql_organisation_end_to_end(prefect_harness, demo_config, tmp_path, store, postgres_url):
    """One organisation reads from a real PostgreSQL table; the federation trains as before."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    bank = pd.read_csv(demo_config.parent / "data" / "bank.csv", sep=";", na_values=["?"])
    bank.to_sql("bank_customers", engine, index=False, if_exists="replace")

    def edit(raw, folder):
        raw["organisations"]["bank"]["source"] = f"{postgres_url}?table=bank_customers"
        raw["organisations"]["bank"]["read"] = {}

    from fedmine.flows.train import federated_training

    path = _broken_copy(demo_config, tmp_path, edit)
    try:
        summary = federated_training(str(path), ["training.rounds=3"])
    finally:  # the session's database holds only the connector tests' tables otherwise (they list them)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("DROP TABLE bank_customers"))
        engine.dispose()
    assert summary["organisations"]["bank"]["rows"] == len(bank)
    assert MlflowClient(store).get_run(summary["run_id"]).info.status == "FINISHED"


def test_prepare_tasks_as_plain_functions(demo_config):
    """The tasks' plain functions (.fn) work without any Prefect machinery."""
    from fedmine.config import load_config
    from fedmine.tasks.data import harmonise_frame, load_source, make_party

    cfg = load_config(demo_config)
    raw = load_source.fn(cfg, "telecom")
    assert "AGE" in raw.columns  # the organisation's own names
    canonical = harmonise_frame.fn(raw, cfg, "telecom")
    assert np.isnan(canonical.X[:, 0]).any()  # -9 marked missing
    party = make_party.fn(canonical, cfg, "telecom")
    d = party.row_counts()
    assert d["n_rows"] + d["n_valid"] == len(raw)


def test_histogram_strategy_through_flow_mlflow_and_predict(
    prefect_harness, demo_config, store, tmp_path, monkeypatch, capsys
):
    from fedmine.cli import main
    from fedmine.flows.train import federated_training

    summary = federated_training(str(demo_config), ["training.strategy=histogram", "training.rounds=15"])
    assert summary["strategy"] == "histogram" and summary["rounds"] == 15
    client = MlflowClient(store)
    run_id = summary["run_id"]
    for key in (
        "train/histogram_exchanges",
        "seconds/party",
        "seconds/aggregation",
        "seconds/split_finding",
        "traffic/bank/bytes_sent",
        "traffic/telecom/bytes_sent",
        "eval/auc",
    ):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(1, 16)), key
    # what each step of the training cost, once per run
    phases = {k: v for k, v in client.get_run(run_id).data.metrics.items() if k.startswith("phase/")}
    steps = {"prepare", "start", "rounds", "baselines", "publish"}
    orgs = {f"{org}/{step}" for org in ("bank", "retailer", "telecom") for step in ("load", "harmonise")}
    assert set(phases) == {f"phase/{k}" for k in steps | orgs}
    assert all(v >= 0 for v in phases.values()) and phases["phase/rounds"] == summary["train_seconds"]
    assert phases["phase/prepare"] >= max(phases[f"phase/{k}"] for k in orgs)
    model = lgb.Booster(model_file=summary["model_file"])
    assert model.num_trees() == 15
    # the privacy receipt: on by default under histogram, shown every round and as an artifact
    assert [m.value for m in client.get_metric_history(run_id, "privacy/secure_aggregation")] == [1.0] * 15
    assert [m.value for m in client.get_metric_history(run_id, "privacy/parties")] == [3.0] * 15
    receipt = json.loads(
        client.download_artifacts(run_id, "privacy_receipt.json", str(tmp_path))
        and (tmp_path / "privacy_receipt.json").read_text()
    )
    assert receipt["receipt"]["secure_aggregation"] is True and receipt["receipt"]["n_parties"] == 3
    assert client.get_run(run_id).data.tags["privacy.secure_aggregation"] == "True"
    assert summary["privacy"]["mechanism"] == "none"
    out = tmp_path / "scored.csv"
    monkeypatch.setattr(
        "sys.argv",
        [
            "fedmine",
            "predict",
            str(demo_config),
            "--model",
            summary["model_file"],
            "--org",
            "retailer",
            "--input",
            str(demo_config.parent / "data" / "retailer.parquet"),
            "--output",
            str(out),
        ],
    )
    main()
    scored = pd.read_csv(out)
    assert scored["prediction"].between(0, 1).all() and len(scored) == summary["organisations"]["retailer"]["rows"]
