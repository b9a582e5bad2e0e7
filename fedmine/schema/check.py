"""The schema check: how well each organisation's rows fit the canonical schema.

Each organisation prepares its rows itself (load, then
:func:`~fedmine.schema.harmonise.harmonise` with ``collect=True``) and shares
only its harmonisation report: rows, missing rates, out-of-range counts,
unknown categories with a few example codes, and the names of source columns
its mapping leaves out. :class:`CheckReport` gathers those reports, decides
whether anything violates the schema and renders them as text tables, JSON
and markdown: the CLI prints it (``fedmine schema check``), a training run
logs it as an MLflow artifact (:func:`log_check`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fedmine.config import FederationConfig
from fedmine.errors import FedmineError

#: Artifact paths of the report in an MLflow run.
CHECK_JSON = "schema/check.json"
CHECK_MARKDOWN = "schema/check.md"


@dataclass
class CheckReport:
    """The schema check of a federation.

    Attributes
    ----------
    federation : the config's name.
    features : canonical feature name -> its spec as plain data.
    organisations : organisation -> its harmonisation report (see
        :func:`~fedmine.schema.harmonise.harmonise`), or ``{"error": message}``
        when its source could not be read.
    """

    federation: str
    features: dict[str, dict[str, Any]]
    organisations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_reports(cls, cfg: FederationConfig, reports: dict[str, dict[str, Any]]) -> CheckReport:
        """Gather organisations' harmonisation reports (for example ``party.report`` of each party)."""
        features = {n: f.model_dump(mode="json", exclude_none=True) for n, f in cfg.features.items()}
        return cls(cfg.name, features, {org: dict(r) for org, r in reports.items()})

    # -- verdict -----------------------------------------------------------
    def violations(self, org: str) -> list[str]:
        """What breaks the schema at ``org``, one line each (empty: it fits)."""
        r = self.organisations[org]
        if "error" in r:
            return [r["error"]]
        problems = r.get("problems", [])
        if isinstance(problems, int):  # a party's shared report: the count; the lines stay with the organisation
            out = (
                [
                    f"organisation {org}: {problems} harmonisation problems (the details stay with the organisation: "
                    f"fedmine schema check there lists them)"
                ]
                if problems
                else []
            )
        else:
            out = list(problems)
        for name, count in r.get("out_of_range", {}).items():
            if count:
                spec = self.features.get(name, {})
                out.append(
                    f"organisation {org}: column {name!r} has {count} values outside "
                    f"[{spec.get('min', '-inf')}, {spec.get('max', 'inf')}]"
                )
        return out

    @property
    def ok(self) -> bool:
        """True when no organisation violates the schema."""
        return not any(self.violations(org) for org in self.organisations)

    # -- renderings --------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "federation": self.federation,
            "ok": self.ok,
            "features": self.features,
            "organisations": {org: {**r, "violations": self.violations(org)} for org, r in self.organisations.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def _rows(self, org: str) -> list[list[str]]:
        r = self.organisations[org]
        rows = []
        absent = set(r.get("absent_features", []))
        for name in self.features:
            unknown = r.get("unknown_categories", {}).get(name)
            if unknown:
                shown = ", ".join(str(v) for v in unknown.get("examples", []))
                unknown_text = (
                    f"{unknown['count']} ({shown}) -> {unknown['policy']}"
                    if shown
                    else f"{unknown['count']} -> {unknown['policy']}"
                )
            else:
                unknown_text = ""
            missing = r.get("missing_rate", {}).get(name)
            rows.append(
                [
                    name,
                    "absent" if name in absent else (f"{missing:.1%}" if missing is not None else ""),
                    str(r.get("out_of_range", {}).get(name, "")),
                    unknown_text,
                ]
            )
        return rows

    def to_text(self) -> str:
        """Plain tables, one per organisation (what the CLI prints)."""
        lines: list[str] = []
        header = ["feature", "missing", "out of range", "unknown categories (examples) -> policy"]
        for org, r in self.organisations.items():
            lines.append(f"== {org}" + (f": {r['rows']} rows" if "rows" in r else ""))
            if "error" in r:
                lines.append(f"  cannot prepare: {r['error']}")
                lines.append("")
                continue
            rows = self._rows(org)
            widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
            lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
            for row in rows:
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if r.get("unmapped_columns"):
                lines.append(f"  unmapped source columns: {_columns(r['unmapped_columns'])}")
            if r.get("absent_features"):
                lines.append(f"  optional features absent: {', '.join(r['absent_features'])}")
            for v in self.violations(org):
                lines.append(f"  violation: {v}")
            lines.append("")
        lines.append("schema check: " + ("ok" if self.ok else "violations found"))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The same tables in markdown (the MLflow artifact)."""
        out = [f"# Schema check: {self.federation}", "", "**" + ("ok" if self.ok else "violations found") + "**", ""]
        for org, r in self.organisations.items():
            out.append(f"## {org}")
            out.append("")
            if "error" in r:
                out += [f"cannot prepare: {r['error']}", ""]
                continue
            out.append(f"{r.get('rows', 0)} rows")
            out.append("")
            out.append("| feature | missing | out of range | unknown categories (examples) -> policy |")
            out.append("| --- | --- | --- | --- |")
            for row in self._rows(org):
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
            out.append("")
            if r.get("unmapped_columns"):
                out += [f"Unmapped source columns: {_columns(r['unmapped_columns'])}", ""]
            if r.get("absent_features"):
                out += [f"Optional features absent: {', '.join(r['absent_features'])}", ""]
            for v in self.violations(org):
                out.append(f"- violation: {v}")
            out.append("")
        return "\n".join(out)


def check_organisation(cfg: FederationConfig, org: str) -> dict[str, Any]:
    """Inside ``org``: load its source and harmonise with every violation collected; return the report."""
    from fedmine import connectors
    from fedmine.schema.harmonise import harmonise

    spec = cfg.organisations[org]
    try:
        frame = connectors.load(spec.source, spec.read, base_dir=cfg.base_dir, org=org)
        return harmonise(frame, cfg, org, collect=True).report
    except FedmineError as exc:
        return {"error": str(exc)}


def check_federation(cfg: FederationConfig, orgs: list[str] | None = None) -> CheckReport:
    """The schema check of every organisation (or of ``orgs``), each prepared in turn."""
    names = orgs or list(cfg.organisations)
    return CheckReport.from_reports(cfg, {org: check_organisation(cfg, org) for org in names})


def log_check(tracker, cfg: FederationConfig, reports: dict[str, dict[str, Any]]) -> CheckReport:
    """Log the check of these harmonisation reports to the tracker's run (JSON and markdown)."""
    check = CheckReport.from_reports(cfg, reports)
    tracker.log_text(check.to_json(), CHECK_JSON)
    tracker.log_text(check.to_markdown(), CHECK_MARKDOWN)
    return check


def _columns(unmapped: list[str] | int) -> str:
    """Unmapped source columns by name (the organisation's own report) or by count (what its party shares)."""
    return str(unmapped) if isinstance(unmapped, int) else ", ".join(unmapped)
