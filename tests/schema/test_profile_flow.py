"""The federated_profile flow: a subflow per organisation, then one profile run in MLflow."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.schema.test_profile import income_federation

pytestmark = pytest.mark.slow


def test_federated_profile_flow(prefect_harness, tmp_path):
    from fedmine.flows.profile import federated_profile

    cfg = income_federation(tmp_path)
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True)))
    first = federated_profile(str(path))
    assert first["flags"][0]["organisation"] == "retailer" and first["drift"] == {}
    second = federated_profile(str(path))
    assert set(second["drift"]) == {"bank", "insurer", "retailer"}
    run = MlflowClient(cfg.tracking.uri).get_run(second["run_id"])
    assert run.data.tags["fedmine.kind"] == "profile"
    assert "drift/insurer/income" in run.data.metrics
