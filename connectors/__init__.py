"""Data connectors: turn a source string into a pandas DataFrame.

The reader is chosen by the path's suffix or the URI's scheme::

    .csv .csv.gz .tsv .txt       connectors.delimited   (pandas.read_csv)
    .parquet .pq                 connectors.parquet     (pyarrow; local or any pyarrow filesystem)
    sqlite:// postgresql://      connectors.database    (SQLAlchemy; ?table= or ?query=)

:func:`load` is the one public entry point and the one place where failures
become :class:`fedmine.errors.ConnectorError`: a single line naming the
organisation, the source (passwords masked) and what went wrong or what is
allowed. Connectors never import Prefect or MLflow; an empty result is
returned as is, the caller decides whether that is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas

from fedmine.connectors.source import (
    DATABASE_SCHEMES,
    SUPPORTED,
    SourceError,
    locate,
    mask,
    one_line,
    scheme_of,
    unsupported,
)
from fedmine.errors import ConnectorError

__all__ = ["SUPPORTED", "load"]


def load(
    source: str,
    read: dict[str, Any] | None = None,
    *,
    base_dir: str | Path | None = None,
    org: str | None = None,
) -> pandas.DataFrame:
    """Read one source into a DataFrame with the source's column names.

    Parameters
    ----------
    source : str
        A path (``data/bank.csv``; relative to ``base_dir`` when given) or a
        URI (``file:///x.parquet``, ``s3://b/x.parquet``,
        ``sqlite:///bank.db?table=t``, ``postgresql://u:pw@h:5432/db?query=...``).
    read : dict, optional
        Reader options: ``pandas.read_csv`` keywords for delimited text;
        ``columns``, ``filters`` (and, from Python, ``filesystem``) for
        Parquet; ``columns`` and ``pandas.read_sql`` keywords for databases.
    base_dir : path, optional
        Folder that relative paths (and relative SQLite files) resolve against,
        normally the folder of the config file naming the source.
    org : str, optional
        Organisation name, repeated in error messages.

    Returns
    -------
    frame : pandas.DataFrame of shape (n_rows, n_columns)
        May be empty.

    Raises
    ------
    ConnectorError
        One line: unsupported scheme or suffix, missing file or table, no
        table/query, unreachable database, unknown or bad read option.
    """
    try:
        return _load(source, read, base_dir)
    except SourceError as exc:
        raise ConnectorError(_message(source, exc.reason, org, exc.secrets), transient=exc.transient) from exc


def _load(source: Any, read: Any, base_dir: str | Path | None) -> pandas.DataFrame:
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise SourceError(f"a source must be a non-empty path or URI, got {source!r}")
    if read is not None and not isinstance(read, Mapping):
        raise SourceError(f"read options must be a mapping, got {type(read).__name__}")
    options = dict(read or {})
    source = source.strip()

    scheme = scheme_of(source)
    if scheme in DATABASE_SCHEMES:
        from fedmine.connectors.database import parse, read_database

        return read_database(parse(source, base_dir=base_dir), options)
    if scheme is not None and scheme.startswith("postgres"):
        raise SourceError(unsupported(source))

    location = locate(source, base_dir=base_dir, filesystem=options.pop("filesystem", None))
    if location.kind == "parquet":
        from fedmine.connectors.parquet import read_parquet

        return read_parquet(location, options)
    from fedmine.connectors.delimited import read_delimited

    return read_delimited(location, options)


def _message(source: Any, reason: str, org: str | None, secrets: tuple[str, ...]) -> str:
    who = f"organisation '{org}': " if org else ""
    text = source if isinstance(source, str) else repr(source)
    return one_line(mask(f"{who}source '{text}': {reason}", secrets))
