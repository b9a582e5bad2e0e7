"""The federation's explanation of the global model: mean |SHAP| per feature, from masked sums.

This module owns the coordinator's side of ``fedmine explain``. Over the
parties (in process, at their party servers, or links to either) it runs a
session of its own::

    coordinator                                  each organisation
    begin_training, describe            ->       its features must be the model's
    secure_setup / secure_peers         ->       key agreement (2+ organisations)
    shap_sums(model, scale)             ->       int64 (n_outputs, n_features + 1), masked
    sum over organisations: mean |SHAP| = sums / scale / rows
    shap_plots(model, order, ...)       ->       plots of its own rows, written where they are

The coordinator sees the federation's sums only (secure aggregation), and
never a row, a SHAP value or a plot of an organisation. The report puts the
mean |SHAP| beside the model's gain importance (:func:`write_report`).
"""

from __future__ import annotations

import math
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmine import protocol
from fedmine.config import FederationConfig
from fedmine.coordinator.link import Link
from fedmine.errors import DataError

#: Finest fixed-point scale used (a row's |SHAP| is rounded to 2**-40, about 1e-12).
FINEST_SCALE = 2.0**40
#: Sums stay below this bound (int64 holds 2**63; the rest is headroom).
SUM_BOUND = 2.0**62


def shap_bound(model_text: str) -> float:
    """An upper bound on any row's |SHAP| of one feature: the sum over trees of (largest - smallest leaf).

    A feature's SHAP value in one tree is a weighted mean of differences of
    the tree's conditional expectations, each between its smallest and largest
    leaf, so it cannot exceed that spread; over trees the spreads add.
    """
    bound = 0.0
    for line in model_text.splitlines():
        if line.startswith("leaf_value="):
            values = np.array(line[len("leaf_value=") :].split(), dtype=np.float64)
            if values.size:
                bound += float(values.max() - values.min())
    return bound


def fixed_point_scale(model_text: str, rows: int) -> float:
    """A power of two for which ``rows`` rows' fixed-point |SHAP| sums stay below :data:`SUM_BOUND`."""
    worst = max(shap_bound(model_text), 1e-300) * max(rows, 1)
    return float(min(FINEST_SCALE, 2.0 ** math.floor(math.log2(SUM_BOUND / worst))))


def output_names(cfg: FederationConfig) -> list[str]:
    """One name per model output: the classes of a multiclass model, else ``raw score``."""
    return [str(c) for c in cfg.classes or []] if cfg.objective == "multiclass" else ["raw score"]


@dataclass
class Explanation:
    """The federation's explanation of one model.

    Attributes
    ----------
    name : the federation's name.
    features : canonical feature names, in column order.
    outputs : a name per model output (:func:`output_names`).
    mean_abs : ndarray of shape (n_outputs, n_features): the federation's mean |SHAP|.
    gain : ndarray of shape (n_features,): the model's total split gain per feature.
    rows : rows explained (all rows of the organisations taking part).
    organisations : the organisations taking part.
    secure_aggregation : whether the sums were masked.
    scale : the fixed-point scale of the sums.
    org_rows : each organisation's rows, as it told them (``row_counts``, under ``organisation_metrics: shared``).
    """

    name: str
    features: list[str]
    outputs: list[str]
    mean_abs: np.ndarray
    gain: np.ndarray
    rows: int
    organisations: list[str]
    secure_aggregation: bool
    scale: float
    org_rows: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def order(self) -> np.ndarray:
        """Feature indices by mean |SHAP| (over outputs), largest first; ties in column order."""
        total = self.mean_abs.sum(axis=0)
        return np.lexsort((np.arange(total.size), -total))

    def as_dict(self) -> dict[str, Any]:
        """Plain data (the ``--summary-json`` file and the run's ``explain/explanation.json``)."""
        return {
            "name": self.name,
            "rows": int(self.rows),
            "organisations": list(self.organisations),
            "secure_aggregation": bool(self.secure_aggregation),
            "scale": float(self.scale),
            "outputs": list(self.outputs),
            "mean_abs_shap": {
                out: {self.features[i]: float(self.mean_abs[j, i]) for i in self.order()}
                for j, out in enumerate(self.outputs)
            },
            "gain": {self.features[i]: float(self.gain[i]) for i in self.order()},
            "notices": list(self.notices),
        }


def explain_parties(
    cfg: FederationConfig,
    parties: list[Any],
    model_text: str,
    *,
    secure: bool | None = None,
    plots: bool | list[str] = True,
) -> Explanation:
    """Explain ``model_text`` over ``parties`` (coordinator side; see the module docstring).

    Parameters
    ----------
    parties : anything answering ``call(name, ...)`` and naming its organisation in ``name``.
    secure : mask the sums; default: unless ``privacy.secure_aggregation`` is false, whenever two or
        more organisations take part (whatever the training's strategy: these are sums).
    plots : ask every party (True), none (False) or those named to write their own plots (``shap_plots``).
        Every party takes part in the sums either way.
    """
    import lightgbm as lgb

    from fedmine.privacy.secure_agg import SecureAggregationWarning
    from fedmine.schema.profiler import feature_specs

    cfg.privacy.check_outside_budget("explain")
    links = [p if isinstance(p, Link) else Link(p) for p in parties]
    notices: list[str] = []
    if secure is None:
        secure = cfg.privacy.secure_aggregation is not False and len(links) >= 2
    if secure and len(links) < 2:
        secure = False
        notices.append("secure aggregation needs 2 or more organisations; the sums were sent plain")
    if secure and len(links) == 2:
        notices.append("with two organisations each can read the other's sums from the federation's")
    session = f"explain-{uuid.uuid4().hex}"
    org_rows: dict[str, int] = {}
    for link in links:  # a session of its own: no keys or masks of a training remain
        link.call("begin_training", session)
        d = link.call("describe")
        if d["features"] != list(cfg.features):
            raise DataError(f"organisation {link.name}: features {d['features']} differ from the canonical schema")
        if cfg.privacy.shares_organisation_metrics:  # each organisation's own count: disclosed by row_counts
            counts = link.call("row_counts")
            org_rows[link.name] = int(counts["n_rows"]) + int(counts["n_valid"])
    if secure:
        keys = {link.name: link.call("secure_setup", session) for link in links}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecureAggregationWarning)  # the notices say it once
            for link in links:
                link.call("secure_peers", keys)
    totals = protocol.merge("label_totals", [link.call("label_totals") for link in links])  # summed (masked)
    scale = fixed_point_scale(model_text, int(totals[0]) + int(totals[1]))
    sums = protocol.merge("shap_sums", [link.call("shap_sums", model_text, scale) for link in links])
    sums = np.asarray(sums, dtype=np.int64)
    total = int(sums[0, -1])
    mean_abs = sums[:, :-1].astype(np.float64) / scale / max(total, 1)
    gain = lgb.Booster(model_str=model_text).feature_importance("gain").astype(np.float64)
    explanation = Explanation(
        cfg.name,
        list(cfg.features),
        output_names(cfg),
        mean_abs,
        gain,
        total,
        [link.name for link in links],
        bool(secure),
        scale,
        org_rows,
        notices,
    )
    if plots:
        specs, order, outputs = feature_specs(cfg), explanation.order(), explanation.outputs
        for link in links:
            if plots is True or link.name in plots:
                link.call("shap_plots", model_text, order, specs, outputs)
    return explanation


def _plot(explanation: Explanation, path: Path) -> None:
    """Mean |SHAP| and gain importance side by side, features in the explanation's order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = explanation.order()[::-1]
    names = [explanation.features[i] for i in order]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.4 * len(names) + 1.5), sharey=True)
    start = np.zeros(len(order))
    for j, out in enumerate(explanation.outputs):
        values = explanation.mean_abs[j, order]
        left.barh(names, values, left=start, label=out if len(explanation.outputs) > 1 else None, color=f"C{j}")
        start = start + values
    left.set_xlabel("mean |SHAP| (federation)")
    if len(explanation.outputs) > 1:
        left.legend(fontsize=7)
    right.barh(names, explanation.gain[order], color="#777777")
    right.set_xlabel("total gain (the model's)")
    fig.suptitle(f"{explanation.name}: {explanation.rows} rows of {len(explanation.organisations)} organisations")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(explanation: Explanation, folder: str | Path, *, model: str = "") -> Path:
    """Render the explanation (report.md, report.html, importance.png, explanation.json) into ``folder``."""
    import json

    from fedmine.report import html_page

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _plot(explanation, folder / "importance.png")
    (folder / "explanation.json").write_text(json.dumps(explanation.as_dict(), indent=2))
    total_gain = float(explanation.gain.sum()) or 1.0
    heads = " | ".join(f"mean abs SHAP ({o})" for o in explanation.outputs)
    md = [
        f"# Explanation: {explanation.name}",
        "",
        f"Model `{model}`, explained on all {explanation.rows} rows of "
        f"{', '.join(explanation.organisations)}, inside each organisation (LightGBM's TreeSHAP, pred_contrib). "
        + (
            "The coordinator saw masked sums only (secure aggregation)."
            if explanation.secure_aggregation
            else "The sums were sent plain."
        ),
        "",
        "## Mean |SHAP| per feature, gain importance beside it",
        "",
        f"| feature | {heads} | gain | gain share |",
        "|---|" + "---:|" * (len(explanation.outputs) + 2),
    ]
    for i in explanation.order():
        shap = " | ".join(f"{explanation.mean_abs[j, i]:.4f}" for j in range(len(explanation.outputs)))
        g = explanation.gain[i]
        md.append(f"| {explanation.features[i]} | {shap} | {g:.1f} | {g / total_gain:.1%} |")
    md += [
        "",
        "![importance](importance.png)",
        "",
        "Each organisation's summary and dependence plots of its own rows stay with it "
        "(in its nested run when run in one process, in its party server's output folder otherwise).",
        "",
    ]
    md += [f"Notice: {n}" for n in explanation.notices]
    (folder / "report.md").write_text("\n".join(md) + "\n")
    (folder / "report.html").write_text(html_page(md, title=f"fedmine explanation: {explanation.name}"))
    return folder / "report.md"
