"""`fedmine demo --vertical` and a vertical federation's bad input, end to end in fresh processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import fedmine


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_vertical_demo_end_to_end_and_an_intersection_too_small(tmp_path):
    """Prefect, MLflow, Paillier: the gain table of the label holder alone against the vertical model."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    result = fedmine(
        "demo",
        "--vertical",
        "--dir",
        tmp_path / "demo",
        "--tracking-uri",
        uri,
        "--set",
        "training.rounds=2",
        "--summary-json",
        tmp_path / "s.json",
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "local-only auc" in result.stdout and "label holder alone" in result.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["partition"] == "vertical" and summary["rounds"] == 2
    assert list(summary["organisations"]) == ["bank"]
    bank = summary["organisations"]["bank"]
    assert bank["federated"]["auc"] > bank["local_only"]["auc"]  # the other organisations' columns help
    assert summary["privacy"]["param.shared_rows"] == bank["rows"] > 100
    assert Path(summary["model_file"]).is_file()  # the demo's organisations publish their thresholds
    import lightgbm as lgb

    booster = lgb.Booster(model_file=summary["model_file"])
    assert booster.num_trees() == 2 and "plan" in booster.feature_name()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["intersection/shared_rows"] == bank["rows"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/alone/auc")] == [1, 2]

    config = tmp_path / "demo" / "federation.yaml"
    bad = fedmine("run", config, "--set", "vertical.min_shared_rows=100000", "--set", f"tracking.uri={uri}")
    assert bad.returncode == 2
    line = bad.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("error: the organisations share "), bad.stderr[-2000:]
    assert line[0].endswith("vertical.min_shared_rows is 100000")
    (failed,) = [
        r
        for r in client.search_runs([run.info.experiment_id])
        if r.info.run_id != run.info.run_id and not r.data.tags.get("mlflow.parentRunId")
    ]
    assert failed.info.status == "FAILED"


def test_vertical_predict_runs_over_the_party_servers_only(tmp_path, monkeypatch, capsys):
    from fedmine.demo import write_vertical_demo
    from tests.test_cli import call_main

    config = write_vertical_demo(tmp_path / "demo", tracking_uri=f"sqlite:///{tmp_path}/m.db", n=300)
    args = (
        "predict",
        config,
        "--org",
        "bank",
        "--input",
        tmp_path / "demo/data/bank.csv",
        "--output",
        tmp_path / "o.csv",
    )
    code, _, err = call_main(monkeypatch, capsys, *args)
    assert code == 2 and err.strip().splitlines() == [
        "error: organisations.bank.endpoint: not set; fedmine predict on a vertical model runs over the "
        "organisations' party servers (fedmine party serve), each answering its splits for the ids"
    ]
    code, _, err = call_main(monkeypatch, capsys, *args, "--model", "model.txt")
    assert code == 2 and err.strip().startswith("error: --model: not with partition: vertical")
