"""Harmonisation: one organisation's raw frame onto the canonical schema.

The recipe is the organisation's mapping in the config, applied in a fixed
order: rename source columns, mark missing values (the column's markers, the
``"*"`` markers and empty text), map values, parse dates and derive values
from them, convert units (declared ``units`` through :mod:`fedmine.schema.units`,
or ``value * scale + offset``), then check and encode types, applying the
organisation's policy to unknown categories. The result holds exactly the
canonical features (float64; categories as their index in the canonical
vocabulary, dates as days since 1970-01-01, NaN for missing) and the label
(float64: 0/1 for binary, class index for multiclass).

In training every violation raises a one-line
:class:`~fedmine.errors.DataError` naming the organisation, the column and an
example value; ``collect=True`` lists them all instead (``fedmine schema
check``). Either way the report holds aggregates only: counts, rates and a few
example codes, never a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedmine.config import FederationConfig, OrganisationSpec
from fedmine.errors import DataError

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@dataclass
class HarmonisedFrame:
    """An organisation's rows in the canonical schema.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features), float64
        Canonical features in config order; categories as vocabulary index.
    y : ndarray of shape (n_rows,), float64
    feature_names : list of str
    report : dict
        rows, missing rate per feature: what the organisation may share.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.y.shape[0])


def _example(values: pd.Series) -> str:
    v = values.iloc[0]
    return repr(v.item() if hasattr(v, "item") else v)


def _map_key(value: Any) -> Any:
    """Value-map keys compare as text, so YAML's 1 matches a CSV's '1' and vice versa."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _apply_value_map(col: pd.Series, mapping: dict[Any, Any]) -> pd.Series:
    lookup = {_map_key(k): v for k, v in mapping.items()}
    notna = col.notna()
    keys = col[notna].map(_map_key)
    mapped = keys.map(lambda k: lookup.get(k, k))
    out = pd.Series(np.full(len(col), np.nan, dtype=object), index=col.index)
    out[notna] = mapped.astype(object)
    # A value the map leaves alone keeps its original type (numbers stay numbers).
    unmapped = notna & ~col.map(lambda v: _map_key(v) in lookup if pd.notna(v) else False)
    out[unmapped] = col[unmapped].astype(object)
    return out


def _to_float(col: pd.Series, *, org: str, name: str) -> np.ndarray:
    numeric = pd.to_numeric(col, errors="coerce")
    bad = col.notna() & numeric.isna()
    if bad.any():
        raise DataError(
            f"organisation {org}: column {name!r} has non-numeric value {_example(col[bad])} "
            f"({int(bad.sum())} rows); map it under values: or mark it missing"
        )
    return numeric.to_numpy(dtype=np.float64, na_value=np.nan)


def _to_bool(col: pd.Series, *, org: str, name: str) -> np.ndarray:
    text = col.map(lambda v: _map_key(v).strip().lower() if pd.notna(v) else None)
    out = np.full(len(col), np.nan)
    out[text.isin(_TRUE).to_numpy()] = 1.0
    out[text.isin(_FALSE).to_numpy()] = 0.0
    bad = col.notna().to_numpy() & np.isnan(out)
    if bad.any():
        raise DataError(
            f"organisation {org}: column {name!r} has value {_example(col[bad])} that is not a bool; "
            f"allowed: 1/0, true/false, yes/no"
        )
    return out


def _to_codes(col: pd.Series, vocabulary: list[Any], *, org: str, name: str, what: str = "category") -> np.ndarray:
    index = {_map_key(v): i for i, v in enumerate(vocabulary)}
    codes = col.map(lambda v: index.get(_map_key(v), -1) if pd.notna(v) else -2).to_numpy()
    unknown = codes == -1
    if unknown.any():
        shown = ", ".join(str(v) for v in vocabulary[:20]) + (", ..." if len(vocabulary) > 20 else "")
        raise DataError(
            f"organisation {org}: column {name!r} has unknown {what} {_example(col[unknown])} "
            f"({int(unknown.sum())} rows); allowed: {shown}"
        )
    out = codes.astype(np.float64)
    out[codes == -2] = np.nan
    return out


def encode_label(col: pd.Series, cfg: FederationConfig, *, org: str) -> np.ndarray:
    """The label as float64: 0/1 (binary), class index (multiclass) or the value (regression)."""
    name = cfg.label
    if col.isna().any():
        missing = col.isna()
        first = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError(
            f"organisation {org}: label {name!r} is missing in {int(missing.sum())} rows (first at row {first}); "
            f"drop those rows or map them under values:"
        )
    if cfg.objective in ("regression", "poisson", "tweedie"):
        y = _to_float(col, org=org, name=name)
        if cfg.objective != "regression" and (y < 0).any():
            raise DataError(
                f"organisation {org}: label {name!r} has negative value {y[y < 0][0]!r}; "
                f"objective {cfg.objective} needs labels >= 0"
            )
        return y
    if cfg.classes is not None:
        return _to_codes(col, cfg.classes, org=org, name=name, what="label value")
    # binary without declared classes: 0/1, true/false or yes/no.
    text = col.map(lambda v: _map_key(v).strip().lower())
    y = np.full(len(col), np.nan)
    y[text.isin(_TRUE).to_numpy()] = 1.0
    y[text.isin(_FALSE).to_numpy()] = 0.0
    bad = np.isnan(y)
    if bad.any():
        raise DataError(
            f"organisation {org}: label {name!r} is not binary: value {_example(col[bad])} "
            f"({int(bad.sum())} rows); allowed: 0, 1, true/false, yes/no (or declare classes: [negative, positive])"
        )
    return y


class _Problems:
    """Where violations go: raised at once (training) or collected (``fedmine schema check``)."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        if not self.collect:
            raise DataError(message)
        self.messages.append(message)


def _examples(values: pd.Series, n: int = 5) -> list[Any]:
    """Up to ``n`` distinct values, most frequent first, as plain Python values."""
    counts = values.map(lambda v: v.item() if hasattr(v, "item") else v).value_counts()
    return [v for v in counts.index[:n]]


def _parse_dates(col: pd.Series, fmt: str | None, *, org: str, name: str, problem: _Problems) -> pd.Series:
    """Dates as pandas timestamps (NaT for missing); ``fmt`` is a strptime format, default ISO 8601."""
    notna = col.notna()
    parsed = pd.to_datetime(col.where(notna, None), format=fmt or "ISO8601", errors="coerce")
    bad = notna & parsed.isna()
    if bad.any():
        problem(
            f"organisation {org}: column {name!r} has value {_example(col[bad])} that is not a date in format "
            f"{fmt or 'ISO 8601 (YYYY-MM-DD)'} ({int(bad.sum())} rows); set dates: {{{name}: FORMAT}} or mark it missing"
        )
    return parsed


def _days(parsed: pd.Series) -> np.ndarray:
    return ((parsed - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def _derive(parsed: pd.Series, how: str, at: Any) -> np.ndarray:
    """A number from dates: whole years, months or days until ``at``, or the year, month, weekday (0 = Monday)."""
    ok = parsed.notna().to_numpy()
    out = np.full(len(parsed), np.nan)
    if not ok.any():
        return out
    d = parsed[ok]
    if how == "year":
        out[ok] = d.dt.year.to_numpy(dtype=np.float64)
    elif how == "month":
        out[ok] = d.dt.month.to_numpy(dtype=np.float64)
    elif how == "weekday":
        out[ok] = d.dt.weekday.to_numpy(dtype=np.float64)
    elif how == "days_since":
        out[ok] = ((pd.Timestamp(at) - d) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64)
    else:  # whole calendar years or months elapsed by the reference date
        y, m, day = d.dt.year.to_numpy(), d.dt.month.to_numpy(), d.dt.day.to_numpy()
        months = (at.year - y) * 12 + (at.month - m) - (at.day < day)
        out[ok] = months if how == "months_since" else np.floor_divide(months, 12)
    return out


def _encode_category(col: pd.Series, vocabulary: list[str], policy: str, *, org: str, name: str,
                     problem: _Problems, report: dict[str, Any]) -> np.ndarray:
    index = {_map_key(v): i for i, v in enumerate(vocabulary)}
    codes = col.map(lambda v: index.get(_map_key(v), -1) if pd.notna(v) else -2).to_numpy()
    unknown = codes == -1
    out = codes.astype(np.float64)
    out[codes == -2] = np.nan
    if unknown.any():
        report["unknown_categories"][name] = {
            "count": int(unknown.sum()), "examples": _examples(col[unknown]), "policy": policy}
        if policy == "other":
            out[unknown] = float(vocabulary.index("other"))
        else:
            out[unknown] = np.nan
            if policy == "error":
                shown = ", ".join(str(v) for v in vocabulary[:20]) + (", ..." if len(vocabulary) > 20 else "")
                problem(
                    f"organisation {org}: column {name!r} has unknown category {_example(col[unknown])} "
                    f"({int(unknown.sum())} rows); allowed: {shown}"
                )
    return out


def _source_columns(frame: pd.DataFrame, spec: OrganisationSpec, needed: list[str], *, org: str,
                    problem: _Problems) -> tuple[dict[str, str], list[str]]:
    """Which source column feeds each column after rename, and the source columns nothing uses.

    Two source columns onto one canonical name (a renamed one and one already
    bearing the name) is a violation naming both; the renamed one wins.
    """
    columns = [str(c) for c in frame.columns]
    rename = {}
    for src, dst in spec.rename.items():
        if src not in columns:
            problem(
                f"organisation {org}: rename names column {src!r} that its source does not have; "
                f"columns: {', '.join(columns)}"
            )
            continue
        rename[src] = dst
    feeds: dict[str, str] = {}
    for col in columns:
        target = rename.get(col, col)
        if target in feeds:
            first, second = (feeds[target], col) if feeds[target] in rename else (col, feeds[target])
            problem(
                f"organisation {org}: source columns {first!r} and {second!r} both map to {target!r}; "
                f"map one column per feature (rename the other away)"
            )
            feeds[target] = first
            continue
        feeds[target] = col
    wanted = set(needed) | {d.from_ for d in spec.derive.values()}
    used = {feeds[t] for t in wanted if t in feeds}
    unmapped = [c for c in columns if c not in used]
    return feeds, unmapped


def harmonise(frame: pd.DataFrame, cfg: FederationConfig, org: str, *, collect: bool = False) -> HarmonisedFrame:
    """Map one organisation's raw frame onto the canonical schema.

    Parameters
    ----------
    frame : the organisation's rows as its source returned them (not modified).
    cfg : the federation config; ``cfg.organisations[org]`` is the recipe.
    org : the organisation's name, used in every message.
    collect : when False (training), the first violation raises
        :class:`DataError`; when True (``fedmine schema check``), every
        violation is listed in ``report["problems"]`` and the offending values
        become missing.

    Returns
    -------
    HarmonisedFrame
        Its ``report`` holds only aggregates: ``rows``, ``missing_rate``,
        ``out_of_range`` (count per feature with a declared range),
        ``unknown_categories`` (count, up to five example values, policy),
        ``unmapped_columns`` (source columns the mapping leaves out),
        ``absent_features`` (optional features the source lacks) and
        ``problems`` (the violations' messages).
    """
    spec: OrganisationSpec = cfg.organisations[org]
    problem = _Problems(collect)
    needed = [*cfg.features, cfg.label]
    feeds, unmapped = _source_columns(frame, spec, needed, org=org, problem=problem)
    after = [t for t in feeds]
    report: dict[str, Any] = {"rows": int(len(frame)), "missing_rate": {}, "out_of_range": {},
                              "unknown_categories": {}, "unmapped_columns": unmapped, "absent_features": []}

    absent: list[str] = []
    for name in needed:
        if name in feeds or name in spec.derive:
            continue
        what = "label" if name == cfg.label else "feature"
        if name != cfg.label and not cfg.features[name].required:
            report["absent_features"].append(name)
            continue
        absent.append(name)
        problem(
            f"organisation {org}: canonical {what} {name!r} not found after rename; "
            f"columns: {', '.join(after)} (map a column onto it with rename{'' if what == 'label' else ', derive, or mark it required: false'})"
        )
    if len(frame) == 0:
        raise DataError(f"organisation {org}: no rows in source {spec.source}")

    all_markers = {_map_key(m) for m in spec.missing.get("*", [])}

    def cleaned(name: str) -> pd.Series:
        col = frame[feeds[name]]
        col = col.astype(object).where(col.notna(), None)
        blank = col.map(lambda v: isinstance(v, str) and not v.strip())
        markers = all_markers | {_map_key(m) for m in spec.missing.get(name, [])}
        if markers:
            blank |= col.map(lambda v: v is not None and _map_key(v) in markers)
        col = col.where(~blank, None)
        if name in spec.values:
            col = _apply_value_map(col, spec.values[name])
        return col

    n = len(frame)
    out: dict[str, np.ndarray] = {}
    for name, feat in cfg.features.items():
        if name in spec.derive:
            d = spec.derive[name]
            if d.from_ not in feeds:
                problem(
                    f"organisation {org}: derive.{name} reads column {d.from_!r} that its source does not have "
                    f"after rename; columns: {', '.join(after)}"
                )
                out[name] = np.full(n, np.nan)
                continue
            parsed = _parse_dates(cleaned(d.from_), spec.dates.get(d.from_), org=org, name=d.from_, problem=problem)
            x = _derive(parsed, d.as_, d.at)
        elif name not in feeds:
            out[name] = np.full(n, np.nan)
            continue
        else:
            col = cleaned(name)
            if feat.type == "category":
                x = _encode_category(col, feat.categories, spec.unknown_policy(name), org=org, name=name,
                                     problem=problem, report=report)
            elif feat.type == "bool":
                try:
                    x = _to_bool(col, org=org, name=name)
                except DataError as exc:
                    problem(str(exc))
                    text = col.map(lambda v: _map_key(v).strip().lower() if pd.notna(v) else None)
                    x = np.where(text.isin(_TRUE), 1.0, np.where(text.isin(_FALSE), 0.0, np.nan))
            elif feat.type == "date":
                x = _days(_parse_dates(col, spec.dates.get(name), org=org, name=name, problem=problem))
            else:
                try:
                    x = _to_float(col, org=org, name=name)
                except DataError as exc:
                    problem(str(exc))
                    x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                if name in spec.units:
                    from fedmine.schema.units import conversion

                    scale, offset = conversion(spec.units[name], feat.unit, quantity=feat.quantity or name)
                else:
                    scale, offset = spec.scale.get(name, 1.0), spec.offset.get(name, 0.0)
                x = x * scale + offset
        if feat.type == "int":
            frac = np.isfinite(x) & (x != np.round(x))
            if frac.any():
                problem(f"organisation {org}: column {name!r} is declared int but has value {x[frac][0]!r}")
        if feat.type not in ("category", "bool") and (feat.min is not None or feat.max is not None):
            with np.errstate(invalid="ignore"):
                low = x < feat.min if feat.min is not None else np.zeros(n, dtype=bool)
                high = x > feat.max if feat.max is not None else np.zeros(n, dtype=bool)
            report["out_of_range"][name] = int((low | high).sum())
        out[name] = x

    if cfg.label in absent:
        y = np.full(n, np.nan)
    else:
        label_col = cleaned(cfg.label)
        if cfg.label in spec.scale or cfg.label in spec.offset:
            label_col = pd.Series(
                _to_float(label_col, org=org, name=cfg.label) * spec.scale.get(cfg.label, 1.0)
                + spec.offset.get(cfg.label, 0.0)
            )
        try:
            y = encode_label(label_col, cfg, org=org)
        except DataError as exc:
            problem(str(exc))
            y = np.full(n, np.nan)
    X = np.column_stack([out[n_] for n_ in cfg.features]) if out else np.empty((len(y), 0))
    X = np.ascontiguousarray(X, dtype=np.float64)
    report["missing_rate"] = {n_: float(np.isnan(out[n_]).mean()) for n_ in cfg.features}
    report["problems"] = problem.messages
    return HarmonisedFrame(X=X, y=y, feature_names=list(cfg.features), report=report)


def harmonise_features(frame: pd.DataFrame, cfg: FederationConfig, org: str) -> np.ndarray:
    """Canonical features only (for scoring new rows that have no label)."""
    source = _label_source(cfg, org)
    if source not in frame.columns:
        frame = frame.copy()
        # A placeholder label that passes every check; it is dropped again.
        frame[source] = cfg.classes[0] if cfg.classes else 0
    return harmonise(frame, cfg, org).X


def _label_source(cfg: FederationConfig, org: str) -> str:
    for src, dst in cfg.organisations[org].rename.items():
        if dst == cfg.label:
            return src
    return cfg.label
