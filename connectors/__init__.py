"""Data connectors: turn a source string into a pandas DataFrame.

The reader is chosen by the path's suffix or the URI's scheme::

    .csv .csv.gz .tsv .txt       connectors.delimited   (pandas.read_csv)
    .parquet .pq                 connectors.parquet     (pyarrow; local or any pyarrow filesystem)
    sqlite:// postgresql://      connectors.database    (SQLAlchemy; ?table= or ?query=)

:func:`load` reads a whole source; :func:`plan` and :func:`read_partition`
read one in partitions (:mod:`fedmine.connectors.partitioned`: Parquet files
and row groups, SQL key ranges), for an organisation whose rows live on a
cluster. These are the public entry points and the one place where failures
become :class:`fedmine.errors.ConnectorError`: a single line naming the
organisation, the source (passwords masked) and what went wrong or what is
allowed. Connectors never import Prefect or MLflow; an empty result is
returned as is, the caller decides whether that is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas

from fedmine.connectors.partitioned import Partition
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

__all__ = ["SUPPORTED", "Partition", "load", "plan", "read_partition"]


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


def plan(
    source: str,
    read: dict[str, Any] | None = None,
    *,
    base_dir: str | Path | None = None,
    org: str | None = None,
    partition_rows: int = 1_000_000,
    partitions: int | None = None,
) -> list[Partition]:
    """Split a source into partitions without reading its rows.

    Parameters
    ----------
    source, read, base_dir, org : as for :func:`load`.
    partition_rows : int
        Parquet: at most this many rows per partition (whole row groups; a
        larger row group is a partition of its own).
    partitions : int, optional
        SQL (read option ``partition_key``): this many key ranges; default:
        enough ranges for ``partition_rows`` rows each.

    Returns
    -------
    list of Partition
        In the order of the rows :func:`load` reads.

    Raises
    ------
    ConnectorError
        As :func:`load`, and for a source that cannot be split (a delimited
        file, a SQL source without ``partition_key``).
    """
    try:
        return _plan(source, read, base_dir, partition_rows, partitions)
    except SourceError as exc:
        raise ConnectorError(_message(source, exc.reason, org, exc.secrets), transient=exc.transient) from exc


def read_partition(part: Partition, *, source: str, org: str | None = None) -> Iterator[pandas.DataFrame]:
    """Stream one partition's rows as frames (a Parquet batch or SQL chunk at a time); errors as :func:`load`'s."""
    from fedmine.connectors import partitioned

    try:
        yield from partitioned.read(part)
    except SourceError as exc:
        reason = f"partition {part.index} ({part.label}): {exc.reason}"
        raise ConnectorError(_message(source, reason, org, exc.secrets), transient=exc.transient) from exc


def _plan(source: Any, read: Any, base_dir: Any, partition_rows: int, partitions: int | None) -> list[Partition]:
    if not isinstance(source, str) or not source.strip():
        raise SourceError(f"a source must be a non-empty path or URI, got {source!r}")
    options = dict(read or {})
    source = source.strip()
    scheme = scheme_of(source)
    if scheme in DATABASE_SCHEMES:
        from fedmine.connectors.database import parse, plan_ranges

        return plan_ranges(source, parse(source, base_dir=base_dir), options, rows=partition_rows, n=partitions)
    location = locate(source, base_dir=base_dir, filesystem=options.pop("filesystem", None))
    if location.kind != "parquet":
        raise SourceError(
            f"a {location.suffix} file cannot be read in partitions; a cluster reads a Parquet file or folder "
            f"or a SQL source with read option partition_key"
        )
    from fedmine.connectors.parquet import check_options
    from fedmine.connectors.partitioned import plan_parquet

    check_options(options)
    return plan_parquet(location, options, partition_rows=partition_rows)


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
