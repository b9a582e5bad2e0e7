"""The federated profile: distributions of the canonical features without moving rows.

Protocol (each step is aggregates only)::

    party        describe()                 -> rows, missing count per feature
    party        ranges()                   -> min, max per numeric feature (as for binning)
    coordinator  shared grid per feature     make_grids(declared or merged ranges)
    party        grid_counts(grid)          -> int64 counts per cell (masked when secure aggregation is on)
    coordinator  totals = sum of counts      unmask_sum(...) under secure aggregation
    party        own_view(grid, totals)     -> its own summary and its PSI against the rest

The federation's counts, quantiles and category frequencies come from the
summed grid counts only. Each organisation's section is its *own view*: the
party computes it from its rows and the federation totals (``rest = totals -
own``), including the population stability index (PSI) of each feature
against the other organisations. A PSI above ``profile.psi_threshold`` flags
the feature; with the ratio of medians the report names a likely unit factor
(income in thousands at one organisation reads as ``x1000``).

With secure aggregation the coordinator never sees a party's counts; in this
in-process profile every organisation's own view is gathered into one report,
each section labelled as that organisation's view.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmine.config import FederationConfig
from fedmine.gbdt.binning import feature_ranges, grid_counts, make_grids, merge_ranges
from fedmine.schema.harmonise import HarmonisedFrame

#: Grid cells per numeric feature (enough for percentiles; cheap to send).
N_GRID = 1024
#: Quantiles shown in tables.
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Percentiles stored for drift (1 .. 99).
PERCENTILES = tuple(i / 100 for i in range(1, 100))
#: Bins of the PSI: groups of cells holding about a tenth of the federation's values each.
PSI_BINS = 10
#: Floor of a bin's share in the PSI (a bin empty on one side would be infinite).
PSI_FLOOR = 1e-4
#: Plot bars per numeric feature.
PLOT_BINS = 32
#: Artifact folder of a profile run.
PROFILE_DIR = "profile"
PROFILE_JSON = "profile.json"


def is_numeric(kind: str) -> bool:
    return kind in ("float", "int", "date")


# ---------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------


def psi(p_counts, q_counts, *, floor: float = PSI_FLOOR) -> float:
    """Population stability index of two histograms over the same bins.

    ``sum((p - q) * ln(p / q))`` over shares, each share floored at ``floor``.
    0 for identical shares; 0.1 is a small shift, above 0.25 a large one.
    NaN when either side is empty.
    """
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p = np.maximum(p / p.sum(), floor)
    q = np.maximum(q / q.sum(), floor)
    return float(np.sum((p - q) * np.log(p / q)))


def cell_bounds(grid: np.ndarray, lo: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of each grid cell (cell 0 starts at ``lo``)."""
    upper = np.asarray(grid, dtype=np.float64)
    lower = np.concatenate([[min(lo, upper[0])], upper[:-1]])
    return lower, upper


def grid_quantiles(counts: np.ndarray, grid: np.ndarray, lo: float, qs) -> list[float]:
    """Quantiles from cell counts, interpolating linearly inside the cell (NaN when empty)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return [float("nan")] * len(qs)
    lower, upper = cell_bounds(grid, lo)
    cum = np.cumsum(counts)
    out = []
    for q in qs:
        target = q * total
        j = int(np.searchsorted(cum, target, side="left"))
        j = min(j, len(counts) - 1)
        before = cum[j] - counts[j]
        frac = (target - before) / counts[j] if counts[j] > 0 else 0.0
        out.append(float(lower[j] + (upper[j] - lower[j]) * min(max(frac, 0.0), 1.0)))
    return out


def equal_mass_groups(counts: np.ndarray, n_bins: int) -> np.ndarray:
    """Group index per cell so that each group holds about ``1 / n_bins`` of the counts."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return np.zeros(len(counts), dtype=np.int64)
    cum_before = np.cumsum(counts) - counts
    return np.minimum((cum_before / total * n_bins).astype(np.int64), n_bins - 1)


def grouped(counts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return np.bincount(groups, weights=np.asarray(counts, dtype=np.float64), minlength=int(groups.max()) + 1)


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


# ---------------------------------------------------------------------------
# party side
# ---------------------------------------------------------------------------


class ProfileParty:
    """An organisation's end of the profile: holds canonical rows, answers with aggregates.

    Parameters
    ----------
    name : the organisation.
    data : its harmonised rows (never sent).
    cfg : the federation config (feature types and vocabularies).
    """

    def __init__(self, name: str, data: HarmonisedFrame, cfg: FederationConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.problems = list(data.report.get("problems", []))
        self._X = data.X
        self._masker = None
        self._keypair = None

    # -- plain answers ------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Rows and missing count per feature."""
        return {"rows": int(self._X.shape[0]), "missing": np.isnan(self._X).sum(axis=0).astype(np.int64)}

    def ranges(self) -> np.ndarray:
        """Per-feature (min, max), shape (n_features, 2)."""
        return feature_ranges(self._X)

    def grid_counts(self, grids: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """Counts per cell, shape (n_features, n_grid + 1), int64; last column: missing."""
        return grid_counts(self._X, grids, categorical=categorical)

    # -- secure aggregation -------------------------------------------------
    def public_key(self) -> bytes:
        from fedmine.privacy.secure_agg import generate_keypair

        self._keypair = generate_keypair()
        return self._keypair.public_bytes

    def set_peers(self, peers: dict[str, bytes], profile_id: str) -> None:
        import warnings

        from fedmine.privacy.secure_agg import Masker, SecureAggregationWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecureAggregationWarning)  # the profile reports it once
            self._masker = Masker(self.name, self._keypair, peers, profile_id)

    def masked_grid_counts(self, grids: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """:meth:`grid_counts` masked for the sum (uint64): the coordinator learns only the total."""
        return self._masker.mask(self.grid_counts(grids, categorical), "profile.grid_counts")

    # -- own view -----------------------------------------------------------
    def own_view(self, grids: np.ndarray, lows: np.ndarray, totals: np.ndarray, *,
                 plot_groups: list[np.ndarray | None]) -> dict[str, Any]:
        """This organisation's summary, from its rows and the federation's totals.

        Returns per feature: count, missing rate, quantiles and percentiles
        (numeric) or category counts, its PSI against the other organisations
        (``totals - own``), the ratio of its median to theirs and its plot
        histogram.
        """
        own = self.grid_counts(grids, _categorical_mask(self.cfg))
        return summarise_counts(self.cfg, grids, lows, own, rest=totals - own, plot_groups=plot_groups)


def _categorical_mask(cfg: FederationConfig) -> np.ndarray:
    return np.array([f.type in ("category", "bool") for f in cfg.features.values()], dtype=bool)


def summarise_counts(cfg: FederationConfig, grids: np.ndarray, lows: np.ndarray, counts: np.ndarray, *,
                     rest: np.ndarray | None = None, plot_groups: list[np.ndarray | None]) -> dict[str, Any]:
    """Per-feature summary of grid counts; with ``rest``, the PSI and median ratio against it."""
    features: dict[str, Any] = {}
    rows = int(counts[0].sum()) if len(counts) else 0
    for i, (name, feat) in enumerate(cfg.features.items()):
        c = counts[i, :-1]
        n_missing = int(counts[i, -1])
        count = int(c.sum())
        entry: dict[str, Any] = {"type": feat.type, "count": count,
                                 "missing_rate": n_missing / rows if rows else float("nan")}
        if is_numeric(feat.type):
            grid, lo = grids[i], float(lows[i])
            qs = grid_quantiles(c, grid, lo, QUANTILES)
            if feat.type in ("int", "date"):  # whole values: the interpolation inside a cell is noise
                qs = [float(np.round(v)) if v == v else v for v in qs]
            entry["quantiles"] = dict(zip((f"p{int(q * 100)}" for q in QUANTILES), qs))
            entry["percentiles"] = grid_quantiles(c, grid, lo, PERCENTILES)
            if plot_groups[i] is not None:
                entry["plot"] = grouped(c, plot_groups[i]).tolist()
            if rest is not None:
                r = rest[i, :-1]
                groups = equal_mass_groups(c + r, PSI_BINS)
                entry["psi"] = psi(grouped(c, groups), grouped(r, groups))
                med_own = grid_quantiles(c, grid, lo, (0.5,))[0]
                med_rest = grid_quantiles(r, grid, lo, (0.5,))[0]
                entry["median_ratio"] = (med_own / med_rest) if med_rest not in (0.0,) and med_rest == med_rest else float("nan")
        else:
            vocab = feat.categories if feat.type == "category" else ["false", "true"]
            entry["categories"] = {str(v): int(c[j]) for j, v in enumerate(vocab)}
            if rest is not None:
                entry["psi"] = psi(c[: len(vocab)], rest[i, : len(vocab)])
        features[name] = entry
    return {"rows": rows, "features": features}


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
        return {"name": self.name, "secure_aggregation": self.secure_aggregation,
                "psi_threshold": self.psi_threshold, "federation": self.federation,
                "organisations": self.organisations, "flags": self.flags,
                "plot_edges": self.plot_edges, "drift": self.drift, "notices": self.notices}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, default=_json_default, allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FederatedProfile:
        return cls(**{k: d[k] for k in ("name", "secure_aggregation", "psi_threshold", "federation",
                                         "organisations", "flags", "plot_edges", "drift", "notices") if k in d})

    def flagged(self, org: str) -> list[str]:
        return [f["feature"] for f in self.flags if f["organisation"] == org]

    def to_text(self) -> str:
        """Tables for the console: federation, then each organisation's own view."""
        lines = [f"federated profile of {self.name} ({'secure aggregation' if self.secure_aggregation else 'plain sums'}; "
                 f"PSI threshold {self.psi_threshold})", ""]
        lines += _table("federation (summed counts)", self.federation, None)
        for org, view in self.organisations.items():
            lines += _table(f"{org} (its own view)", view, self.psi_threshold)
        if self.flags:
            lines.append(f"flagged (PSI against the other organisations above {self.psi_threshold}):")
            for f in self.flags:
                if not f.get("most"):
                    continue
                also = [g for g in self.flags if g["feature"] == f["feature"] and not g.get("most")]
                lines.append(f"  {f['feature']}: {f['organisation']} departs most, PSI {f['psi']:.2f}"
                             + (f"; {f['hint']}" if f.get("hint") else ""))
                if also:
                    lines.append("    also above the threshold (partly because of it): "
                                 + ", ".join(f"{g['organisation']} {g['psi']:.2f}" for g in also))
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
            body = (f"p5 {_fmt(q['p5'])}  p25 {_fmt(q['p25'])}  median {_fmt(q['p50'])}  "
                    f"p75 {_fmt(q['p75'])}  p95 {_fmt(q['p95'])}")
        else:
            total = sum(e["categories"].values()) or 1
            top = sorted(e["categories"].items(), key=lambda kv: -kv[1])[:4]
            body = "  ".join(f"{k} {v / total:.0%}" for k, v in top)
        lines.append(f"  {name:<22} n {e['count']:<7} missing {e['missing_rate']:.1%}  {body}{psi_text}")
    lines.append("")
    return lines


def profile_parties(cfg: FederationConfig, parties: list[ProfileParty], *, secure: bool | None = None,
                    n_grid: int = N_GRID) -> FederatedProfile:
    """Run the profile protocol over ``parties`` (coordinator side).

    Parameters
    ----------
    secure : mask the grid counts (default: ``cfg.secure_aggregation``).
    """
    from fedmine.privacy.secure_agg import unmask_sum

    secure = cfg.secure_aggregation if secure is None else secure
    notices = []
    if secure and len(parties) < 2:
        secure = False
        notices.append("secure aggregation needs 2 or more organisations; the profile used plain sums")
    if secure and len(parties) == 2:
        notices.append("with two organisations each can read the other's counts from the federation totals")
    feats = list(cfg.features.values())
    categorical = _categorical_mask(cfg)
    n_vocab = max([len(f.categories) for f in feats if f.type == "category"] + [2])
    n_grid = max(n_grid, n_vocab)

    ranges = merge_ranges(np.stack([p.ranges() for p in parties]))
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

    if secure:
        profile_id = f"profile-{uuid.uuid4().hex}"
        keys = {p.name: p.public_key() for p in parties}
        for p in parties:
            p.set_peers(keys, profile_id)
        totals = unmask_sum([p.masked_grid_counts(grids, categorical) for p in parties])
    else:
        totals = sum(p.grid_counts(grids, categorical) for p in parties)

    plot_groups: list[np.ndarray | None] = []
    plot_edges: dict[str, list[float]] = {}
    for i, (name, f) in enumerate(cfg.features.items()):
        if is_numeric(f.type):
            groups = np.arange(n_grid) * PLOT_BINS // n_grid
            plot_groups.append(groups)
            lower, upper = cell_bounds(grids[i], lows[i])
            plot_edges[name] = [float(lower[0])] + [float(upper[groups == g].max()) for g in range(PLOT_BINS)]
        else:
            plot_groups.append(None)

    federation = summarise_counts(cfg, grids, lows, totals, plot_groups=plot_groups)
    organisations = {}
    for p in parties:
        view = p.own_view(grids, lows, totals, plot_groups=plot_groups)
        view["problems"] = p.problems
        organisations[p.name] = view
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
    return FederatedProfile(cfg.name, bool(secure), threshold, federation, organisations, flags, plot_edges,
                            notices=notices)


def prepare_profile_parties(cfg: FederationConfig, orgs: list[str] | None = None, *,
                            collect: bool = True) -> list[ProfileParty]:
    """Each organisation loads and harmonises its own rows into a :class:`ProfileParty`.

    ``collect=True`` keeps going past schema violations (their values become
    missing; ``fedmine schema check`` lists them).
    """
    from fedmine import connectors
    from fedmine.schema.harmonise import harmonise

    parties = []
    for org in orgs or list(cfg.organisations):
        spec = cfg.organisations[org]
        frame = connectors.load(spec.source, spec.read, base_dir=cfg.base_dir, org=org)
        parties.append(ProfileParty(org, harmonise(frame, cfg, org, collect=collect), cfg))
    return parties


def profile_federation(cfg: FederationConfig, orgs: list[str] | None = None, *,
                       secure: bool | None = None) -> FederatedProfile:
    """Prepare every organisation (or ``orgs``) and profile them together."""
    return profile_parties(cfg, prepare_profile_parties(cfg, orgs), secure=secure)


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
        ax.bar(edges[:-1], np.asarray(fed["plot"]) / total, width=widths, align="edge", color="#cccccc",
               label="federation (summed)")
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
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Profile: {e(profile.name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}.flag{color:#b00;font-weight:bold}</style>",
             f"</head><body><h1>Federated profile: {e(profile.name)}</h1>",
             "<p>Federation totals from "
             f"{'masked sums (secure aggregation)' if profile.secure_aggregation else 'plain sums'} "
             f"of counts on a shared grid. Each organisation's section is <b>its own view</b>: computed inside the "
             f"organisation from its rows and the federation totals. PSI threshold: {profile.psi_threshold}.</p>"]
    if profile.flags:
        parts.append("<h2>Flagged</h2><ul>")
        for f in profile.flags:
            parts.append(f"<li class='flag'>{e(f['organisation'])}.{e(f['feature'])}: "
                         f"PSI {f['psi']:.2f} {e(f.get('hint', ''))}</li>")
        parts.append("</ul>")
    for note in profile.notices:
        parts.append(f"<p><i>{e(note)}</i></p>")
    sections = [("federation (summed counts)", profile.federation)] + [
        (f"{org} (its own view)", v) for org, v in profile.organisations.items()]
    for title, summary in sections:
        parts.append(f"<h2>{e(title)}: {summary['rows']} rows</h2><table><tr><th>feature</th><th>count</th>"
                     "<th>missing</th><th>p5</th><th>p25</th><th>median</th><th>p75</th><th>p95</th>"
                     "<th>categories</th><th>PSI vs rest</th></tr>")
        for name, f in summary["features"].items():
            q = f.get("quantiles", {})
            cats = ", ".join(f"{k}: {v}" for k, v in f.get("categories", {}).items())
            value = f.get("psi")
            flag = value is not None and value == value and value > profile.psi_threshold
            psi_cell = "" if value is None else f"<span class='{'flag' if flag else ''}'>{value:.3f}</span>"
            parts.append(f"<tr><td>{e(name)}</td><td>{f['count']}</td><td>{f['missing_rate']:.1%}</td>"
                         + "".join(f"<td>{_fmt(q[k])}</td>" if k in q else "<td></td>" for k in ("p5", "p25", "p50", "p75", "p95"))
                         + f"<td>{e(cats)}</td><td>{psi_cell}</td></tr>")
        parts.append("</table>")
        problems = summary.get("problems")
        if problems:
            parts.append(f"<p>{len(problems)} schema violations (values made missing); "
                         "run <code>fedmine schema check</code>.</p>")
    if profile.drift:
        parts.append("<h2>Drift since the previous profile (PSI)</h2>"
                     "<table><tr><th>organisation</th><th>feature</th><th>PSI</th></tr>")
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
