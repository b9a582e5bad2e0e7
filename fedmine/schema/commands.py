"""Commands of the schema: ``fedmine schema check``, ``fedmine schema suggest``, ``fedmine profile``.

``schema_app`` is a typer sub-app (``check``, ``suggest``) and :func:`profile`
a command function; fedmine/cli.py registers both. Exit codes: 0 when all is
well, 1 when the check finds a violation (or ``profile --fail-on-flag``
flags a feature), 2 for input errors (a bad config, an unknown organisation),
with one line on stderr as everywhere in fedmine.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from fedmine.errors import FedmineError, output_path

schema_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Check organisations against the canonical schema and propose mappings.",
)


def _fail(exc: FedmineError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@schema_app.command("check")
def check(
    config: Path = typer.Argument(..., help="The federation YAML file."),
    org: list[str] = typer.Option([], "--org", help="Check only this organisation (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key by dotted path."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report as JSON here."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Also write the report as markdown here."),
) -> None:
    """Prepare each organisation and report how its rows fit the canonical schema (exit 1 on a violation)."""
    from fedmine.config import load_config
    from fedmine.errors import ConfigError
    from fedmine.schema.check import check_federation

    try:
        cfg = load_config(config, set_)
        for path, option in ((json_out, "--json"), (markdown_out, "--markdown")):
            if path is not None:
                output_path(path, option)
        unknown = [o for o in org if o not in cfg.organisations]
        if unknown:
            raise ConfigError(f"--org {unknown[0]}: not in {config}; allowed: {', '.join(cfg.organisations)}")
        report = check_federation(cfg, list(org) or None)
    except FedmineError as exc:
        _fail(exc)
    typer.echo(report.to_text())
    for path, text in ((json_out, report.to_json()), (markdown_out, report.to_markdown())):
        if path is not None:
            path.write_text(text)
    raise typer.Exit(0 if report.ok else 1)


@schema_app.command("suggest")
def suggest(
    config: Path = typer.Argument(..., help="The federation YAML file, listing the new organisation's source."),
    org: str = typer.Option(..., "--org", help="The organisation whose mapping is incomplete."),
    output: Path | None = typer.Option(None, "--output", help="Write the proposal here (default: print it)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key by dotted path."),
) -> None:
    """Propose ORG's mapping (rename, values, missing, units) as YAML for review; nothing is applied."""
    from fedmine.config import load_config
    from fedmine.schema.suggest import suggest_mapping

    try:
        cfg = load_config(config, set_)
        if output is not None:
            output_path(output, "--output")
        text = suggest_mapping(cfg, org).to_yaml()
    except FedmineError as exc:
        _fail(exc)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"proposed mapping of {org} written to {output} (review it; nothing was applied)")


def profile(
    config: Path = typer.Argument(..., help="The federation YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key by dotted path."),
    output: Path | None = typer.Option(
        None, "--output", help="Also write the HTML report (with PNGs and JSON) into this folder."
    ),
    track: bool = typer.Option(
        True, "--track/--no-track", help="Record the profile as an MLflow run (and measure drift)."
    ),
    fail_on_flag: bool = typer.Option(False, "--fail-on-flag", help="Exit 1 when a feature is flagged."),
) -> None:
    """Profile the canonical features across organisations; flag departures; record drift in MLflow."""
    from fedmine.config import load_config
    from fedmine.schema.profiler import profile_federation, write_report

    _quiet()
    try:
        cfg = load_config(config, set_)
        if output is not None:
            output_path(output, "--output", folder=True)
        result = profile_federation(cfg)
        run_id = None
        if track:
            from fedmine.tracking import log_profile

            run_id = log_profile(cfg, result)
        if output is not None:
            write_report(result, output)
    except FedmineError as exc:
        _fail(exc)
    typer.echo(result.to_text())
    for org, view in result.organisations.items():
        if view.get("problems"):
            typer.echo(
                f"note: {org} has {len(view['problems'])} schema violations (their values count as missing); "
                f"see fedmine schema check",
                err=True,
            )
    if run_id:
        typer.echo(f"MLflow run {run_id} (experiment {cfg.name}, tag fedmine.kind=profile)")
    if output is not None:
        typer.echo(f"report: {output / 'profile.html'}")
    raise typer.Exit(1 if fail_on_flag and result.flags else 0)
