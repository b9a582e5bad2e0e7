"""Harmonisation: one organisation's raw frame onto the canonical schema.

The recipe is the organisation's mapping in the config, applied in a fixed
order: rename source columns, mark missing values, map values, convert units
(``value * scale + offset``), then check and encode types. The result holds
exactly the canonical features (float64; categories as their index in the
canonical vocabulary, NaN for missing) and the label (float64: 0/1 for binary,
class index for multiclass). Every violation raises a one-line
:class:`~fedmine.errors.DataError` naming the organisation, the column and an
example value.
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


def harmonise(frame: pd.DataFrame, cfg: FederationConfig, org: str) -> HarmonisedFrame:
    """Map one organisation's raw frame onto the canonical schema.

    Parameters
    ----------
    frame : the organisation's rows as its source returned them (not modified).
    cfg : the federation config; ``cfg.organisations[org]`` is the recipe.
    org : the organisation's name, used in every message.
    """
    spec: OrganisationSpec = cfg.organisations[org]
    absent = [c for c in spec.rename if c not in frame.columns]
    if absent:
        raise DataError(
            f"organisation {org}: rename names column {absent[0]!r} that its source does not have; "
            f"columns: {', '.join(map(str, frame.columns))}"
        )
    df = frame.rename(columns=spec.rename)
    needed = [*cfg.features, cfg.label]
    for name in needed:
        if name not in df.columns:
            what = "label" if name == cfg.label else "feature"
            raise DataError(
                f"organisation {org}: canonical {what} {name!r} not found after rename; "
                f"columns: {', '.join(map(str, df.columns))}"
            )
    if len(df) == 0:
        raise DataError(f"organisation {org}: no rows in source {spec.source}")

    out: dict[str, np.ndarray] = {}
    columns: dict[str, pd.Series] = {}
    for name in needed:
        col = df[name]
        if isinstance(col, pd.DataFrame):
            raise DataError(f"organisation {org}: column {name!r} appears twice after rename")
        col = col.astype(object).where(col.notna(), None)
        if name in spec.missing:
            markers = {_map_key(m) for m in spec.missing[name]}
            col = col.where(~col.map(lambda v: v is not None and _map_key(v) in markers), None)
        if name in spec.values:
            col = _apply_value_map(col, spec.values[name])
        columns[name] = col

    for name, feat in cfg.features.items():
        col = columns[name]
        if feat.type == "category":
            x = _to_codes(col, feat.categories, org=org, name=name)
        elif feat.type == "bool":
            x = _to_bool(col, org=org, name=name)
        else:
            x = _to_float(col, org=org, name=name)
            x = x * spec.scale.get(name, 1.0) + spec.offset.get(name, 0.0)
            if feat.type == "int":
                frac = np.isfinite(x) & (x != np.round(x))
                if frac.any():
                    raise DataError(
                        f"organisation {org}: column {name!r} is declared int but has value {x[frac][0]!r}"
                    )
        out[name] = x

    label_col = columns[cfg.label]
    if cfg.label in spec.scale or cfg.label in spec.offset:
        label_col = pd.Series(
            _to_float(label_col, org=org, name=cfg.label) * spec.scale.get(cfg.label, 1.0)
            + spec.offset.get(cfg.label, 0.0)
        )
    y = encode_label(label_col, cfg, org=org)
    X = np.column_stack([out[n] for n in cfg.features]) if out else np.empty((len(y), 0))
    X = np.ascontiguousarray(X, dtype=np.float64)
    report = {
        "rows": int(len(y)),
        "missing_rate": {n: float(np.isnan(out[n]).mean()) for n in cfg.features},
    }
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
