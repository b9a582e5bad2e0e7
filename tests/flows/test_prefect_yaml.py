"""prefect.yaml: every deployment points at a real flow with parameters it accepts, on a pool per organisation."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]


def test_deployments_name_real_flows_and_pools():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = set()
    for d in spec["deployments"]:
        path, name = d["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert isinstance(flow, Flow), d["name"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d["parameters"]) <= accepted, (d["name"], set(d["parameters"]) - accepted)
        for schedule in d.get("schedules", []):
            assert len(schedule["cron"].split()) == 5
        pools.add(d["work_pool"]["name"])
    assert {"coordinator", "bank", "retailer", "telecom"} <= pools
