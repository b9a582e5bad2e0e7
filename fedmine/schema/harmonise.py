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

Markers, value-map keys and vocabularies compare as text (``_map_key``): a
YAML ``1`` matches a CSV's ``'1'``, ``1`` and ``1.0``. Columns are worked on
whole: a numeric source column stays a numpy array and a marker or key
becomes the one number whose text it is; any other column becomes codes into
its distinct values, each looked up, parsed or converted once.

In training every violation raises a one-line
:class:`~fedmine.errors.DataError` naming the organisation, the column and an
example value (the first offending row's); ``collect=True`` lists them all
instead (``fedmine schema check``). Either way the report holds aggregates
only: counts, rates and a few example codes, never a row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from fedmine.config import FederationConfig, OrganisationSpec
from fedmine.errors import DataError
from fedmine.schema.units import conversion

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
#: Exact types whose equal values behave alike everywhere (text, numbers, dates).
_PLAIN_TYPES = frozenset(
    {
        str,
        bytes,
        int,
        bool,
        np.str_,
        np.bytes_,
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.intc,
        np.longlong,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.uintc,
        np.ulonglong,
    }
)


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


def _map_key(value: Any) -> Any:
    """Value-map keys compare as text, so YAML's 1 matches a CSV's '1' and vice versa."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _shown(value: Any) -> str:
    """A value as messages show it: its repr, numpy scalars as the plain Python value."""
    return repr(value.item() if hasattr(value, "item") else value)


def _objects(values: Iterable[Any], count: int) -> np.ndarray:
    return np.fromiter(values, dtype=object, count=count)


def _first_positions(codes: np.ndarray) -> np.ndarray:
    """Where each code first appears, for codes numbered in order of first appearance (none missing)."""
    if not len(codes):
        return np.empty(0, dtype=np.intp)
    running = np.maximum.accumulate(codes)
    new = np.empty(len(codes), dtype=bool)
    new[0] = True
    np.not_equal(running[1:], running[:-1], out=new[1:])
    return np.flatnonzero(new)


class _Numbers:
    """A numeric source column: its values (float64, or the source's integers) and its missing rows.

    Missing rows keep their value in ``values``; ``missing`` says which they are.
    """

    __slots__ = ("missing", "values")

    def __init__(self, values: np.ndarray, missing: np.ndarray) -> None:
        self.values = values
        self.missing = missing

    @property
    def floating(self) -> bool:
        return self.values.dtype.kind == "f"

    def value(self, row: int) -> Any:
        """Row ``row``'s value as the Python number the source holds."""
        return self.values[row].item()

    def bits(self, values: np.ndarray) -> np.ndarray:
        """``values`` as something to factorise exactly: floats by bit pattern (0.0 is not -0.0)."""
        return values.view(np.int64) if self.floating else values


class _Coded:
    """A column as codes into values: ``values[codes[i]]`` is row i's value, code -1 a missing row.

    ``values`` holds the Python objects a row-by-row reading of the source
    gives; equal entries may repeat, and entries no row refers to are
    ignored. ``text`` says every entry is a str.
    """

    __slots__ = ("_counts", "codes", "text", "values")

    def __init__(self, codes: np.ndarray, values: np.ndarray, text: bool, counts: np.ndarray | None = None) -> None:
        self.codes = codes
        self.values = values
        self.text = text
        self._counts = counts

    def counts(self) -> np.ndarray:
        """Rows per entry of ``values``."""
        if self._counts is None:
            self._counts = np.bincount(self.codes + 1, minlength=len(self.values) + 1)[1:]
        return self._counts

    def present(self) -> np.ndarray:
        """Positions in ``values`` some row refers to."""
        return np.flatnonzero(self.counts())

    def any_missing(self) -> bool:
        return int(self.counts().sum()) < len(self.codes)

    def rows(self, flags: np.ndarray) -> np.ndarray:
        """Per row, the flag of its value (False for missing rows)."""
        return np.append(flags, False)[self.codes]

    def spread(self, numbers: np.ndarray) -> np.ndarray:
        """Per row, the float64 number of its value (NaN for missing rows)."""
        return np.append(numbers.astype(np.float64), np.nan)[self.codes]

    def first(self, flags: np.ndarray) -> tuple[int, Any]:
        """How many rows have a flagged value, and the first such row's value."""
        row = int(np.argmax(self.rows(flags)))
        return int(self.counts()[flags].sum()), self.values[self.codes[row]]

    def without(self, positions: np.ndarray) -> _Coded:
        """The column with the rows holding ``values[positions]`` missing."""
        dead = np.zeros(len(self.values) + 1, dtype=bool)
        dead[positions] = True
        dead[-1] = True
        counts = self.counts().copy()
        counts[positions] = 0
        return _Coded(np.where(dead[self.codes], -1, self.codes), self.values, self.text, counts)


def _factorised(col: pd.Series) -> _Coded:
    """A column of a dtype whose equal values are alike, coded by pandas."""
    codes, uniques = pd.factorize(col)
    values = pd.Series(uniques, dtype=col.dtype).astype(object).to_numpy()
    text = isinstance(col.dtype, pd.StringDtype) or all(isinstance(v, str) for v in values)
    return _Coded(np.asarray(codes, dtype=np.intp), values, text)


def _object_column(obj: np.ndarray) -> _Coded:
    """An object column (None for missing) coded by exact type, then by value within a type."""
    if pd.api.types.infer_dtype(obj, skipna=True) in ("string", "empty"):
        codes, uniques = pd.factorize(obj)
        return _Coded(np.asarray(codes, dtype=np.intp), np.asarray(uniques, dtype=object), True)
    n = len(obj)
    type_codes, types = pd.factorize(_objects(map(type, obj), n))
    codes = np.full(n, -1, dtype=np.intp)
    parts: list[np.ndarray] = []
    offset = 0
    for g, kind in enumerate(types):
        if kind is type(None):
            continue
        rows = np.flatnonzero(type_codes == g)
        sub = obj[rows]
        if kind is float or (issubclass(kind, np.floating) and np.dtype(kind).itemsize <= 8):
            sub_codes, _ = pd.factorize(sub.astype(np.float64).view(np.int64))
        elif kind in _PLAIN_TYPES:
            sub_codes, _ = pd.factorize(sub)
        else:
            sub_codes = np.arange(len(rows))
        first = _first_positions(sub_codes)
        codes[rows] = sub_codes + offset
        parts.append(sub[first])
        offset += len(first)
    values = np.concatenate(parts) if parts else np.empty(0, dtype=object)
    return _Coded(codes, values, False)


def _column(col: pd.Series) -> _Numbers | _Coded:
    """A source column in working form; its values read as ``col.astype(object)`` reads them."""
    dtype = col.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind in "iu":
            return _Numbers(col.to_numpy(), np.zeros(len(col), dtype=bool))
        if dtype in _FLOATS:
            values = col.to_numpy(dtype=np.float64)
            return _Numbers(values, np.isnan(values))
        if dtype.kind in "bmM":
            return _factorised(col)
    elif isinstance(dtype, (pd.StringDtype, pd.CategoricalDtype, pd.DatetimeTZDtype)):
        return _factorised(col)
    return _object_column(col.astype(object).where(col.notna(), None).to_numpy())


def _coded(c: _Numbers | _Coded) -> _Coded:
    """The column as codes into its distinct values."""
    if isinstance(c, _Coded):
        return c
    keep = ~c.missing
    sub = c.values[keep]
    sub_codes, _ = pd.factorize(c.bits(sub))
    codes = np.full(len(c.values), -1, dtype=np.intp)
    codes[keep] = sub_codes
    return _Coded(codes, sub[_first_positions(sub_codes)].astype(object), False)


def _number_for_key(key: str, dtype: np.dtype) -> Any:
    """The one number of ``dtype`` whose text is ``key``, or None."""
    try:
        number = float(key) if dtype.kind == "f" else int(key)
    except (TypeError, ValueError):
        return None
    if dtype.kind == "f":
        return number if _map_key(number) == key else None
    info = np.iinfo(dtype)
    return number if str(number) == key and info.min <= number <= info.max else None


def _number_rows(c: _Numbers, keys: Iterable[str]) -> np.ndarray | None:
    """Rows whose number has one of ``keys`` as its text, or None when no key is a number's text."""
    numbers = {number for key in keys if (number := _number_for_key(key, c.values.dtype)) is not None}
    if not numbers:
        return None
    hit = np.zeros(len(c.values), dtype=bool)
    for number in numbers:
        hit |= c.values == number
    return hit


def _keys(values: np.ndarray, text: bool) -> np.ndarray:
    return values if text else _objects(map(_map_key, values), len(values))


def _member(keys: np.ndarray, collection: Collection[Any]) -> np.ndarray:
    return np.fromiter(map(collection.__contains__, keys), dtype=bool, count=len(keys))


def _blank(values: np.ndarray, text: bool) -> np.ndarray:
    """Empty or whitespace-only text."""
    if text:
        return (values == "") | np.fromiter(map(str.isspace, values), dtype=bool, count=len(values))
    return np.fromiter((isinstance(v, str) and not v.strip() for v in values), dtype=bool, count=len(values))


def _is_missing(value: Any) -> bool:
    missing = pd.isna(value)
    return bool(missing) if isinstance(missing, (bool, np.bool_)) else False


def _drop_missing(c: _Numbers | _Coded, markers: set[str]) -> _Numbers | _Coded:
    """The column with empty text and the values whose text is a marker missing."""
    if isinstance(c, _Numbers):
        hit = _number_rows(c, markers)
        return c if hit is None else _Numbers(c.values, c.missing | hit)
    present = c.present()
    values = c.values[present]
    drop = _blank(values, c.text)
    if markers:
        drop |= _member(_keys(values, c.text), markers)
    return c.without(present[drop]) if drop.any() else c


def _apply_value_map(c: _Numbers | _Coded, mapping: dict[Any, Any]) -> _Numbers | _Coded:
    """The column with mapped values replaced; a value the map leaves alone keeps its type."""
    lookup = {_map_key(k): v for k, v in mapping.items()}
    if isinstance(c, _Numbers):
        hit = _number_rows(c, lookup)
        if hit is None or not (hit & ~c.missing).any():
            return c
        c = _coded(c)
    present = c.present()
    values = c.values[present]
    keys = _keys(values, c.text)
    mapped = _member(keys, lookup)
    if not mapped.any():
        return c
    # pandas converts the replacements together (ints next to floats become floats when nothing stays
    # unmapped): convert one row per mapped key, plus an unmapped one if any, the same way.
    sample: dict[str, int] = {}
    for j in np.flatnonzero(mapped):
        sample.setdefault(keys[j], int(j))
    rows = list(sample.values())
    if not mapped.all():
        rows.append(int(np.argmin(mapped)))
    converted = (
        pd.Series(values[rows], dtype=object).map(_map_key).map(lambda k: lookup.get(k, k)).astype(object).to_numpy()
    )
    replacement = dict(zip(sample, converted))
    targets = present[mapped]
    new_values = c.values.copy()
    new_values[targets] = _objects(map(replacement.__getitem__, keys[mapped]), len(targets))
    text = c.text and all(isinstance(v, str) for v in replacement.values())
    out = _Coded(c.codes, new_values, text, c.counts())
    gone = {k for k, v in replacement.items() if _is_missing(v)}
    return out.without(targets[_member(keys[mapped], gone)]) if gone else out


def _value_at(c: _Numbers | _Coded, row: int) -> Any:
    return c.value(row) if isinstance(c, _Numbers) else c.values[c.codes[row]]


def _missing_rows(c: _Numbers | _Coded) -> np.ndarray:
    return c.missing if isinstance(c, _Numbers) else c.codes < 0


def _floats(c: _Numbers | _Coded, *, org: str, name: str) -> tuple[np.ndarray, str | None]:
    """The column as float64 (NaN for missing and non-numeric values) and the violation, if any."""
    if isinstance(c, _Numbers):
        x = c.values.astype(np.float64)
        x[c.missing] = np.nan
        return x, None
    present = c.present()
    values = c.values[present]
    if c.any_missing():
        values = np.append(values, _objects([None], 1))
    parsed = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    numbers = parsed.to_numpy(dtype=np.float64, na_value=np.nan)[: len(present)]
    per_value = np.full(len(c.values), np.nan)
    per_value[present] = numbers
    bad = np.zeros(len(c.values), dtype=bool)
    bad[present] = np.isnan(numbers)
    x = c.spread(per_value)
    if not bad.any():
        return x, None
    count, example = c.first(bad)
    return x, (
        f"organisation {org}: column {name!r} has non-numeric value {_shown(example)} "
        f"({count} rows); map it under values: or mark it missing"
    )


def _truth(c: _Numbers | _Coded) -> tuple[np.ndarray, np.ndarray]:
    """Per row 1.0 (true), 0.0 (false) or NaN (missing or neither), and the rows that are neither."""
    if isinstance(c, _Numbers):
        present = ~c.missing
        true = present & (c.values == 1)
        false = present & (c.values == 0)
        x = np.full(len(c.values), np.nan)
        x[true] = 1.0
        x[false] = 0.0
        return x, present & ~true & ~false
    present = c.present()
    words = [k.strip().lower() for k in _keys(c.values[present], c.text)]
    per_value = np.full(len(c.values), np.nan)
    per_value[present] = [1.0 if w in _TRUE else 0.0 if w in _FALSE else np.nan for w in words]
    bad = np.zeros(len(c.values), dtype=bool)
    bad[present] = np.isnan(per_value[present])
    return c.spread(per_value), c.rows(bad)


def _bools(c: _Numbers | _Coded, *, org: str, name: str) -> tuple[np.ndarray, str | None]:
    """The column as 1.0/0.0 (NaN for missing and other values) and the violation, if any."""
    x, bad = _truth(c)
    if not bad.any():
        return x, None
    example = _value_at(c, int(np.argmax(bad)))
    return x, (
        f"organisation {org}: column {name!r} has value {_shown(example)} that is not a bool; "
        f"allowed: 1/0, true/false, yes/no"
    )


def _category_codes(c: _Numbers | _Coded, vocabulary: list[Any]) -> np.ndarray:
    """Per row the vocabulary index of its value: -1 unknown, -2 missing."""
    index = {_map_key(v): i for i, v in enumerate(vocabulary)}
    if isinstance(c, _Numbers):
        codes = np.full(len(c.values), -1, dtype=np.intp)
        for key, i in index.items():
            number = _number_for_key(key, c.values.dtype)
            if number is not None:
                codes[c.values == number] = i
        codes[c.missing] = -2
        return codes
    present = c.present()
    keys = _keys(c.values[present], c.text)
    per_value = np.full(len(c.values) + 1, -2, dtype=np.intp)
    per_value[present] = np.fromiter(map(index.get, keys, repeat(-1)), dtype=np.intp, count=len(keys))
    return per_value[c.codes]


def _allowed(vocabulary: list[Any]) -> str:
    return ", ".join(str(v) for v in vocabulary[:20]) + (", ..." if len(vocabulary) > 20 else "")


def _examples(c: _Numbers | _Coded, rows: np.ndarray, n: int = 5) -> list[Any]:
    """Up to ``n`` distinct values of ``rows``, most frequent first, as plain Python values."""
    if isinstance(c, _Numbers):
        sub = c.values[rows]
        sub_codes, _ = pd.factorize(c.bits(sub))
        values = sub[_first_positions(sub_codes)].astype(object)
        counts = np.bincount(sub_codes)
    else:
        sub_codes = c.codes[rows]
        order = pd.unique(sub_codes)
        values = c.values[order]
        counts = np.bincount(sub_codes, minlength=len(c.values))[order]
    plain = pd.Series(values, dtype=object).map(lambda v: v.item() if hasattr(v, "item") else v)
    return [v for v in plain.repeat(counts.tolist()).value_counts().index[:n]]


def encode_label(col: pd.Series, cfg: FederationConfig, *, org: str) -> np.ndarray:
    """The label as float64: 0/1 (binary), class index (multiclass) or the value (regression)."""
    return _encode_label(_column(col), cfg, org=org)


def _encode_label(c: _Numbers | _Coded, cfg: FederationConfig, *, org: str) -> np.ndarray:
    name = cfg.label
    missing = _missing_rows(c)
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"organisation {org}: label {name!r} is missing in {int(missing.sum())} rows (first at row {first}); "
            f"drop those rows or map them under values:"
        )
    if cfg.objective in ("regression", "poisson", "tweedie"):
        y, message = _floats(c, org=org, name=name)
        if message:
            raise DataError(message)
        if cfg.objective != "regression" and (y < 0).any():
            raise DataError(
                f"organisation {org}: label {name!r} has negative value {y[y < 0][0]!r}; "
                f"objective {cfg.objective} needs labels >= 0"
            )
        return y
    if cfg.classes is not None:
        codes = _category_codes(c, cfg.classes)
        unknown = codes == -1
        if unknown.any():
            example = _value_at(c, int(np.argmax(unknown)))
            raise DataError(
                f"organisation {org}: column {name!r} has unknown label value {_shown(example)} "
                f"({int(unknown.sum())} rows); allowed: {_allowed(cfg.classes)}"
            )
        return codes.astype(np.float64)
    # binary without declared classes: 0/1, true/false or yes/no.
    y, bad = _truth(c)
    if bad.any():
        example = _value_at(c, int(np.argmax(bad)))
        raise DataError(
            f"organisation {org}: label {name!r} is not binary: value {_shown(example)} "
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


def _parse_dates(
    c: _Numbers | _Coded, fmt: str | None, *, org: str, name: str, problem: _Problems
) -> tuple[pd.Series, Callable[[np.ndarray], np.ndarray]]:
    """Dates as pandas timestamps (NaT for missing); ``fmt`` is a strptime format, default ISO 8601.

    Text is parsed once per distinct value; other values row by row, as
    pandas caches equal values of different types (1, 1.0, True) as one.
    Returns the parsed dates and what turns numbers computed from them into
    one per row.
    """
    c = _coded(c)
    if c.text:
        present = c.present()
        values = c.values[present]
        if c.any_missing():
            values = np.append(values, _objects([None], 1))
        parsed = pd.to_datetime(pd.Series(values, dtype=object), format=fmt or "ISO8601", errors="coerce")
        parsed = parsed.iloc[: len(present)].reset_index(drop=True)
        bad = np.zeros(len(c.values), dtype=bool)
        bad[present] = parsed.isna().to_numpy()
        count, example = c.first(bad) if bad.any() else (0, None)

        def spread(numbers: np.ndarray) -> np.ndarray:
            per_value = np.full(len(c.values), np.nan)
            per_value[present] = numbers
            return c.spread(per_value)
    else:
        rows = np.append(c.values, _objects([None], 1))[c.codes]
        parsed = pd.to_datetime(pd.Series(rows, dtype=object), format=fmt or "ISO8601", errors="coerce")
        bad_rows = (c.codes >= 0) & parsed.isna().to_numpy()
        count = int(bad_rows.sum())
        example = rows[int(np.argmax(bad_rows))] if count else None

        def spread(numbers: np.ndarray) -> np.ndarray:
            return numbers

    if count:
        problem(
            f"organisation {org}: column {name!r} has value {_shown(example)} that is not a date in format "
            f"{fmt or 'ISO 8601 (YYYY-MM-DD)'} ({count} rows); set dates: {{{name}: FORMAT}} or mark it missing"
        )
    return parsed, spread


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
        out[ok] = ((pd.Timestamp(at) - d) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64)  # type: ignore[operator]
    else:  # whole calendar years or months elapsed by the reference date
        y, m, day = d.dt.year.to_numpy(), d.dt.month.to_numpy(), d.dt.day.to_numpy()
        months = (at.year - y) * 12 + (at.month - m) - (at.day < day)
        out[ok] = months if how == "months_since" else np.floor_divide(months, 12)
    return out


def _encode_category(
    c: _Numbers | _Coded,
    vocabulary: list[str],
    policy: str,
    *,
    org: str,
    name: str,
    problem: _Problems,
    report: dict[str, Any],
) -> np.ndarray:
    codes = _category_codes(c, vocabulary)
    unknown = codes == -1
    out = codes.astype(np.float64)
    out[codes == -2] = np.nan
    if unknown.any():
        report["unknown_categories"][name] = {
            "count": int(unknown.sum()),
            "examples": _examples(c, unknown),
            "policy": policy,
        }
        if policy == "other":
            out[unknown] = float(vocabulary.index("other"))
        else:
            out[unknown] = np.nan
            if policy == "error":
                example = _value_at(c, int(np.argmax(unknown)))
                problem(
                    f"organisation {org}: column {name!r} has unknown category {_shown(example)} "
                    f"({int(unknown.sum())} rows); allowed: {_allowed(vocabulary)}"
                )
    return out


def _source_columns(
    frame: pd.DataFrame, spec: OrganisationSpec, needed: list[str], *, org: str, problem: _Problems
) -> tuple[dict[str, str], list[str]]:
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


def _stack(columns: list[np.ndarray], n: int, block: int = 8192) -> np.ndarray:
    """The columns side by side as one C-ordered float64 array, filled a block of rows at a time."""
    X = np.empty((n, len(columns)), dtype=np.float64)
    for start in range(0, n, block):
        rows = X[start : start + block]
        for j, col in enumerate(columns):
            rows[:, j] = col[start : start + block]
    return X


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
    report: dict[str, Any] = {
        "rows": len(frame),
        "missing_rate": {},
        "out_of_range": {},
        "unknown_categories": {},
        "unmapped_columns": unmapped,
        "absent_features": [],
    }

    absent: list[str] = []
    for name in needed:
        if name in feeds or name in spec.derive:
            continue
        what = "label" if name == cfg.label else "feature"
        if name != cfg.label and not cfg.features[name].required:
            report["absent_features"].append(name)
            continue
        absent.append(name)
        how = "rename" if what == "label" else "rename, derive, or mark it required: false"
        problem(
            f"organisation {org}: canonical {what} {name!r} not found after rename; "
            f"columns: {', '.join(after)} (map a column onto it with {how})"
        )
    if len(frame) == 0:
        raise DataError(f"organisation {org}: no rows in source {spec.source}")

    all_markers = {_map_key(m) for m in spec.missing.get("*", [])}
    done: dict[str, _Numbers | _Coded] = {}

    def cleaned(name: str) -> _Numbers | _Coded:
        if name not in done:
            col = _drop_missing(
                _column(frame[feeds[name]]), all_markers | {_map_key(m) for m in spec.missing.get(name, [])}
            )
            if name in spec.values:
                col = _apply_value_map(col, spec.values[name])
            done[name] = col
        return done[name]

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
            parsed, spread = _parse_dates(
                cleaned(d.from_), spec.dates.get(d.from_), org=org, name=d.from_, problem=problem
            )
            x = spread(_derive(parsed, d.as_, d.at))
        elif name not in feeds:
            out[name] = np.full(n, np.nan)
            continue
        else:
            col = cleaned(name)
            if feat.type == "category":
                x = _encode_category(
                    col,
                    feat.categories or [],
                    spec.unknown_policy(name),
                    org=org,
                    name=name,
                    problem=problem,
                    report=report,
                )
            elif feat.type == "bool":
                x, message = _bools(col, org=org, name=name)
                if message:
                    problem(message)
            elif feat.type == "date":
                parsed, spread = _parse_dates(col, spec.dates.get(name), org=org, name=name, problem=problem)
                x = spread(_days(parsed))
            else:
                x, message = _floats(col, org=org, name=name)
                if message:
                    problem(message)
                if name in spec.units:
                    scale, offset = conversion(spec.units[name], feat.unit or "", quantity=feat.quantity or name)
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
            values, message = _floats(label_col, org=org, name=cfg.label)
            if message:
                raise DataError(message)
            values = values * spec.scale.get(cfg.label, 1.0) + spec.offset.get(cfg.label, 0.0)
            label_col = _Numbers(values, np.isnan(values))
        try:
            y = _encode_label(label_col, cfg, org=org)
        except DataError as exc:
            problem(str(exc))
            y = np.full(n, np.nan)
    X = _stack([out[n_] for n_ in cfg.features], len(y))
    report["missing_rate"] = {n_: int(np.count_nonzero(np.isnan(out[n_]))) / n for n_ in cfg.features}
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


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of consecutive slices of one source, as :func:`harmonise` reports the whole.

    Counts add; a missing rate is the missing rows over all rows (each slice's
    count recovered exactly from its rate); unknown categories keep the first
    five examples; problems are listed in order.
    """
    if len(reports) == 1:
        return reports[0]
    rows = sum(int(r["rows"]) for r in reports)
    merged: dict[str, Any] = {
        "rows": rows,
        "missing_rate": {},
        "out_of_range": {},
        "unknown_categories": {},
        "unmapped_columns": reports[0].get("unmapped_columns", []),
        "absent_features": reports[0].get("absent_features", []),
        "problems": [m for r in reports for m in r.get("problems", [])],
    }
    for name in reports[0]["missing_rate"]:
        missing = sum(round(r["missing_rate"][name] * int(r["rows"])) for r in reports)
        merged["missing_rate"][name] = missing / max(rows, 1)
    for r in reports:
        for name, count in r["out_of_range"].items():
            merged["out_of_range"][name] = merged["out_of_range"].get(name, 0) + int(count)
        for name, u in r["unknown_categories"].items():
            m = merged["unknown_categories"].setdefault(name, {"count": 0, "examples": [], "policy": u["policy"]})
            m["count"] += int(u["count"])
            m["examples"] = (m["examples"] + [e for e in u["examples"] if e not in m["examples"]])[:5]
    return merged
