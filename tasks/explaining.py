"""Tasks of an explanation at the coordinator: the masked SHAP sums over the parties, its MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from fedmine.config import FederationConfig
from fedmine.coordinator.explanation import Explanation, explain_parties


@task(name="explain", cache_policy=NO_CACHE)
def run_explanation(cfg: FederationConfig, parties: list[Any], model_text: str, plotting: list[str]) -> Explanation:
    """Each organisation's |SHAP| sums (masked under secure aggregation), summed; ``plotting``'s plots written."""
    return explain_parties(cfg, parties, model_text, plots=plotting)


@task(name="record-explanation", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def record_explanation(
    cfg: FederationConfig, explanation: Explanation, report: Path, org_folders: dict[str, Path], model: str
) -> str:
    """The explanation's MLflow run: the federation's figures and report, each in-process organisation's plots."""
    from fedmine.tracking import log_explanation

    return log_explanation(cfg, explanation, report, org_folders, model=model)
