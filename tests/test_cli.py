"""The fedmine command: help, the demo as a subprocess, bad input, predict, and the MLflow UI."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from fedmine.cli import main
from tests.conftest import DEMO_ROUNDS

FEDMINE = [sys.executable, "-m", "fedmine.cli"]


def fedmine(*args, cwd=None, timeout=300):
    """Run the command in a fresh process with a user's environment (no test logging settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_LOGGING", "MLFLOW_LOGGING"))}
    return subprocess.run(
        [*FEDMINE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )


def call_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["fedmine", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        "run",
        "demo",
        "predict",
        "explain",
        "tune",
        "ui",
        "schedule",
        "profile",
        "schema check",
        "schema suggest",
        "party serve",
        "certs init",
        "certs issue",
    ],
)
def test_every_command_has_help(command):
    result = fedmine(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


@pytest.mark.slow
def test_demo_subprocess_smoke(tmp_path):
    """`fedmine demo` end to end in a fresh process: data, Prefect, MLflow, summary."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    result = fedmine(
        "demo",
        "--dir",
        tmp_path / "demo",
        "--tracking-uri",
        uri,
        "--set",
        "training.rounds=3",
        "--summary-json",
        tmp_path / "s.json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "local-only auc" in result.stdout and "federated auc" in result.stdout
    assert "fedmine ui" in result.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rounds"] == 3 and summary["strategy"] == "histogram"
    assert summary["privacy"]["secure_aggregation"] is True
    assert Path(summary["model_file"]).is_file()
    # The strategies side by side: local-only, histogram and bagging for every organisation and the federation.
    table = result.stdout[result.stdout.index("validation auc by strategy") :].splitlines()
    assert table[1].split() == ["organisation", "rows", "local-only", "histogram", "bagging"]
    rows = {line.split()[0]: line.split()[1:] for line in table[3:7]}
    assert set(rows) == {"bank", "retailer", "telecom", "federation"}
    assert all(len(v) == 4 for k, v in rows.items() if k != "federation") and len(rows["federation"]) == 3
    assert float(rows["federation"][1]) == pytest.approx(summary["global"]["auc"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("name: x\nfeatures: [\n", [], r"malformed YAML at line"),
        (
            None,
            ["--set", "training.strategy=boosting"],
            r"training.strategy: 'boosting' is not allowed; allowed: histogram, bagging, cyclic, local",
        ),
        (None, ["--set", "training.nope=1"], r"training.nope: unknown key; allowed: strategy, rounds"),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, demo_config, content, args, message):
    import re

    path = tmp_path / "f.yaml"
    path.write_text(content if content is not None else demo_config.read_text())
    result = fedmine("run", path, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), result.stderr


@pytest.mark.slow
def test_bad_data_exits_2_and_marks_run_failed(demo_config, tmp_path):
    """In a fresh process: NaN labels in one organisation -> one line, exit 2, the MLflow run FAILED."""
    import sqlite3

    folder = tmp_path / "fed"
    shutil.copytree(demo_config.parent, folder)
    with sqlite3.connect(folder / "data" / "telecom.db") as con:
        con.execute("UPDATE customers SET bad_debt = NULL WHERE rowid IN (5, 9)")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = fedmine("run", folder / "federation.yaml", "--set", "training.rounds=2", "--set", f"tracking.uri={uri}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: organisation telecom: label 'defaulted' is missing in 2 rows (first at row 4); "
        "drop those rows or map them under values:"
    ]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("retail-credit")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_run_with_a_summary_that_cannot_be_written_exits_2_before_any_run(demo_config, tmp_path):
    """In a fresh process: the summary's folder is checked before Prefect starts; no MLflow run is left RUNNING."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = fedmine("run", demo_config, "--set", f"tracking.uri={uri}", "--summary-json", "/proc/x/out.json")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --summary-json /proc/x/out.json: cannot create folder /proc/x: No such file or directory"
    ]
    assert not (tmp_path / "mlflow.db").exists()  # no store, so no run, was created


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["predict", "{config}", "--model", "x", "--org", "bank", "--input", "x.csv", "--output", "/dev/null/x.csv"],
            "--output /dev/null/x.csv: cannot create folder /dev/null: it is a file (Not a directory)",
        ),
        (["demo", "--dir", "{file}"], "--dir {file}: cannot create folder {file}: it is a file (Not a directory)"),
        (
            ["demo", "--dir", "{tmp}/demo", "--summary-json", "{file}/s.json"],
            "--summary-json {file}/s.json: cannot create folder {file}: it is a file (Not a directory)",
        ),
        (
            ["profile", "{config}", "--output", "{file}/report"],
            "--output {file}/report: cannot create folder {file}/report: {file} is a file (Not a directory)",
        ),
        (
            ["schema", "check", "{config}", "--json", "{tmp}"],
            "--json {tmp}: is a folder (Is a directory); give a file name",
        ),
        (
            ["schema", "suggest", "{config}", "--org", "bank", "--output", "/proc/x/m.yaml"],
            "--output /proc/x/m.yaml: cannot create folder /proc/x: No such file or directory",
        ),
    ],
)
def test_an_output_that_cannot_be_created_exits_2_with_one_line(
    demo_config, tmp_path, monkeypatch, capsys, args, message
):
    file = tmp_path / "taken"
    file.write_text("a file")
    names = {"config": demo_config, "file": file, "tmp": tmp_path}
    code, _, err = call_main(monkeypatch, capsys, *[a.format(**names) for a in args])
    assert code == 2, err
    assert err.strip().splitlines() == [f"error: {message.format(**names)}"]
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_exit_codes_of_subcommands_and_usage_errors_reach_the_shell(tmp_path):
    """`fedmine schema check` exits as the command says; a bad option value is a usage error, not a traceback."""
    result = fedmine("schema", "check", tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.yaml'}: config file not found"]
    result = fedmine("certs", "init", tmp_path / "c", "--federation", "x", "--days", "soon")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Invalid value for '--days'" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_predict_scores_rows_in_order(trained, tmp_path, monkeypatch, capsys):
    cfg_path = trained["config"]
    raw = pd.read_csv(cfg_path.parent / "data" / "bank.csv", sep=";")
    new_rows = raw.drop(columns=["default_flag"]).sample(frac=1.0, random_state=3).head(50)
    new_rows.to_csv(tmp_path / "new.csv", sep=";", index=False)
    out = tmp_path / "scored.csv"
    code, _, err = call_main(
        monkeypatch,
        capsys,
        "predict",
        cfg_path,
        "--model",
        trained["summary"]["model_file"],
        "--org",
        "bank",
        "--input",
        tmp_path / "new.csv",
        "--output",
        out,
    )
    assert code == 0, err
    scored = pd.read_csv(out)
    assert list(scored["customer_id"]) == list(new_rows["customer_id"])
    assert scored["prediction"].between(0, 1).all()
    # the same as the model applied to the harmonised rows
    from fedmine.config import load_config
    from fedmine.schema import harmonise_features

    cfg = load_config(cfg_path)
    frame = pd.read_csv(tmp_path / "new.csv", sep=";", na_values=["?"])
    expected = lgb.Booster(model_file=trained["summary"]["model_file"]).predict(harmonise_features(frame, cfg, "bank"))
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-12)


@pytest.mark.slow
def test_predict_accepts_run_id_and_registered_model(trained, tmp_path, monkeypatch, capsys):
    cfg_path = trained["config"]
    src = cfg_path.parent / "data" / "retailer.parquet"
    outputs = []
    for model in (trained["summary"]["run_id"], "models:/retail-credit/1"):
        out = tmp_path / f"{len(outputs)}.csv"
        code, _, err = call_main(
            monkeypatch,
            capsys,
            "predict",
            cfg_path,
            "--model",
            model,
            "--org",
            "retailer",
            "--input",
            src,
            "--output",
            out,
        )
        assert code == 0, err
        outputs.append(pd.read_csv(out)["prediction"].to_numpy())
    assert len(outputs[0]) == len(pd.read_parquet(src))


@pytest.mark.slow
def test_predict_refuses_a_model_of_another_schema(demo_config, tmp_path, monkeypatch, capsys):
    """Same number of features, another schema: refused naming the first feature that differs."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    names = ["age", "income", "region", "debt_ratio", "late_payments", "months_customer"]
    model = tmp_path / "other.txt"
    lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 4},
        lgb.Dataset(X, (X[:, 0] > 0).astype(float), feature_name=names),
        2,
    ).save_model(model)
    out = tmp_path / "scored.csv"
    code, _, err = call_main(
        monkeypatch,
        capsys,
        "predict",
        demo_config,
        "--model",
        model,
        "--org",
        "bank",
        "--input",
        demo_config.parent / "data" / "bank.csv",
        "--output",
        out,
    )
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --model {model}: feature 6 is 'months_customer' in the model, 'tenure_years' in the schema of "
        f"{demo_config}; the model was trained on another schema"
    ]
    assert not out.exists()


@pytest.mark.slow
def test_predict_refuses_a_model_of_another_federation(demo_config, tmp_path, monkeypatch, capsys):
    """MLflow names a model's federation (registered name, run's experiment): another federation's config refuses it."""
    import yaml

    from fedmine.config import load_config
    from fedmine.tracking import Tracker

    raw = yaml.safe_load(demo_config.read_text())
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    configs = {}
    for name in ("retail-credit", "other-credit"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump({**raw, "name": name}, sort_keys=False))
    tracker = Tracker(load_config(configs["retail-credit"]))  # a model logged and registered as a training does
    run_id = tracker.start()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    names = ["age", "income", "region", "debt_ratio", "late_payments", "tenure_years"]
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 4},
        lgb.Dataset(X, (X[:, 0] > 0).astype(float), feature_name=names),
        2,
    )
    assert tracker.log_model(booster.model_to_string()) == "1"
    tracker.finish()
    capsys.readouterr()  # MLflow's log of creating the store
    src = demo_config.parent / "data" / "retailer.parquet"
    for model in ("models:/retail-credit/1", run_id, f"runs:/{run_id}/model"):
        args = ["--model", model, "--org", "retailer", "--input", src, "--output", tmp_path / f"{len(model)}.csv"]
        code, _, err = call_main(monkeypatch, capsys, "predict", configs["other-credit"], *args)
        assert code == 2
        assert err.strip().splitlines() == [
            f"error: --model {model}: the model belongs to federation 'retail-credit', {configs['other-credit']} is "
            f"federation 'other-credit'"
        ]
        assert not (tmp_path / f"{len(model)}.csv").exists()
        code, _, err = call_main(monkeypatch, capsys, "predict", configs["retail-credit"], *args)
        assert code == 0, err


@pytest.mark.slow
def test_certs_from_the_command_line(tmp_path):
    assert fedmine("certs", "init", tmp_path / "c", "--federation", "retail-credit").returncode == 0
    result = fedmine("certs", "issue", tmp_path / "c", "bank")
    assert result.returncode == 0 and (tmp_path / "c" / "bank.pem").is_file()
    bad = fedmine("certs", "issue", tmp_path / "c", "bank", "--kind", "auditor")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --kind auditor: allowed: party, coordinator"


@pytest.mark.slow
@pytest.mark.parametrize(("command", "days"), [("init", "0"), ("issue", "-1")])
def test_certs_refuse_a_validity_below_one_day(tmp_path, command, days):
    init_ca = fedmine("certs", "init", tmp_path / "c", "--federation", "retail-credit")
    assert init_ca.returncode == 0, init_ca.stderr
    args = (
        ["init", tmp_path / "new", "--federation", "retail-credit"]
        if command == "init"
        else ["issue", tmp_path / "c", "bank"]
    )
    result = fedmine("certs", *args, "--days", days)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"error: --days {days}: the validity must be a whole number of days in \[1, \d+\]", lines[0]
    ), result.stderr
    assert not (tmp_path / "new").exists() and not (tmp_path / "c" / "bank.pem").exists()


@pytest.mark.slow
def test_party_serve_needs_a_known_org(demo_config):
    result = fedmine("party", "serve", demo_config, "--org", "insurer")
    assert result.returncode == 2
    assert (
        result.stderr.strip().startswith("error: --org insurer: not in")
        and "allowed: bank, retailer, telecom" in result.stderr
    )


@pytest.mark.slow
def test_predict_unknown_org(trained, monkeypatch, capsys):
    code, _, err = call_main(
        monkeypatch,
        capsys,
        "predict",
        trained["config"],
        "--model",
        "x",
        "--org",
        "insurer",
        "--input",
        "x.csv",
        "--output",
        "y.csv",
    )
    assert code == 2
    assert "--org insurer: not in" in err and "allowed: bank, retailer, telecom" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def mlflow_ui(trained, store):
    """`fedmine ui` on loopback over the session's store (the demo trained once); its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [*FEDMINE, "ui", "--uri", store, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2):
                    break
            except OSError as exc:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError("MLflow UI did not start") from exc
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(600)  # the MLflow UI's first start and page loads are slow on a loaded machine
def test_ui_serves_run_and_round_history(trained, mlflow_ui):
    """`fedmine ui` on loopback: the run, its per-round metric history and the nested runs over HTTP."""
    base = mlflow_ui
    run_id = trained["summary"]["run_id"]
    run = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    assert run["info"]["status"] == "FINISHED"
    history = _get(f"{base}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=eval/auc")["metrics"]
    assert sorted(m["step"] for m in history) == list(range(1, DEMO_ROUNDS + 1))
    assert len(_children(base, run["info"]["experiment_id"], run_id)) == 3
    with urllib.request.urlopen(base + "/", timeout=10) as r:
        assert r.status == 200 and b"<html" in r.read().lower()


def _children(base: str, experiment_id: str, run_id: str) -> list[dict]:
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/runs/search",
        data=json.dumps(
            {"experiment_ids": [experiment_id], "filter": f"tags.mlflow.parentRunId = '{run_id}'"}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["runs"]


#: Set to a path (docs/images/mlflow-run-page.png) to refresh the README's screenshot from the browser test.
SCREENSHOT_ENV = "FEDMINE_SCREENSHOT"


@pytest.mark.slow
@pytest.mark.timeout(600)  # the MLflow UI's first start and page loads are slow on a loaded machine
def test_ui_run_page_in_chromium(trained, mlflow_ui, tmp_path):
    """The training run's page in headless Chromium: the model-training view, the validation charts first
    (one point per round), the nested organisation runs; a screenshot of the charts."""
    from fedmine.tracking import run_url
    from tests.support.browser import BrowserUnavailable, chromium_page

    summary = trained["summary"]
    run_id, experiment_id = summary["run_id"], summary["experiment_id"]
    children = {c["info"]["run_name"]: c["info"]["run_id"] for c in _children(mlflow_ui, experiment_id, run_id)}
    assert set(children) == {"org:bank", "org:retailer", "org:telecom"}
    shot = tmp_path / "mlflow-run-page.png"
    try:
        with chromium_page() as page:
            page.goto(run_url(mlflow_ui, experiment_id, run_id))
            headers = page.get_by_test_id("experiment-view-compare-runs-section-header")
            headers.first.wait_for()
            sections = [h.inner_text().split("\n")[0].split(" (")[0] for h in headers.all()]
            # what matters first: the federation's validation metrics, then each organisation's
            assert sections[:4] == ["eval", "eval/bank", "eval/retailer", "eval/telecom"], sections
            assert sections.index("privacy") < sections.index("seconds") < sections.index("traffic"), sections
            first = page.get_by_test_id("experiment-view-compare-runs-card").first
            first.locator(".scatterlayer .trace .points path").nth(DEMO_ROUNDS - 1).wait_for()
            assert first.locator(".scatterlayer .trace .points path").count() == DEMO_ROUNDS  # a point per round
            assert first.inner_text().split("\n")[0] == "auc" and "(eval/auc)" in first.inner_text()
            # the model-training view: its sidebar, not the GenAI one's
            assert page.get_by_role("link", name="Model registry").is_visible()
            assert page.get_by_text("Evaluation runs").count() == 0
            close = page.get_by_role("button", name="Close")  # the assistant panel opens on a first visit
            if close.count():
                close.first.click()
            page.wait_for_timeout(500)
            page.screenshot(path=str(shot))

            page.goto(run_url(mlflow_ui, experiment_id, run_id, tab="overview"))
            page.get_by_role("link", name="org:bank").wait_for()
            links = page.locator("a", has_text="org:")
            shown = {a.inner_text().strip(" ,"): a.get_attribute("href") for a in links.all()}
            assert set(shown) == set(children)
            for name, href in shown.items():
                assert href.endswith(f"/runs/{children[name]}"), (name, href)
    except BrowserUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])


def test_explain_the_demo_model_over_the_federation_with_each_organisations_plots_apart(
    trained, store, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    from fedmine.config import load_config
    from fedmine.schema.profiler import prepare_party

    config, summary = trained["config"], tmp_path / "explanation.json"
    model = f"runs:/{trained['summary']['run_id']}/model"
    args = ["explain", config, "--model", model, "--org", "bank", "--org", "telecom", "--output", tmp_path / "out"]
    code, out, err = call_main(monkeypatch, capsys, *args, "--summary-json", summary)
    assert code == 0, err
    result = json.loads(summary.read_text())
    assert result["organisations"] == ["bank", "retailer", "telecom"] and result["secure_aggregation"]
    assert result["plotted"] == ["bank", "telecom"]
    # the federation's mean |SHAP| (masked fixed-point sums) is the pooled rows' (LightGBM's pred_contrib)
    cfg = load_config(config)
    X = np.vstack(
        [np.vstack([p._data.X_train, p._data.X_valid]) for p in map(lambda o: prepare_party(cfg, o), cfg.organisations)]
    )
    text = Path(trained["summary"]["model_file"]).read_text()
    pooled = np.abs(lgb.Booster(model_str=text).predict(X, pred_contrib=True)[:, :-1]).mean(axis=0)
    got = result["mean_abs_shap"]["raw score"]
    assert result["rows"] == len(X)
    for i, feature in enumerate(cfg.features):
        assert abs(got[feature] - pooled[i]) <= 0.5 / result["scale"]
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("feature"))
    assert lines[first + 1].split()[0] == max(got, key=got.get)
    assert f"MLflow run {result['run_id']}" in out and "masked sums (secure aggregation)" in out

    client = MlflowClient(store)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["fedmine.kind"] == "explain"
    assert run.data.tags["fedmine.model"] == model
    assert run.data.metrics["shap/debt_ratio"] == pytest.approx(got["debt_ratio"])
    assert "gain/debt_ratio" in run.data.metrics
    parent = {a.path for a in client.list_artifacts(run.info.run_id, "explain")}
    assert parent == {"explain/report.md", "explain/report.html", "explain/importance.png", "explain/explanation.json"}
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(c.data.tags["fedmine.organisation"] for c in children) == ["bank", "telecom"]
    for child in children:  # each organisation's plots in its own nested run and its own folder only
        org = child.data.tags["fedmine.organisation"]
        files = {a.path.split("/")[-1] for a in client.list_artifacts(child.info.run_id, "explain")}
        assert {"summary.png", "dependence_debt_ratio.png", "mean_abs_shap.csv"} <= files
        assert sorted(p.name for p in (tmp_path / "out" / org / "explain").iterdir()) == sorted(files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bank", "telecom"]


def test_explain_refuses_an_unknown_org_and_a_missing_model(demo_config, monkeypatch, capsys):
    code, _, err = call_main(monkeypatch, capsys, "explain", demo_config, "--model", "nope.txt", "--org", "shop")
    assert code == 2 and err.strip() == f"error: --org shop: not in {demo_config}; allowed: bank, retailer, telecom"
    code, _, err = call_main(monkeypatch, capsys, "explain", demo_config, "--model", "nope.txt")
    assert code == 2 and err.startswith("error: --model nope.txt: not a file, a run id or a model URI")


TUNE = {
    "metric": "binary_logloss",
    "seed": 6,
    "startup_trials": 1,
    "warmup_rounds": 1,
    "space": {"learning_rate": {"choices": [0.3, 0.0001]}},
}


def with_tune(demo: Path, name: str, tune: dict | None) -> Path:
    """The demo config with another tune: section (or none), beside the demo's data: its sources are relative."""
    import yaml

    raw = yaml.safe_load(demo.read_text())
    raw.pop("tune", None)
    if tune is not None:
        raw["tune"] = tune
    path = demo.parent / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_tune_runs_nested_trials_prunes_a_lagging_one_and_writes_an_overlay_run_accepts(
    trained, store, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    from fedmine.config import load_config

    config = with_tune(trained["config"], "tune.yaml", TUNE)
    best, summary = tmp_path / "best.yaml", tmp_path / "tune.json"
    args = ["tune", config, "--trials", "3", "--set", "training.rounds=6", "--out", best, "--summary-json", summary]
    code, out, err = call_main(monkeypatch, capsys, *args)
    assert code == 0, err
    result = json.loads(summary.read_text())
    trials = result["trials"]
    # TPE's draws with seed 6: 0.3, 0.3, 0.0001; the last lags the median log loss and is pruned after round 2
    assert [t["params"]["learning_rate"] for t in trials] == [0.3, 0.3, 0.0001]
    assert [(t["state"], t["rounds"]) for t in trials] == [("complete", 6), ("complete", 6), ("pruned", 2)]
    assert trials[0]["value"] == trials[1]["value"] < trials[2]["value"]
    assert result["best"]["number"] == 0 and result["overrides"] == ["training.learning_rate=0.3"]
    assert "train with it: fedmine run" in out and "--set training.learning_rate=0.3" in out

    client = MlflowClient(store)
    parent = client.get_run(result["run_id"])
    assert parent.data.tags["fedmine.kind"] == "tune" and parent.info.status == "FINISHED"
    assert parent.data.params["best.learning_rate"] == "0.3"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", order_by=["start_time"]
    )
    assert [c.data.tags["fedmine.trial.state"] for c in children] == ["complete", "complete", "pruned"]
    assert [c.info.run_id for c in children] == [t["run_id"] for t in trials]
    pruned = children[2]
    assert pruned.data.params["training.learning_rate"] == "0.0001" and pruned.data.metrics["tune/rounds"] == 2
    assert len(client.get_metric_history(pruned.info.run_id, "eval/binary_logloss")) == 2
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "tune/trial_value")] == [0, 1, 2]

    cfg = load_config(config, [f"@{best}"])  # the overlay, as `fedmine run CONFIG --set @best.yaml` reads it
    assert cfg.training.learning_rate == 0.3 and cfg.training.rounds == 40
    assert load_config(config, result["overrides"]).training.learning_rate == 0.3


def test_tune_refuses_differential_privacy(trained, tmp_path, monkeypatch, capsys):
    """Trials are judged on validation metrics, which privacy.epsilon does not release."""
    config = with_tune(trained["config"], "tune-dp.yaml", {**TUNE, "pruner": "none"})
    dp = ["--set", "training.strategy=histogram", "--set", "privacy.epsilon=4", "--set", "training.rounds=2"]
    code, _, err = call_main(monkeypatch, capsys, "tune", config, "--trials", "2", *dp)
    assert code == 2 and "privacy.epsilon" in err and len(err.strip().splitlines()) == 1, err


def test_tune_refuses_a_config_without_tune_section(demo_config, monkeypatch, capsys):
    config = with_tune(demo_config, "no-tune.yaml", None)
    code, _, err = call_main(monkeypatch, capsys, "tune", config, "--trials", "2")
    assert code == 2 and err.strip().startswith(f"error: {config}: no tune section; declare tune.space")


def test_loading_pauses_the_collector_and_freezes_what_loaded_once(prefect_harness, monkeypatch):
    """The flows' modules load with the cyclic collector paused; what they built, and at exit everything, is frozen."""
    import atexit
    import gc

    from fedmine import cli

    registered: list = []
    monkeypatch.setattr(cli, "_loaded", False)
    monkeypatch.setattr(atexit, "register", registered.append)
    frozen = gc.get_freeze_count()
    with cli._loading(verbose=False):
        assert not gc.isenabled()
        built = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(built)
    assert registered == [gc.freeze]  # and no Prefect server: the harness's API is in PREFECT_API_URL
    with cli._loading(verbose=False):  # once per process: the second block runs with the collector on
        assert gc.isenabled()
    assert registered == [gc.freeze]


@pytest.mark.slow
def test_loading_starts_prefects_temporary_api_before_the_first_flow():
    """With no PREFECT_API_URL, Prefect's temporary API server answers when the flows' modules have loaded.

    The flow runs on it, and sends it no heartbeats.
    """
    code = """
import threading
import httpx
from fedmine import cli
with cli._loading(verbose=False):  # the server starts while the block runs
    print("starting", [t.name for t in threading.enumerate() if t.name == "prefect-api-start"])
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
print("answers", httpx.get(server.api_url + "/health").status_code)
from prefect import flow
from prefect.context import FlowRunContext
from prefect.settings import get_current_settings
@flow
def api() -> tuple:
    return str(FlowRunContext.get().client.api_url), get_current_settings().flows.heartbeat_frequency
with cli._without_heartbeats():
    url, heartbeats = api()
print("flow on", url == server.api_url + "/", len(SubprocessASGIServer._instances), "heartbeats", heartbeats)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_LOGGING", "PREFECT_API_URL"))}
    env.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:3] == [
        "starting ['prefect-api-start']",
        "answers 200",
        "flow on True 1 heartbeats None",
    ], result.stdout


def test_flow_runs_keep_their_heartbeats_on_a_prefect_server_of_its_own(prefect_harness):
    """The harness's server (PREFECT_API_URL) outlives the process: its flow runs send heartbeats as configured."""
    from prefect.settings import get_current_settings

    from fedmine import cli

    configured = get_current_settings().flows.heartbeat_frequency
    with cli._without_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency == configured is not None


def test_profile_and_explain_refuse_differential_privacy_unless_outside_budget_lists_them(trained, monkeypatch, capsys):
    """Their answers are exact: under privacy.epsilon they run only when the config allows it."""
    dp = ["--set", "training.strategy=histogram", "--set", "privacy.epsilon=4"]
    for name in ("income", "debt_ratio", "late_payments", "tenure_years"):  # DP's declared ranges
        dp += ["--set", f"features.{name}.min=0", "--set", f"features.{name}.max=1000000"]
    code, _, err = call_main(monkeypatch, capsys, "profile", trained["config"], "--no-track", *dp)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "error: privacy.epsilon=4 covers the training only: fedmine profile releases" in err
    model = trained["summary"]["model_file"]
    code, _, err = call_main(monkeypatch, capsys, "explain", trained["config"], "--model", model, *dp)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "fedmine explain releases exact sums of |SHAP|" in err and "privacy.outside_budget" in err
