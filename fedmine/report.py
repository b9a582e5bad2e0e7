"""The federation report: gain table, learning curves, feature importance.

:func:`summarise` turns a finished training into the summary dictionary (the
``--summary-json`` file); :func:`write_report` renders it as Markdown and HTML
with PNG plots into a folder, which the flow logs to MLflow. Where an
organisation's figures are undefined or its local model cannot learn,
:func:`organisation_notes` says why, in the summary, the gain table and the report.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedmine import metrics
from fedmine.config import FederationConfig
from fedmine.coordinator.training import Coordinator


def organisation_notes(
    cfg: FederationConfig, description: dict[str, Any], federated: dict[str, float], local_only: dict[str, float]
) -> list[str]:
    """Why an organisation's row of the gain table is undefined (nan) or its local model constant.

    ``description`` is what the party answered to ``describe`` (row counts,
    label sums of its training rows); ``federated`` and ``local_only`` its
    validation metrics of the global and of its local-only model.
    """
    notes: list[str] = []
    t = cfg.training
    if "n_rows" not in description:  # organisation_metrics: own: the organisation keeps its figures
        return notes
    n_train, n_valid = int(description["n_rows"]), int(description["n_valid"])
    if n_valid == 0:
        notes.append(
            "no validation rows (validation_fraction: 0)"
            if t.validation_fraction == 0
            else f"no validation rows ({n_train + n_valid} rows are too few for validation_fraction: "
            f"{t.validation_fraction:g})"
        )
    elif cfg.objective == "binary" and any(m.get("auc", 0.0) != m.get("auc", 0.0) for m in (federated, local_only)):
        notes.append("validation rows hold one class: auc undefined")  # metrics.auc's only nan
    sums = np.asarray(description.get("label_sums", []), dtype=np.float64)
    if cfg.objective == "binary" and n_train and sums.size and sums[0] in (0.0, float(n_train)):
        notes.append(
            f"training rows hold one class ({'positive' if sums[0] else 'negative'}): the local model is constant"
        )
    elif cfg.objective == "multiclass" and n_train and np.count_nonzero(sums) == 1:
        notes.append(
            f"training rows hold one class ({cfg.classes[int(np.flatnonzero(sums)[0])]}): the local model is constant"
        )
    if n_train < 2 * t.min_data_in_leaf:
        notes.append(
            f"fewer training rows ({n_train}) than a split needs (2 x min_data_in_leaf = "
            f"{2 * t.min_data_in_leaf}): the local model is constant"
        )
    return notes


def summarise(
    coord: Coordinator,
    baselines: dict[str, dict[str, Any]],
    *,
    run_id: str,
    model_file: str | None,
    train_seconds: float,
    total_seconds: float,
    experiment_id: str | None = None,
) -> dict[str, Any]:
    """The summary of a training (what ``--summary-json`` writes)."""
    cfg = coord.cfg
    last = coord.history[-1]
    orgs = {}
    dropped = {d["organisation"]: d for d in coord.dropped}
    for org, d in coord.descriptions.items():
        federated, local_only = last.org_metrics.get(org, {}), baselines.get(org, {}).get("metrics", {})
        notes = organisation_notes(cfg, d, federated, local_only)
        if baselines.get(org, {}).get("notice"):
            notes = [baselines[org]["notice"], *notes]
        if org in dropped:  # left out after a failure: no baseline, no metrics of the final model
            notes = [f"left out in round {dropped[org]['round']} after a failure: {dropped[org]['reason']}", *notes]
        shared = "n_rows" in d  # organisation_metrics: own keeps them with the organisation
        orgs[org] = {
            "rows": d["n_rows"] + d["n_valid"] if shared else None,
            "rows_train": d["n_rows"] if shared else None,
            "rows_valid": d["n_valid"] if shared else None,
            "federated": federated,
            "local_only": local_only,
            "notes": notes,
        }
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "name": cfg.name,
        "strategy": cfg.training.strategy,
        "partition": cfg.partition,
        "objective": cfg.objective,
        "rounds": coord.last_round,
        "primary_metric": metrics.primary(cfg.objective),
        "model_file": model_file,
        "feature_names": list(cfg.features),
        "global": last.global_metrics,
        "rows": coord.n_rows + coord.n_valid,
        "organisations": orgs,
        "privacy": coord.receipt().as_dict(),
        "dropped": coord.dropped,
        "notices": coord.notices,
        "bytes_sent": coord.bytes_sent(),
        "bytes_received": coord.bytes_received(),
        "train_seconds": train_seconds,
        "total_seconds": total_seconds,
    }


def publish(
    tracker, coord: Coordinator, baselines: dict[str, dict[str, Any]], *, train_seconds: float, started: float
) -> dict[str, Any]:
    """Log the model, the final figures, the report and the summary to the training's run; return the summary.

    ``tracker`` is the run's :class:`~fedmine.tracking.Tracker`; ``started``
    the ``time.perf_counter()`` at the start of the training.
    """
    import tempfile
    import time

    from fedmine.tracking import summary_json

    model_text = coord.model_text()
    model_file = None
    if model_text:
        tracker.log_model(model_text)
        path = tracker.artifact_path("model.txt")
        model_file = str(path) if path else None
    summary = summarise(
        coord,
        baselines,
        run_id=tracker.run_id,
        experiment_id=tracker.experiment_id,
        model_file=model_file,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
    )
    gains = {f"gain/{org}": g for org, _, _, _, g in gain_rows(summary)}
    tracker.log_final(
        {**{f"final/{k}": v for k, v in summary["global"].items()}, **gains},
        {org: {f"final/{k}": v for k, v in o["federated"].items()} for org, o in summary["organisations"].items()},
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_report(coord, baselines, summary, model_text, Path(tmp))
        tracker.log_artifacts(tmp, "report")
    summary["total_seconds"] = time.perf_counter() - started
    tracker.log_text(summary_json(summary), "summary.json")
    return summary


def gain_rows(summary: dict[str, Any]) -> list[tuple[str, int, float, float, float]]:
    """(organisation, rows, local-only, federated, gain) on the primary metric; gain > 0 is better."""
    key = summary["primary_metric"]
    sign = 1.0 if metrics.PRIMARY[summary["objective"]][1] else -1.0
    rows = []
    for org, o in summary["organisations"].items():
        if o["rows"] is None:  # organisation_metrics: own: its figures stay with it
            continue
        local = o["local_only"].get(key, float("nan"))
        fed = o["federated"].get(key, float("nan"))
        rows.append((org, o["rows"], local, fed, sign * (fed - local)))
    return rows


#: The gain table's line under differential privacy, which releases no validation sums.
DP_NOTE = (
    "note: privacy.epsilon: no validation sums leave the organisations; each logs its own metrics "
    "of the global model (its party's fedmine.party log)"
)


def gain_table(summary: dict[str, Any]) -> str:
    """The federation gain as a plain-text table (what the CLI prints)."""
    key = summary["primary_metric"]
    head = f"{'organisation':<16}{'rows':>8}{'local-only ' + key:>22}{'federated ' + key:>22}{'gain':>10}"
    lines = [head, "-" * len(head)]
    for org, n, local, fed, gain in gain_rows(summary):
        lines.append(f"{org:<16}{n:>8}{local:>22.4f}{fed:>22.4f}{gain:>+10.4f}")
    g = summary["global"].get(key)
    if g is not None:
        lines.append(f"{'federation':<16}{summary['rows']:>8}{'':>22}{g:>22.4f}")
    lines += [f"note: {org}: {note}" for org, note in notes(summary)]
    if g is None and summary.get("privacy", {}).get("mechanism", "none") != "none":
        lines.append(DP_NOTE)
    if summary.get("partition") == "vertical":
        lines.append(VERTICAL_NOTE)
    return "\n".join(lines)


def strategy_table(runs: dict[str, dict[str, Any]]) -> str:
    """Each organisation's primary metric local-only and under each strategy of ``runs`` (strategy -> summary).

    The local-only column comes from the first run (every run trains the same baselines).
    """
    first = next(iter(runs.values()))
    key = first["primary_metric"]
    head = f"{'organisation':<16}{'rows':>8}{'local-only':>14}" + "".join(f"{s:>14}" for s in runs)
    lines = [f"validation {key} by strategy", head, "-" * len(head)]
    for org, o in first["organisations"].items():
        cells = [runs[s]["organisations"][org]["federated"].get(key, float("nan")) for s in runs]
        local = o["local_only"].get(key, float("nan"))
        lines.append(f"{org:<16}{o['rows']:>8}{local:>14.4f}" + "".join(f"{c:>14.4f}" for c in cells))
    fed = [runs[s]["global"].get(key, float("nan")) for s in runs]
    n = sum(o["rows"] for o in first["organisations"].values())
    lines.append(f"{'federation':<16}{n:>8}{'':>14}" + "".join(f"{c:>14.4f}" for c in fed))
    return "\n".join(lines)


#: What the gain table compares in vertical federation.
VERTICAL_NOTE = (
    "note: vertical federation: local-only is the label holder alone (its own columns, the same shared customers); "
    "federated is the model over every organisation's columns"
)


def notes(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(organisation, note) for every note of the summary's organisations (:func:`organisation_notes`)."""
    return [(org, note) for org, o in summary["organisations"].items() for note in o.get("notes", [])]


def _plot_curves(coord: Coordinator, baselines: dict, key: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    rounds = [r.round_id for r in coord.history]
    ax.plot(rounds, [r.global_metrics.get(key, np.nan) for r in coord.history], color="black", lw=2, label="federation")
    for i, org in enumerate(coord.descriptions):
        color = f"C{i}"
        ax.plot(
            rounds,
            [r.org_metrics.get(org, {}).get(key, np.nan) for r in coord.history],
            color=color,
            label=f"{org} (federated)",
        )
        curve = baselines.get(org, {}).get("curve", {}).get(key)
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, color=color, ls="--", label=f"{org} (local only)")
    ax.set_xlabel("round")
    ax.set_ylabel(f"validation {key}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_gain(summary: dict, path: Path) -> None:
    rows = gain_rows(summary)
    if not rows:  # organisation_metrics: own: no organisation's figures at the coordinator
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r[2] for r in rows], 0.4, label="local only")
    ax.bar(x + 0.2, [r[3] for r in rows], 0.4, label="federated")
    ax.set_xticks(x, [r[0] for r in rows])
    ax.set_ylabel(summary["primary_metric"])
    lo = min(min(r[2], r[3]) for r in rows)
    hi = max(max(r[2], r[3]) for r in rows)
    if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
        ax.set_ylim(lo - 0.1 * (hi - lo) - 1e-3, hi + 0.1 * (hi - lo) + 1e-3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_importance(names: list[str], gains: np.ndarray, path: Path) -> None:
    order = np.argsort(gains)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1))
    ax.barh([names[i] for i in order], gains[order])
    ax.set_xlabel("total gain")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(coord: Coordinator, baselines: dict, summary: dict, model_text: str | None, folder: Path) -> Path:
    """Render the report (report.md, report.html, PNG plots) into ``folder``; return report.md."""
    import lightgbm as lgb

    folder.mkdir(parents=True, exist_ok=True)
    key = summary["primary_metric"]
    _plot_curves(coord, baselines, key, folder / "learning_curves.png")
    _plot_gain(summary, folder / "federation_gain.png")
    importance = None
    if model_text:
        booster = lgb.Booster(model_str=model_text)
        importance = booster.feature_importance("gain")
        _plot_importance(summary["feature_names"], importance, folder / "feature_importance.png")

    md = [
        f"# Federation report: {summary['name']}",
        "",
        f"Strategy **{summary['strategy']}**, objective {summary['objective']}, {summary['rounds']} rounds, "
        f"run `{summary['run_id']}`.",
        "",
        "## Federation gain (validation rows of each organisation)",
        "",
        f"| organisation | rows | local-only {key} | federated {key} | gain |",
        "|---|---:|---:|---:|---:|",
    ]
    for org, n, local, fed, gain in gain_rows(summary):
        md.append(f"| {org} | {n} | {local:.4f} | {fed:.4f} | {gain:+.4f} |")
    if notes(summary):
        md += [""] + [f"Note: {org}: {note}" for org, note in notes(summary)]
    if summary.get("partition") == "vertical":
        md += ["", VERTICAL_NOTE[0].upper() + VERTICAL_NOTE[1:]]
    md += [
        "",
        f"Federation-wide {key}: {summary['global'].get(key, float('nan')):.4f}",
        "",
        "![gain](federation_gain.png)",
        "",
        "## Learning curves",
        "",
        "![curves](learning_curves.png)",
        "",
    ]
    if importance is not None:
        md += ["## Feature importance (gain)", "", "| feature | gain |", "|---|---:|"]
        md += [f"| {n} | {g:.1f} |" for n, g in sorted(zip(summary["feature_names"], importance), key=lambda t: -t[1])]
        md += ["", "![importance](feature_importance.png)", ""]
    p = summary.get("privacy", {})
    md += [
        "## Privacy",
        "",
        f"Secure aggregation: {'on' if p.get('secure_aggregation') else 'off'} ({p.get('n_parties')} parties). "
        f"Differential privacy: {p.get('mechanism', 'none')}"
        + (f", epsilon {p['epsilon_total']:.3f} at delta {p['delta']:g}" if p.get("epsilon_total") else "")
        + ".",
        "",
    ]
    md += [f"Notice: {n}" for n in summary.get("notices", [])] + ([""] if summary.get("notices") else [])
    md += [
        "## Traffic",
        "",
        f"Bytes sent by parties: {summary['bytes_sent']:,}; bytes sent to parties: {summary['bytes_received']:,}.",
        "",
    ]
    (folder / "report.md").write_text("\n".join(md))
    (folder / "report.html").write_text(html_page(md, title="fedmine report"))
    return folder / "report.md"


def html_page(md: list[str], *, title: str) -> str:
    """A report's Markdown lines (headings, paragraphs, pipe tables, images) as one HTML page."""
    body = []
    for line in md:
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            body.append(f'<img src="{src}" alt="{src}">')
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    page, in_table = [], False
    for item in body:
        if item.startswith("<tr>") and not in_table:
            page.append("<table>")
            in_table = True
        if not item.startswith("<tr>") and in_table:
            page.append("</table>")
            in_table = False
        page.append(item)
    if in_table:
        page.append("</table>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "td{padding:2px 10px;border-bottom:1px solid #ddd}</style>"
        "</head><body>" + "\n".join(page) + "</body></html>"
    )
