"""The explanation flow: SHAP values of the global model, computed inside each organisation.

Recipe: each organisation is prepared inside it with the training's own
subflow (its rows stay there) when it has a ``source``, or reached at its
party server when it has an ``endpoint``; the parties answer the
explanation's calls of the protocol table (masked |SHAP| sums; plots written
where the rows are), and the explanation is recorded in MLflow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from fedmine.config import FederationConfig, load_config
from fedmine.coordinator.explanation import write_report
from fedmine.errors import ConfigError
from fedmine.flows.prepare import prepare_organisation
from fedmine.party.organisation import Party
from fedmine.tasks.explaining import record_explanation, run_explanation
from fedmine.tasks.rounds import connect_party
from fedmine.tracking import load_model_text


@task(name="prepare-explanation", cache_policy=NO_CACHE, task_run_name="prepare-explanation-{org}")
def _prepare(cfg: FederationConfig, org: str) -> Party:
    return prepare_organisation(cfg, org)


@flow(name="federated-explanation", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=False)
def federated_explanation(
    config: str,
    model: str,
    organisations: list[str] | None = None,
    overrides: list[str] | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """Explain ``model`` (a file, a run id or a model URI) over the federation in ``config``.

    Every organisation takes part in the federation's sums; ``organisations``
    names those that write their plots (default: all). An organisation prepared here writes its plots into
    ``output/<organisation>/explain`` (a temporary folder without ``output``)
    and they are logged to its nested run; one at a party server writes them
    into that server's own output folder. Returns the explanation as plain
    data with the MLflow run id and the local plot folders.
    """
    cfg = load_config(config, overrides)
    cfg.privacy.check_outside_budget("explain")  # before any organisation's rows are read
    plotting = list(organisations or cfg.organisations)
    for org in plotting:
        if org not in cfg.organisations:
            raise ConfigError(f"--org {org}: not in {config}; allowed: {', '.join(cfg.organisations)}")
    model_text = load_model_text(model, cfg.tracking.uri)
    futures = [
        connect_party.submit(cfg, org) if spec.endpoint else _prepare.submit(cfg, org)
        for org, spec in cfg.organisations.items()
    ]
    parties = [f.result() for f in futures]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(output) if output else Path(tmp) / "organisations"
        folders = {}
        for party in parties:
            if isinstance(party, Party) and party.name in plotting:  # in this process: its folder, its nested run
                party.output_dir = base / party.name
                folders[party.name] = party.output_dir / "explain"
        try:
            explanation = run_explanation(cfg, parties, model_text, plotting)
        finally:
            for party in parties:
                if hasattr(party, "close"):  # a party server's client
                    party.close()
        report = Path(tmp) / "report"
        write_report(explanation, report, model=model)
        run_id = record_explanation(cfg, explanation, report, folders, model)
    out = explanation.as_dict()
    out["run_id"] = run_id
    out["plots"] = {org: str(folder) for org, folder in folders.items()} if output else {}
    out["plotted"] = plotting
    return out
