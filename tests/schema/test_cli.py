"""The commands through typer's runner (exit codes 0, 1, 2) and one subprocess smoke test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from fedmine.schema.commands import profile, schema_app
from tests.schema.test_profile import income_federation

# What fedmine/cli.py registers.
app = typer.Typer()
app.add_typer(schema_app, name="schema")
app.command("profile")(profile)

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_check_exit_1_on_violation(bank_config, tmp_path):
    result = runner.invoke(app, ["schema", "check", str(bank_config), "--json", str(tmp_path / "check.json")])
    assert result.exit_code == 1, result.output
    assert "== bank_additional: 4119 rows" in result.output
    assert "unmapped source columns: day_of_week, emp.var.rate, cons.price.idx" in result.output
    assert json.loads((tmp_path / "check.json").read_text())["ok"] is False


def test_check_exit_0_when_it_fits(bank_config):
    result = runner.invoke(
        app, ["schema", "check", str(bank_config), "--set", "organisations.bank_additional.unknown_categories=missing"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("schema check: ok")


def test_check_exit_2_on_bad_config(bank_config):
    result = runner.invoke(
        app, ["schema", "check", str(bank_config), "--set", "organisations.bank.unknown_categories=ignore"]
    )
    assert result.exit_code == 2
    assert (
        "organisations.bank.unknown_categories: 'ignore' is not allowed; allowed: error, other, missing"
        in result.output
    )
    result = runner.invoke(app, ["schema", "check", str(bank_config), "--org", "nobody"])
    assert result.exit_code == 2 and "--org nobody: not in" in result.output


def test_suggest_writes_yaml(bank_config, tmp_path):
    out = tmp_path / "proposal.yaml"
    result = runner.invoke(
        app,
        [
            "schema",
            "suggest",
            str(bank_config),
            "--org",
            "bank_additional",
            "--output",
            str(out),
            "--set",
            "organisations.bank_additional.rename={}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "nothing was applied" in result.output
    assert "pdays: days_since_previous" in out.read_text()
    result = runner.invoke(app, ["schema", "suggest", str(bank_config), "--org", "nobody"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_profile_records_runs_and_drift(tmp_path):
    cfg = income_federation(tmp_path)
    path = tmp_path / "federation.yaml"

    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True)))
    first = runner.invoke(app, ["profile", str(path), "--output", str(tmp_path / "report")])
    assert first.exit_code == 0, first.output
    assert "income: retailer departs most" in first.output
    assert (tmp_path / "report" / "profile.html").is_file()
    second = runner.invoke(app, ["profile", str(path), "--fail-on-flag"])
    assert second.exit_code == 1
    assert "drift since the previous profile" in second.output
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name("income")
    runs = client.search_runs(
        [exp.experiment_id], "tags.`fedmine.kind` = 'profile'", order_by=["attributes.start_time DESC"]
    )
    assert len(runs) == 2
    latest = runs[0].data.metrics
    assert latest["drift/retailer/income"] == 0.0 and "drift/bank/age" in latest
    assert latest["psi/retailer/income"] > 10 and latest["profile/flags"] == 3
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "profile")}
    assert {"profile/profile.html", "profile/profile.json", "profile/income.png"} <= artifacts


@pytest.mark.slow
def test_check_subprocess(bank_config):
    code = "from fedmine.schema.commands import schema_app; schema_app(prog_name='fedmine schema')"
    done = subprocess.run(
        [sys.executable, "-c", code, "check", str(bank_config)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert "column 'education' has unknown category 'basic.9y'" in done.stdout
