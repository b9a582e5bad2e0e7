"""The ``fedmine`` command: run, predict, explain, tune, demo, ui, schedule.

Every command validates its input before anything starts, and every error a
user can cause is one line on stderr with exit code 2 (see
:mod:`fedmine.errors`). Prefect and MLflow are imported only by the commands
that need them, so ``fedmine --help`` is quick.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from fedmine.errors import ConfigError, FedmineError, output_path
from fedmine.schema.commands import profile, schema_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Federated gradient-boosted trees across organisations that keep their rows.",
)
app.add_typer(schema_app, name="schema")
app.command("profile")(profile)
party_app = typer.Typer(no_args_is_help=True, help="Run an organisation's party server.")
certs_app = typer.Typer(no_args_is_help=True, help="The federation's certificates for mutual TLS.")
app.add_typer(party_app, name="party")
app.add_typer(certs_app, name="certs")


def _quiet_prefect(verbose: bool) -> None:
    """Prefect's console log stays quiet unless --verbose (the API still records everything)."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "CRITICAL")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _start_prefect_api() -> Callable[[], None]:
    """Start the Prefect API server of this process's flows now, in the background; the call returned waits for it.

    With no ``PREFECT_API_URL``, Prefect starts a temporary server (a
    subprocess) at the first flow run and waits for it: 4-7 s, most of them
    the server importing its modules. Started here, it comes up while the
    flows' modules load. Nothing starts when the API is a server of its own
    (``PREFECT_API_URL``, the tests' harness) or the temporary one is up.
    A server that fails to start raises Prefect's error from the wait.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return lambda: None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's client starts and uses, stopped at exit
    if server.running:
        return lambda: None
    failed: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:  # raised again in the main thread by wait()
            failed.append(exc)

    thread = threading.Thread(target=start, name="prefect-api-start", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise failed[0]

    return wait


@contextlib.contextmanager
def _without_heartbeats() -> Iterator[None]:
    """Flow runs in the block send no heartbeats to Prefect's temporary API server (a server of its own gets them).

    Heartbeats let a server tell that a flow run's process died; the temporary
    server ends with the process, so they tell it nothing, and each flow run
    ends by waiting for its heartbeat thread's next wake-up (up to a second).
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in the environment still decides.
    """
    from prefect.settings import get_current_settings, temporary_settings

    if get_current_settings().api.url or "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ:
        yield
        return
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


_loaded = False  # this process has loaded its flows' modules once (see _loading)


@contextlib.contextmanager
def _loading(verbose: bool) -> Iterator[None]:
    """Prefect quiet, its API started, and the flows' modules imported in the block with the garbage collector paused.

    Prefect's API server (see :func:`_start_prefect_api`) starts before the
    block and is up after it.

    Prefect, MLflow, LightGBM, scikit-learn and matplotlib build a few million
    long-lived objects as they load. The cyclic collector would scan them
    again and again while they load (a fifth of the imports' CPU time) and in
    every full collection after (0.3-1 s each during a training). So the
    first time in a process, what the imports built is frozen
    (``gc.freeze``: never scanned again; the little garbage they left stays),
    and so is everything at exit, where the interpreter would otherwise
    collect, for a second or more, what ends with the process anyway.
    """
    global _loaded
    _quiet_prefect(verbose)
    if _loaded:
        yield
        return
    atexit.register(gc.freeze)  # runs after the exit handlers registered later (Prefect's, MLflow's)
    enabled = gc.isenabled()
    gc.disable()
    try:
        api_up = _start_prefect_api()
        yield
        api_up()
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    _loaded = True


def _train(
    config: Path, overrides: list[str], summary_json: Path | None, verbose: bool, resume: str | None = None
) -> dict:
    """Validate the config here (before Prefect starts), then run the training flow."""
    from fedmine.config import load_config

    cfg = load_config(config, overrides)  # a bad config fails fast, before any run exists
    with _loading(verbose):
        from fedmine import progress
        from fedmine.flows.train import federated_training
        from fedmine.tracking import open_store

        open_store(cfg)  # while Prefect's API server starts

    def run() -> dict:
        with _without_heartbeats():
            return federated_training(str(config), overrides, str(summary_json) if summary_json else None, resume)

    if not sys.stderr.isatty():
        return run()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metric]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task(f"{cfg.name} ({cfg.training.strategy})", total=cfg.training.rounds, metric="")

        def on_round(r: int, total: int, metrics: dict) -> None:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in list(metrics.items())[:2])
            bar.update(task, completed=r, metric=shown)

        with progress.listening(on_round):
            return run()


def _print_summary(summary: dict) -> None:
    from fedmine import report

    for notice in summary.get("notices", []):
        typer.echo(f"warning: {notice}", err=True)
    typer.echo("")
    typer.echo(report.gain_table(summary))
    typer.echo("")
    typer.echo(
        f"MLflow run {summary['run_id']} ({summary['rounds']} rounds, {summary['train_seconds']:.1f} s training, "
        f"{summary['bytes_sent']:,} bytes sent by parties)"
    )
    p = summary.get("privacy", {})
    if p.get("secure_aggregation") or p.get("mechanism", "none") != "none":
        eps = f", epsilon {p['epsilon_total']:.3f} (delta {p['delta']:g})" if p.get("epsilon_total") else ""
        typer.echo(
            f"privacy: secure aggregation {'on' if p.get('secure_aggregation') else 'off'} "
            f"over {p.get('n_parties')} parties, differential privacy {p.get('mechanism')}{eps}"
        )
    if summary.get("model_file"):
        typer.echo(f"global model: {summary['model_file']}")


@app.command()
def run(
    config: Path = typer.Argument(..., help="The federation YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key by dotted path, e.g. training.rounds=50."),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Write the run summary as JSON here."),
    resume: str | None = typer.Option(
        None, "--resume", help="Continue the MLflow run RUN_ID from its last checkpoint."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs on the console."),
) -> None:
    """Train the federation in CONFIG now (the ad-hoc trigger)."""
    if summary_json is not None:
        output_path(summary_json, "--summary-json")
    summary = _train(config, set_, summary_json, verbose, resume)
    _print_summary(summary)


@app.command()
def demo(
    folder: Path | None = typer.Option(
        None, "--dir", help="Where to write the demo data and config (fedmine-demo, or fedmine-vertical-demo)."
    ),
    vertical: bool = typer.Option(
        False, "--vertical", help="Organisations that share customers, not columns (the bank holds the label)."
    ),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Write the run summary as JSON here."),
    tracking_uri: str = typer.Option("sqlite:///mlruns/mlflow.db", "--tracking-uri", help="MLflow store."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key by dotted path."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs on the console."),
    compare: bool = typer.Option(
        True,
        "--compare/--no-compare",
        help="Also train with bagging and print the strategies side by side (horizontal demo).",
    ),
) -> None:
    """Write a bank, a retailer and a telecom operator's data and train them together."""
    from fedmine.demo import write_demo, write_vertical_demo

    folder = folder or Path("fedmine-vertical-demo" if vertical else "fedmine-demo")
    uri = tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if summary_json is not None:
        output_path(summary_json, "--summary-json")
    output_path(folder, "--dir", folder=True)
    if vertical:
        config = write_vertical_demo(folder, tracking_uri=uri)
        typer.echo(
            f"vertical demo data and config written to {folder}/ (bank.csv with the label, retailer.csv, "
            f"telecom.csv: partly the same customers, different columns; federation.yaml)"
        )
    else:
        config = write_demo(folder, tracking_uri=uri)
        typer.echo(
            f"demo data and config written to {folder}/ (bank.csv, retailer.parquet, telecom.db, federation.yaml)"
        )
    summary = _train(config, set_, summary_json, verbose)
    _print_summary(summary)
    if compare and not vertical:  # vertical federation has one strategy; its table compares the label holder alone
        from fedmine import report

        # The same federation trained by averaging whole trees: what the lossless strategy buys.
        strategy = summary.get("strategy", "histogram")
        others = [s for s in ("bagging", "histogram") if s != strategy]
        runs = {strategy: summary}
        for other in others:
            typer.echo(f"\ncomparison: the same federation with training.strategy={other} (not registered)")
            runs[other] = _train(
                config, [*set_, f"training.strategy={other}", "tracking.register_model=false"], None, verbose
            )
        typer.echo("")
        typer.echo(report.strategy_table(runs))
    typer.echo("")
    from fedmine.tracking import experiments_url, run_url

    base = "http://127.0.0.1:5000"
    page = run_url(base, summary["experiment_id"], summary["run_id"]) if summary.get("experiment_id") else None
    typer.echo(f"See every round in the MLflow UI:  fedmine ui   (then open {page or experiments_url(base)})")


@app.command()
def predict(
    config: Path = typer.Argument(..., help="The federation YAML file (for the organisation's mapping)."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="A model file, an MLflow run id, or a model URI (models:/NAME/VERSION); "
        "not with partition: vertical (the label holder's party holds the model).",
    ),
    org: str = typer.Option(
        ..., "--org", help="The organisation whose mapping (vertical: id column) the input follows."
    ),
    input: str = typer.Option(..., "--input", help="New rows: a path or URI, as in the config's sources."),
    output: Path = typer.Option(..., "--output", help="CSV to write: the input's rows with a prediction column."),
) -> None:
    """Score new rows of one organisation with a trained model (vertical: customers by id, over the party servers)."""
    import numpy as np

    from fedmine import connectors, metrics
    from fedmine.config import load_config

    cfg = load_config(config)
    if org not in cfg.organisations:
        raise ConfigError(f"--org {org}: not in {config}; allowed: {', '.join(cfg.organisations)}")
    spec = cfg.organisations[org]
    output_path(output, "--output")
    if cfg.partition == "vertical":
        frame, raw = _predict_vertical(cfg, org, input, model)
    else:
        import lightgbm as lgb

        from fedmine.schema import harmonise_features
        from fedmine.tracking import load_model_text, model_federation

        if model is None:
            raise ConfigError("--model: required (a model file, an MLflow run id, or models:/NAME/VERSION)")
        booster = lgb.Booster(model_str=load_model_text(model, cfg.tracking.uri))
        _check_model(booster, model, model_federation(model, cfg.tracking.uri), cfg, config)
        frame = connectors.load(input, spec.read, org=org)
        raw = booster.predict(harmonise_features(frame, cfg, org), raw_score=True)
    out = frame.copy()
    if cfg.objective == "multiclass":
        raw = raw.reshape(len(frame), cfg.num_class)
        proba = metrics.transform(raw, "multiclass")
        out["prediction"] = np.asarray(cfg.classes, dtype=object)[proba.argmax(axis=1)]
        for i, c in enumerate(cfg.classes):
            out[f"probability_{c}"] = proba[:, i]
    else:
        out["prediction"] = metrics.transform(raw, cfg.objective)
    out.to_csv(output, index=False)
    typer.echo(f"{len(out)} rows scored -> {output}")


@app.command()
def explain(
    config: Path = typer.Argument(..., help="The federation YAML file."),
    model: str = typer.Option(
        ..., "--model", help="A model file, an MLflow run id, or a model URI (models:/NAME/VERSION)."
    ),
    org: list[str] = typer.Option(
        [], "--org", help="Only this organisation writes its plots (repeatable; default: every one)."
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Also keep each in-process organisation's plots here (ORG/explain/)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a config key by dotted path."),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Write the explanation as JSON here."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs on the console."),
) -> None:
    """SHAP values of a trained model, computed inside each organisation on its own rows.

    The federation's mean |SHAP| per feature comes from sums masked under
    secure aggregation; each organisation's summary and dependence plots of
    its own rows are written where its rows are. Recorded as an MLflow run.
    """
    import json

    import lightgbm as lgb

    from fedmine.config import load_config
    from fedmine.tracking import load_model_text, model_federation

    cfg = load_config(config, set_)
    for name in org:
        if name not in cfg.organisations:
            raise ConfigError(f"--org {name}: not in {config}; allowed: {', '.join(cfg.organisations)}")
    if summary_json is not None:
        output_path(summary_json, "--summary-json")
    if output is not None:
        output_path(output, "--output", folder=True)
    booster = lgb.Booster(model_str=load_model_text(model, cfg.tracking.uri))
    _check_model(booster, model, model_federation(model, cfg.tracking.uri), cfg, config)
    with _loading(verbose):
        from fedmine.flows.explain import federated_explanation

    with _without_heartbeats():
        result = federated_explanation(
            str(config), model, list(org) or None, list(set_), str(output) if output else None
        )
    if summary_json is not None:
        summary_json.write_text(json.dumps(result, indent=2))
    outputs = result["outputs"]
    width = max(len(f) for f in result["gain"]) + 2
    typer.echo("")
    typer.echo(f"{'feature':<{width}}" + "".join(f"{'mean |SHAP| ' + o:>24}" for o in outputs) + f"{'gain':>14}")
    for feature, gain in result["gain"].items():
        shap = "".join(f"{result['mean_abs_shap'][o][feature]:>24.4f}" for o in outputs)
        typer.echo(f"{feature:<{width}}{shap}{gain:>14.1f}")
    typer.echo("")
    masked = "masked sums (secure aggregation)" if result["secure_aggregation"] else "plain sums"
    typer.echo(
        f"{result['rows']} rows of {', '.join(result['organisations'])}, {masked}; MLflow run {result['run_id']}"
    )
    for notice in result["notices"]:
        typer.echo(f"note: {notice}", err=True)
    for name, folder in result["plots"].items():
        typer.echo(f"plots of {name}: {folder}")
    remote = [o for o in result["plotted"] if cfg.organisations[o].endpoint]
    if remote:
        typer.echo(f"plots of {', '.join(remote)}: in each party server's own --output folder")


@app.command()
def tune(
    config: Path = typer.Argument(..., help="The federation YAML file, with a tune: section."),
    trials: int | None = typer.Option(None, "--trials", min=1, help="Trials to run (default: tune.trials)."),
    out: Path | None = typer.Option(
        None, "--out", help="Write the best parameters here as YAML (fedmine run CONFIG --set @FILE)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a config key by dotted path (every trial)."),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Write the search's summary as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs on the console."),
) -> None:
    """Federated hyperparameter search (Optuna TPE, pruned on the federation's validation metric)."""
    import json

    from fedmine.config import load_config
    from fedmine.coordinator.tuning import Search

    cfg = load_config(config, set_)
    Search(str(config), cfg, list(set_)).check_space()  # a bad tune: section fails here, before any run
    for path, option in ((out, "--out"), (summary_json, "--summary-json")):
        if path is not None:
            output_path(path, option)
    with _loading(verbose):
        from fedmine import progress
        from fedmine.flows.tune import federated_tuning

    def on_round(r: int, total: int, metrics: dict) -> None:
        if not sys.stderr.isatty():
            return
        typer.echo(f"\r  round {r}/{total}", nl=False, err=True)

    with progress.listening(on_round), _without_heartbeats():
        summary = federated_tuning(str(config), trials, list(set_), str(out) if out else None)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2, default=float))
    metric = summary["metric"]
    keys = list(cfg.tune.space) if cfg.tune else []
    typer.echo("")
    typer.echo(f"{'trial':>5}  {'state':<9}{metric:>12}{'rounds':>8}{'seconds':>9}  " + "  ".join(keys))
    for t in summary["trials"]:
        value = f"{t['value']:.4f}" if t["value"] is not None else "-"
        shown = "  ".join(
            f"{t['params'][k]:.4g}" if isinstance(t["params"][k], float) else str(t["params"][k]) for k in keys
        )
        typer.echo(f"{t['number']:>5}  {t['state']:<9}{value:>12}{t['rounds']:>8}{t['seconds']:>9.1f}  {shown}")
    typer.echo("")
    best = summary["best"]
    if best is None:
        typer.echo("no trial completed; nothing to recommend")
    else:
        typer.echo(f"best: trial {best['number']}, {metric} {best['value']:.4f} (MLflow run {best['run_id']})")
        typer.echo(f"train with it: fedmine run {config} " + " ".join(f"--set {o}" for o in summary["overrides"]))
        if out is not None:
            typer.echo(f"overlay written: {out}   (fedmine run {config} --set @{out})")
    p = summary["privacy"]
    if "epsilon_total" in p:
        typer.echo(
            f"privacy: each trial spent its own budget (epsilon {p['epsilon_budget_per_trial']:g}); "
            f"{p['trials']} trials: epsilon {p['epsilon_total']:.3f} in total, delta {p['delta_total']:g} "
            f"(basic composition)"
        )
    typer.echo(f"MLflow tuning run {summary['run_id']} ({len(summary['trials'])} nested trial runs)")


def _predict_vertical(cfg, org: str, input: str, model: str | None):
    """The input's rows and their raw scores from the label holder's party, every owner answering its splits."""
    import numpy as np

    from fedmine import connectors
    from fedmine.coordinator.client import connect
    from fedmine.coordinator.vertical import VerticalCoordinator

    if model is not None:
        raise ConfigError(
            "--model: not with partition: vertical; the label holder's party server holds the model "
            "(a published model text predicts with LightGBM on the joined columns)"
        )
    missing = [o for o, s in cfg.organisations.items() if not s.endpoint]
    if missing:
        raise ConfigError(
            f"organisations.{missing[0]}.endpoint: not set; fedmine predict on a vertical model runs over the "
            f"organisations' party servers (fedmine party serve), each answering its splits for the ids"
        )
    spec = cfg.organisations[org]
    frame = connectors.load(input, spec.read, org=org)
    column = spec.id.column  # type: ignore[union-attr]  # every vertical organisation has an id (config)
    if column not in frame.columns:
        raise ConfigError(f"--input {input}: no id column {column!r} (organisations.{org}.id)")
    coord = VerticalCoordinator(cfg, [connect(cfg, o) for o in cfg.organisations])
    raw = np.asarray(coord.predict_raw(frame[column].tolist()))
    return frame, raw[:, 0] if cfg.num_class == 1 else raw


def _check_model(booster, model: str, federation: str | None, cfg, config: Path) -> None:
    """Refuse a model of another federation (as MLflow records it) or trained on another canonical schema."""
    from fedmine.gbdt.booster import canonical_feature_names

    if federation is not None and federation != cfg.name:
        raise ConfigError(
            f"--model {model}: the model belongs to federation {federation!r}, {config} is federation {cfg.name!r}"
        )
    expected = canonical_feature_names(len(cfg.features), list(cfg.features))  # as the model text writes them
    actual = booster.feature_name()
    if len(actual) != len(expected):
        raise ConfigError(
            f"--model {model}: expects {len(actual)} features, the schema in {config} has {len(expected)}"
        )
    for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if got != want:
            raise ConfigError(
                f"--model {model}: feature {i + 1} is {got!r} in the model, {want!r} in the schema "
                f"of {config}; the model was trained on another schema"
            )


@app.command()
def ui(
    uri: str = typer.Option("sqlite:///mlruns/mlflow.db", "--uri", help="MLflow store to show."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (loopback by default)."),
    port: int = typer.Option(5000, "--port", help="Port."),
) -> None:
    """Start the MLflow UI on the project's store."""
    from fedmine.tracking import artifact_root, experiments_url, prepare_store

    prepare_store(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = artifact_root(uri, None)
    if root:
        cmd += ["--default-artifact-root", root]
    typer.echo(f"MLflow UI on {experiments_url(f'http://{host}:{port}')} (store {uri}); Ctrl-C stops it")
    raise typer.Exit(subprocess.call(cmd))


@app.command()
def schedule(
    config: Path = typer.Argument(..., help="The federation YAML file."),
    cron: str = typer.Option(..., "--cron", help='When to train, as cron, e.g. "0 2 * * *".'),
    name: str | None = typer.Option(None, "--name", help="Deployment name (default: the federation's name)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key by dotted path."),
) -> None:
    """Serve the training flow on a schedule with Prefect (runs until stopped)."""
    from fedmine.config import load_config

    cfg = load_config(config, set_)
    _check_cron(cron)
    os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")
    from fedmine.flows.train import federated_training

    typer.echo(f"serving {cfg.name} on cron {cron!r}; Ctrl-C stops it")
    federated_training.serve(
        name=name or cfg.name,
        cron=cron,
        parameters={"config": str(config.resolve()), "overrides": list(set_)},
        tags=["fedmine", cfg.training.strategy],
    )


@party_app.command("serve")
def party_serve(
    config: Path = typer.Argument(..., help="The federation YAML file (this organisation's source and mapping)."),
    org: str = typer.Option(..., "--org", help="The organisation this machine serves."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (loopback unless told otherwise)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: the port of the organisation's endpoint)."),
    allow_insecure: bool = typer.Option(False, "--allow-insecure", help="Plain gRPC, for local tests only."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key by dotted path (this party's policy)."),
    output: Path = typer.Option(
        Path("fedmine-party"),
        "--output",
        help="This organisation's own files (explanation plots in explain/, made when asked for; a vertical "
        "training's state in vertical/, to rejoin and to predict after a restart: keep it across restarts).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs on the console."),
) -> None:
    """Prepare ORG's data here (its rows stay here) and answer the coordinator over mutual TLS.

    The party answers by its own config: its LightGBM parameters, round caps and
    privacy settings come from CONFIG (and --set), never from the coordinator.
    """
    from fedmine.config import load_config
    from fedmine.party.server import listen_address, serve

    cfg = load_config(config, list(set_))
    if org not in cfg.organisations:
        raise ConfigError(f"--org {org}: not in {config}; allowed: {', '.join(cfg.organisations)}")
    if cfg.organisations[org].source is None:
        raise ConfigError(f"organisations.{org}.source: not set in {config}; the party server reads its data from it")
    address = listen_address(cfg, org, host, port)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: not a folder")
    with _loading(verbose):
        from fedmine.flows.prepare import prepare_organisation

    with _without_heartbeats():
        party = prepare_organisation(cfg, org)
    party.output_dir = output.resolve()
    if (where := party.where()) is not None:
        typer.echo(f"party {org}: {where}")
    try:
        serve(
            cfg,
            org,
            party,
            host=address[0],
            port=address[1],
            allow_insecure=allow_insecure,
            ready=lambda server: typer.echo(
                f"party {org}: {party.row_counts()['n_rows']} training rows, serving on {server.endpoint}", err=False
            ),
        )
    finally:
        getattr(party, "close", lambda: None)()  # a LocalCluster started for the party stops with it


@certs_app.command("init")
def certs_init(
    folder: Path = typer.Argument(Path("certs"), help="Where the CA's files go."),
    federation: str = typer.Option(..., "--federation", help="The federation's name (the CA's name)."),
    days: int = typer.Option(1825, "--days", help="Validity."),
) -> None:
    """Create the federation's certificate authority (ca.pem, ca.key)."""
    from fedmine.transport.certs import check_days, init_ca

    check_days(days, key="--days")
    path = init_ca(folder, federation=federation, days=days)
    typer.echo(f"CA for {federation}: {path}")


@certs_app.command("issue")
def certs_issue(
    folder: Path = typer.Argument(..., help="The CA's folder."),
    name: str = typer.Argument(..., help="An organisation's name, or the coordinator's."),
    kind: str = typer.Option("party", "--kind", help="party | coordinator"),
    days: int = typer.Option(365, "--days", help="Validity."),
) -> None:
    """Issue NAME.pem and NAME.key, signed by the federation's CA."""
    from fedmine.transport.certs import check_days, issue

    if kind not in ("party", "coordinator"):
        raise ConfigError(f"--kind {kind}: allowed: party, coordinator")
    check_days(days, key="--days")
    path = issue(folder, name, kind=kind, days=days)
    typer.echo(f"{kind} certificate for {name}: {path}")


def _check_cron(cron: str) -> None:
    from datetime import datetime

    from cronsim import CronSim, CronSimError

    try:
        CronSim(cron, datetime.now())
    except CronSimError as exc:
        raise ConfigError(f'--cron {cron!r}: not a cron expression ({exc}); for example "0 2 * * *"') from None


def main() -> None:
    """Entry point: run the app, turning input errors into one line and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except FedmineError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # usage errors: a bad option value, a missing argument (typer's click or click's)
        import click

        if isinstance(exc, (click.ClickException, typer.TyperException)) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    if isinstance(code, int) and code:  # a command's typer.Exit(code), which click hands back as the result
        sys.exit(code)


if __name__ == "__main__":
    main()
