"""The federated profile: distributions of the canonical features without moving rows.

The profile speaks the party protocol (:mod:`fedmine.protocol`, calls
``profile_*``), so an organisation is profiled the same way in this process
(a :class:`~fedmine.party.organisation.Party` prepared from its ``source``)
or behind its party server (a :class:`~fedmine.coordinator.client.RemoteParty`
at its ``endpoint``); its rows never leave it. Each step is aggregates only::

    party        profile_ranges()           -> min, max per feature (disclosed, as for binning)
    coordinator  shared grid per feature     make_grids(declared or merged ranges)
    party        secure_setup / secure_peers   key agreement (under secure aggregation)
    party        profile_counts(grid)       -> int64 counts per cell (summed: masked under secure aggregation)
    coordinator  totals = sum of counts      the masks cancel in the sum
    party        profile_view(grid, totals) -> its own summary and its PSI against the rest (disclosed)

The federation's counts, quantiles and category frequencies come from the
summed grid counts only. Each organisation's section is its *own view*: the
party computes it from its rows and the federation totals (``rest = totals -
own``), including the population stability index (PSI) of each feature
against the other organisations. A PSI above ``profile.psi_threshold`` flags
the feature; with the ratio of medians the report names a likely unit factor
(income in thousands at one organisation reads as ``x1000``). The summaries
themselves are :mod:`fedmine.schema.summary`'s, shared by both ends.

With secure aggregation the coordinator never sees a party's counts; the
own views are disclosed to it and gathered into one report, each section
labelled as that organisation's view.
"""

from __future__ import annotations

import json
import math
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmine import protocol
from fedmine.config import FederationConfig
from fedmine.coordinator.link import Link
from fedmine.gbdt.binning import make_grids
from fedmine.schema.summary import (  # noqa: F401 - PERCENTILES and psi: also this module's names (drift)
    PERCENTILES,
    PLOT_BINS,
    categorical_mask,
    cell_bounds,
    is_numeric,
    plot_groups,
    psi,
    summarise_counts,
)

if TYPE_CHECKING:
    from fedmine.party.organisation import Party

#: Grid cells per numeric feature (enough for percentiles; cheap to send).
N_GRID = 1024
#: Artifact folder of a profile run.
PROFILE_DIR = "profile"
PROFILE_JSON = "profile.json"


def nearest_factor(ratio: float, *, quantity: str | None = None, tolerance: float = 0.1) -> tuple[float, str] | None:
    """The known unit factor closest to ``ratio`` (within ``tolerance`` in log terms), if any.

    Substance factors (glucose, cholesterol) are considered only for a
    feature measuring that substance.
    """
    from fedmine.schema.units import likely_factors

    if not (ratio > 0 and math.isfinite(ratio)) or abs(math.log(ratio)) < math.log(3):
        return None
    candidates = likely_factors(quantity)
    best = min(candidates, key=lambda fw: abs(math.log(ratio / fw[0])))
    if abs(math.log(ratio / best[0])) <= tolerance:
        return best
    return None


def feature_specs(cfg: FederationConfig) -> list[dict[str, Any]]:
    """The canonical features as ``profile_view`` takes them: name, type, categories (config order)."""
    return [
        {"name": name, "type": f.type, "categories": list(f.categories or []) if f.type == "category" else None}
        for name, f in cfg.features.items()
    ]


# ---------------------------------------------------------------------------
# coordinator side
# ---------------------------------------------------------------------------


@dataclass
class FederatedProfile:
    """A federation's profile.

    Attributes
    ----------
    name : the federation.
    secure_aggregation : whether the totals came from masked sums.
    psi_threshold : ``profile.psi_threshold``.
    federation : summary of the summed counts (``rows``, ``features``).
    organisations : organisation -> its own view (``rows``, ``features``, ``problems``).
    flags : features whose PSI against the rest exceeds the threshold, largest first.
    plot_edges : feature -> bar edges of the plots (numeric features).
    drift : organisation -> feature -> PSI against the previous profile (filled by the caller).
    """

    name: str
    secure_aggregation: bool
    psi_threshold: float
    federation: dict[str, Any]
    organisations: dict[str, dict[str, Any]]
    flags: list[dict[str, Any]] = field(default_factory=list)
    plot_edges: dict[str, list[float]] = field(default_factory=dict)
    drift: dict[str, dict[str, float]] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "secure_aggregation": self.secure_aggregation,
            "psi_threshold": self.psi_threshold,
            "federation": self.federation,
            "organisations": self.organisations,
            "flags": self.flags,
            "plot_edges": self.plot_edges,
            "drift": self.drift,
            "notices": self.notices,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, default=_json_default, allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FederatedProfile:
        return cls(
            **{
                k: d[k]
                for k in (
                    "name",
                    "secure_aggregation",
                    "psi_threshold",
                    "federation",
                    "organisations",
                    "flags",
                    "plot_edges",
                    "drift",
                    "notices",
                )
                if k in d
            }
        )

    def flagged(self, org: str) -> list[str]:
        return [f["feature"] for f in self.flags if f["organisation"] == org]

    def to_text(self) -> str:
        """Tables for the console: federation, then each organisation's own view."""
        lines = [
            f"federated profile of {self.name} ({'secure aggregation' if self.secure_aggregation else 'plain sums'}; "
            f"PSI threshold {self.psi_threshold})",
            "",
        ]
        lines += _table("federation (summed counts)", self.federation, None)
        for org, view in self.organisations.items():
            lines += _table(f"{org} (its own view)", view, self.psi_threshold)
        if self.flags:
            lines.append(f"flagged (PSI against the other organisations above {self.psi_threshold}):")
            for f in self.flags:
                if not f.get("most"):
                    continue
                also = [g for g in self.flags if g["feature"] == f["feature"] and not g.get("most")]
                lines.append(
                    f"  {f['feature']}: {f['organisation']} departs most, PSI {f['psi']:.2f}"
                    + (f"; {f['hint']}" if f.get("hint") else "")
                )
                if also:
                    lines.append(
                        "    also above the threshold (partly because of it): "
                        + ", ".join(f"{g['organisation']} {g['psi']:.2f}" for g in also)
                    )
        else:
            lines.append("no feature departs from the other organisations")
        if self.drift:
            lines.append("")
            lines.append("drift since the previous profile (PSI):")
            for org, feats in self.drift.items():
                shown = ", ".join(f"{k} {v:.3f}" for k, v in feats.items())
                lines.append(f"  {org}: {shown}")
        for n in self.notices:
            lines.append(f"note: {n}")
        return "\n".join(lines)


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _fmt(v: float) -> str:
    if v is None or v != v:
        return "-"
    if abs(v) >= 1e5 or (abs(v) < 1e-2 and v != 0):
        return f"{v:.3g}"
    return f"{v:.4g}"


def _table(title: str, summary: dict[str, Any], threshold: float | None) -> list[str]:
    lines = [f"== {title}: {summary['rows']} rows"]
    for name, e in summary["features"].items():
        psi_text = ""
        if "psi" in e:
            mark = " !" if threshold is not None and e["psi"] == e["psi"] and e["psi"] > threshold else ""
            psi_text = f"  PSI {e['psi']:.3f}{mark}"
        if "quantiles" in e:
            q = e["quantiles"]
            body = (
                f"p5 {_fmt(q['p5'])}  p25 {_fmt(q['p25'])}  median {_fmt(q['p50'])}  "
                f"p75 {_fmt(q['p75'])}  p95 {_fmt(q['p95'])}"
            )
        else:
            total = sum(e["categories"].values()) or 1
            top = sorted(e["categories"].items(), key=lambda kv: -kv[1])[:4]
            body = "  ".join(f"{k} {v / total:.0%}" for k, v in top)
        lines.append(f"  {name:<22} n {e['count']:<7} missing {e['missing_rate']:.1%}  {body}{psi_text}")
    lines.append("")
    return lines


def profile_parties(
    cfg: FederationConfig, parties: list[Any], *, secure: bool | None = None, n_grid: int = N_GRID
) -> FederatedProfile:
    """Run the profile protocol over ``parties`` (coordinator side).

    Parameters
    ----------
    parties : anything answering ``call(name, ...)`` and naming its organisation in ``name``: a
        :class:`~fedmine.party.organisation.Party` in this process, a
        :class:`~fedmine.coordinator.client.RemoteParty` at its endpoint, or a :class:`Link` to either.
    secure : mask the grid counts (default: ``cfg.secure_aggregation``).
    """
    from fedmine.privacy.secure_agg import SecureAggregationWarning

    cfg.privacy.check_outside_budget("profile")
    links = [p if isinstance(p, Link) else Link(p) for p in parties]
    secure = cfg.secure_aggregation if secure is None else secure
    notices = []
    if secure and len(links) < 2:
        secure = False
        notices.append("secure aggregation needs 2 or more organisations; the profile used plain sums")
    if secure and len(links) == 2:
        notices.append("with two organisations each can read the other's counts from the federation totals")
    features = feature_specs(cfg)
    feats = list(cfg.features.values())
    categorical = categorical_mask(features)
    n_vocab = max([len(f.categories) for f in feats if f.type == "category"] + [2])
    n_grid = max(n_grid, n_vocab)

    profile_id = f"profile-{uuid.uuid4().hex}"
    for link in links:  # a session of its own: no keys or masks of an earlier training or profile remain
        link.call("begin_training", profile_id)
    ranges = protocol.merge("profile_ranges", [link.call("profile_ranges") for link in links])
    for i, f in enumerate(feats):
        if f.type == "category" or f.type == "bool":
            ranges[i] = (0, n_grid - 1)
        elif f.min is not None and f.max is not None:
            ranges[i] = (min(f.min, ranges[i, 0]), max(f.max, ranges[i, 1]))  # out-of-range values stay visible
    uniform = make_grids(ranges, n_grid=n_grid)
    log = make_grids(ranges, n_grid=n_grid, spacing="log")
    lo, hi = ranges[:, 0], ranges[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        use_log = (lo > 0) & (hi / lo >= 100) & ~categorical
    grids = np.where(use_log[:, None], log, uniform)
    lows = np.where(np.isfinite(lo), lo, 0.0)

    if secure:  # the table's key agreement: the coordinator relays public keys, the parties mask summed answers
        keys = {link.name: link.call("secure_setup", profile_id) for link in links}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecureAggregationWarning)  # the profile's notices say it once
            for link in links:
                link.call("secure_peers", keys)
    totals = protocol.merge("profile_counts", [link.call("profile_counts", grids, categorical) for link in links])

    plot_edges: dict[str, list[float]] = {}
    groups = plot_groups(n_grid)
    for i, (name, f) in enumerate(cfg.features.items()):
        if is_numeric(f.type):
            lower, upper = cell_bounds(grids[i], lows[i])
            plot_edges[name] = [float(lower[0])] + [float(upper[groups == g].max()) for g in range(PLOT_BINS)]

    federation = summarise_counts(features, grids, lows, totals)
    organisations = {link.name: link.call("profile_view", grids, lows, totals, features) for link in links}
    threshold = cfg.profile.psi_threshold
    flags = []
    for org, view in organisations.items():
        for name, e in view["features"].items():
            value = e.get("psi", float("nan"))
            if value == value and value > threshold:
                hint = ""
                ratio = e.get("median_ratio", float("nan"))
                feat = cfg.features[name]
                found = nearest_factor(ratio, quantity=feat.quantity or name) if ratio == ratio else None
                if found:
                    hint = f"its median is {ratio:.3g} times the others' ({found[1]}?): a unit mistake?"
                elif ratio == ratio and ratio > 0:
                    hint = f"its median is {ratio:.3g} times the others'"
                flags.append({"organisation": org, "feature": name, "psi": value, "hint": hint})
    flags.sort(key=lambda f: -f["psi"])
    seen: set[str] = set()
    for f in flags:  # the organisation departing most from the rest, per feature
        f["most"] = f["feature"] not in seen
        seen.add(f["feature"])
    if len(parties) < 2:
        notices.append("one organisation: there is no rest to compare it with (PSI not computed)")
        for view in organisations.values():
            for e in view["features"].values():
                e.pop("psi", None)
                e.pop("median_ratio", None)
        flags = []
    return FederatedProfile(
        cfg.name, bool(secure), threshold, federation, organisations, flags, plot_edges, notices=notices
    )


def prepare_party(cfg: FederationConfig, org: str, *, collect: bool = True) -> Party:
    """``org``'s party made here from its ``source``: load, harmonise, split as a training's party is made.

    ``collect=True`` keeps going past schema violations (their values become
    missing; ``fedmine schema check`` lists them).
    """
    from fedmine import connectors
    from fedmine.errors import ConfigError
    from fedmine.party.organisation import Party
    from fedmine.schema.harmonise import harmonise

    spec = cfg.organisations[org]
    if spec.source is None:
        raise ConfigError(
            f"organisations.{org}.source: not set; an organisation with only an endpoint is "
            "profiled at its party server"
        )
    frame = connectors.load(spec.source, spec.read, base_dir=cfg.base_dir, org=org)
    data = harmonise(frame, cfg, org, collect=collect)
    return Party.for_organisation(cfg, org, data, enforce_policy=False)


def profile_federation(
    cfg: FederationConfig, orgs: list[str] | None = None, *, secure: bool | None = None
) -> FederatedProfile:
    """Profile every organisation (or ``orgs``): made here from its ``source``, or at its ``endpoint``.

    An organisation with an ``endpoint`` is reached at its party server over
    mutual TLS (:func:`fedmine.coordinator.client.connect`); its rows are read there.
    """
    from fedmine.coordinator.client import connect

    cfg.privacy.check_outside_budget("profile")  # before any organisation's rows are read
    parties: list[Any] = []
    try:
        for org in orgs or list(cfg.organisations):
            parties.append(connect(cfg, org) if cfg.organisations[org].endpoint else prepare_party(cfg, org))
        return profile_parties(cfg, parties, secure=secure)
    finally:
        for party in parties:
            close = getattr(party, "close", None)
            if close is not None:
                close()


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def _plot(profile: FederatedProfile, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fed = profile.federation["features"][name]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=90)
    if "plot" in fed:
        edges = np.asarray(profile.plot_edges[name])
        widths = np.diff(edges)
        total = max(sum(fed["plot"]), 1)
        ax.bar(
            edges[:-1],
            np.asarray(fed["plot"]) / total,
            width=widths,
            align="edge",
            color="#cccccc",
            label="federation (summed)",
        )
        for org, view in profile.organisations.items():
            own = np.asarray(view["features"][name].get("plot", []), dtype=float)
            if own.size:
                ax.step(edges[:-1], own / max(own.sum(), 1), where="post", label=f"{org} (own view)")
        if edges[0] > 0 and edges[-1] / edges[0] >= 100:
            ax.set_xscale("log")
        ax.set_ylabel("share of values")
    else:
        cats = list(fed["categories"])
        x = np.arange(len(cats))
        n = len(profile.organisations) + 1
        w = 0.8 / n
        total = max(sum(fed["categories"].values()), 1)
        ax.bar(x, [fed["categories"][c] / total for c in cats], width=w, color="#cccccc", label="federation (summed)")
        for k, (org, view) in enumerate(profile.organisations.items(), start=1):
            own = view["features"][name]["categories"]
            t = max(sum(own.values()), 1)
            ax.bar(x + k * w, [own[c] / t for c in cats], width=w, label=f"{org} (own view)")
        ax.set_xticks(x + 0.4 - w / 2, cats, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("share of rows")
    ax.set_title(name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(profile: FederatedProfile, folder: str | Path) -> Path:
    """Write profile.html, profile.json and one PNG per feature into ``folder``; return the HTML path."""
    import html

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROFILE_JSON).write_text(profile.to_json())
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Profile: {e(profile.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}.flag{color:#b00;font-weight:bold}</style>",
        f"</head><body><h1>Federated profile: {e(profile.name)}</h1>",
        "<p>Federation totals from "
        f"{'masked sums (secure aggregation)' if profile.secure_aggregation else 'plain sums'} "
        f"of counts on a shared grid. Each organisation's section is <b>its own view</b>: computed inside the "
        f"organisation from its rows and the federation totals. PSI threshold: {profile.psi_threshold}.</p>",
    ]
    if profile.flags:
        parts.append("<h2>Flagged</h2><ul>")
        for f in profile.flags:
            parts.append(
                f"<li class='flag'>{e(f['organisation'])}.{e(f['feature'])}: "
                f"PSI {f['psi']:.2f} {e(f.get('hint', ''))}</li>"
            )
        parts.append("</ul>")
    for note in profile.notices:
        parts.append(f"<p><i>{e(note)}</i></p>")
    sections = [("federation (summed counts)", profile.federation)] + [
        (f"{org} (its own view)", v) for org, v in profile.organisations.items()
    ]
    for title, summary in sections:
        parts.append(
            f"<h2>{e(title)}: {summary['rows']} rows</h2><table><tr><th>feature</th><th>count</th>"
            "<th>missing</th><th>p5</th><th>p25</th><th>median</th><th>p75</th><th>p95</th>"
            "<th>categories</th><th>PSI vs rest</th></tr>"
        )
        for name, f in summary["features"].items():
            q = f.get("quantiles", {})
            cats = ", ".join(f"{k}: {v}" for k, v in f.get("categories", {}).items())
            value = f.get("psi")
            flag = value is not None and value == value and value > profile.psi_threshold
            psi_cell = "" if value is None else f"<span class='{'flag' if flag else ''}'>{value:.3f}</span>"
            parts.append(
                f"<tr><td>{e(name)}</td><td>{f['count']}</td><td>{f['missing_rate']:.1%}</td>"
                + "".join(
                    f"<td>{_fmt(q[k])}</td>" if k in q else "<td></td>" for k in ("p5", "p25", "p50", "p75", "p95")
                )
                + f"<td>{e(cats)}</td><td>{psi_cell}</td></tr>"
            )
        parts.append("</table>")
        problems = summary.get("problems")
        if problems:
            parts.append(
                f"<p>{len(problems)} schema violations (values made missing); "
                "run <code>fedmine schema check</code>.</p>"
            )
    if profile.drift:
        parts.append(
            "<h2>Drift since the previous profile (PSI)</h2>"
            "<table><tr><th>organisation</th><th>feature</th><th>PSI</th></tr>"
        )
        for org, feats in profile.drift.items():
            for name, v in feats.items():
                parts.append(f"<tr><td>{e(org)}</td><td>{e(name)}</td><td>{v:.3f}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Distributions</h2>")
    for name in profile.federation["features"]:
        png = f"{_safe(name)}.png"
        _plot(profile, name, folder / png)
        parts.append(f"<h3>{e(name)}</h3><img src='{e(png)}' alt='{e(name)}'>")
    parts.append("</body></html>")
    out = folder / "profile.html"
    out.write_text("\n".join(parts))
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
