"""Parquet sources: ``.parquet`` and ``.pq`` files or folders, read by pyarrow.

A folder (with or without a suffix) is a dataset with hive partitioning
(``year=2024/region=north/...``), read as :mod:`fedmine.connectors.partitioned`
reads its partitions, in the same order, so one process and a cluster hold the
same rows.

The file may be local or on any pyarrow filesystem: a ``file://``, ``s3://``,
``gs://`` or ``hdfs://`` URI, or (from Python) a ``filesystem`` read option
holding a ``pyarrow.fs.FileSystem`` with the source as a path inside it.

Read options: ``columns`` (names to read) and ``filters`` (row filters pushed
into the scan, in :func:`pyarrow.parquet.read_table` form, e.g.
``[["age", ">=", 18]]``; inner lists are taken as tuples).
"""

from __future__ import annotations

import os
from typing import Any

import pandas
import pyarrow
import pyarrow.fs
import pyarrow.parquet

from fedmine.connectors.source import Location, SourceError, column_list, one_line

READ_OPTIONS = ("columns", "filters", "filesystem")


def read_parquet(location: Location, options: dict[str, Any] | None = None) -> pandas.DataFrame:
    """Read a Parquet file (or a folder of them) into a frame.

    Parameters
    ----------
    location : Location
        ``kind == "parquet"``.
    options : dict, optional
        ``columns``, ``filters``; ``filesystem`` was consumed by ``locate``.

    Raises
    ------
    SourceError
        Missing file, unknown option, bad columns or filters, not Parquet.
    """
    options = dict(options or {})
    options.pop("filesystem", None)
    check_options(options)
    columns = options.get("columns")
    if columns is not None:
        columns = column_list(columns)
    filters = options.get("filters")
    if filters is not None:
        filters = _filters(filters)

    _check_exists(location)
    from fedmine.connectors import partitioned

    if partitioned.is_dataset(location):  # the rows its partitions hold, in the same order
        return partitioned.read_all(partitioned.plan_parquet(location, options, partition_rows=1 << 62))
    try:
        table = pyarrow.parquet.read_table(
            location.path, columns=columns, filters=filters, filesystem=location.filesystem
        )
    except FileNotFoundError as exc:
        raise SourceError(f"file not found: {location.path}") from exc
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, TypeError, ValueError) as exc:
        message = one_line(exc)
        if "No match for FieldRef" in message or "not in schema" in message.lower():
            raise SourceError(f"bad read option columns or filters: {message}") from exc
        if filters is not None and "filter" in message.lower():
            raise SourceError(f"bad read option filters: {message}") from exc
        raise SourceError(f"cannot read as Parquet: {message}") from exc
    except OSError as exc:
        raise SourceError(f"cannot read {location.path}: {one_line(exc)}") from exc
    frame = table.to_pandas(split_blocks=True, self_destruct=True)  # each column's Arrow buffer freed once copied
    del table
    pyarrow.default_memory_pool().release_unused()  # the pool keeps freed pages otherwise, for the whole run
    return frame


def check_options(options: dict[str, Any]) -> None:
    """Raise for a read option Parquet does not take."""
    for name in options:
        if name not in READ_OPTIONS:
            raise SourceError(f"unknown read option '{name}' for Parquet; allowed: {', '.join(READ_OPTIONS)}")


def _filters(value: object) -> list:
    """YAML lists -> the tuples pyarrow expects: ANDed predicates, or ORs of them."""
    if not isinstance(value, (list, tuple)) or not value:
        raise SourceError(f"read option 'filters' must be a non-empty list, got {value!r}")

    def predicate(item: object) -> tuple:
        if isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str):
            return tuple(item)
        raise SourceError(f"read option 'filters': expected [column, op, value], got {item!r}")

    def is_conjunction(item: object) -> bool:
        nested = isinstance(item, (list, tuple)) and bool(item)
        return nested and isinstance(item[0], (list, tuple))

    if all(is_conjunction(item) for item in value):
        return [[predicate(p) for p in conjunction] for conjunction in value]
    return [predicate(p) for p in value]


def _check_exists(location: Location) -> None:
    if location.filesystem is None:
        if not os.path.exists(location.path):
            raise SourceError(f"file not found: {location.path}")
        return
    info = location.filesystem.get_file_info(location.path)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise SourceError(f"file not found: {location.path}")
