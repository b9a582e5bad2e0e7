"""Sources read in partitions: Parquet datasets by files and row groups, SQL sources by key ranges.

This module owns :class:`Partition`, a plain record naming one slice of a
source (it travels to the Dask worker that reads it), :func:`plan`, which
splits a source into partitions without reading its rows, and :func:`read`,
which streams one partition's rows as frames, a row group or a chunk at a time::

    folder/                          pyarrow dataset, hive partitioning (year=2024/region=north/...)
      year=2024/region=north/a.parquet   -> partitions of whole row groups, at most
      ...                                   partition_rows rows each, files in dataset order
    sqlite:///bank.db?table=t        read option partition_key: id
                                     -> n ranges of id, each read ORDER BY id

Concatenated in order, the partitions are the rows :func:`fedmine.connectors.load`
reads from the same source (a folder through the same dataset reader; a SQL
source with ``partition_key`` ordered by that key), so an organisation's rows
are the same whether one process or a cluster holds them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas
import pyarrow
import pyarrow.dataset
import pyarrow.fs
import pyarrow.parquet

from fedmine.connectors.source import Location, SourceError, column_list, one_line

#: Rows a batch of a Parquet partition holds at most while it is read (row groups streamed).
BATCH_ROWS = 65536


@dataclass(frozen=True)
class Partition:
    """One slice of a source, as plain data.

    Attributes
    ----------
    index : int
        Position among the source's partitions (their order is the rows' order).
    rows : int
        Rows it holds (after the read option ``filters``).
    label : str
        What it is, for messages: a file and its row groups, or a key range.
    kind : {"parquet", "sql"}
    path : str
        Parquet: the file inside ``filesystem``. SQL: the source URI.
    row_groups : tuple of int
        Parquet: the file's row groups in this partition.
    partition_expression : pyarrow.dataset.Expression or None
        Parquet: the hive partition keys of the file.
    schema : pyarrow.Schema, DatabaseSource or None
        Parquet: the dataset's schema (hive columns included). SQL: the parsed
        source (where to connect, what to read).
    filesystem : pyarrow.fs.FileSystem or None
    key, low, high : SQL: ``low <= key < high`` (``high`` None: no upper bound).
    options : dict
        Read options (``columns``, ``filters``; for SQL also pandas.read_sql keywords).
    """

    index: int
    rows: int
    label: str
    kind: str
    path: str
    row_groups: tuple[int, ...] = ()
    partition_expression: Any = None
    schema: Any = None
    filesystem: Any = None
    key: str | None = None
    low: Any = None
    high: Any = None
    options: dict[str, Any] = field(default_factory=dict)


def is_dataset(location: Location) -> bool:
    """Whether a Parquet location is a folder (a dataset of files) rather than one file."""
    if location.filesystem is None:
        return os.path.isdir(location.path)
    return location.filesystem.get_file_info(location.path).type == pyarrow.fs.FileType.Directory


def _dataset(location: Location):
    try:
        return pyarrow.dataset.dataset(
            location.path, filesystem=location.filesystem, format="parquet", partitioning="hive"
        )
    except FileNotFoundError as exc:
        raise SourceError(f"file not found: {location.path}") from exc
    except (pyarrow.ArrowInvalid, OSError) as exc:
        raise SourceError(f"cannot read as Parquet: {one_line(exc)}") from exc


def _filter(options: dict[str, Any]):
    from fedmine.connectors.parquet import _filters

    filters = options.get("filters")
    return None if filters is None else pyarrow.parquet.filters_to_expression(_filters(filters))


def plan_parquet(location: Location, options: dict[str, Any], *, partition_rows: int) -> list[Partition]:
    """A Parquet file or folder as partitions of whole row groups, at most ``partition_rows`` rows each.

    A row group larger than ``partition_rows`` is a partition of its own. Rows
    are counted from the files' footers (with ``filters``: counted in a scan of
    the filtered columns), not read.
    """
    if partition_rows < 1:
        raise ValueError(f"partition_rows must be >= 1, got {partition_rows}")
    dataset = _dataset(location)
    expression = _filter(options)
    parts: list[Partition] = []
    for fragment in dataset.get_fragments():
        metadata = fragment.metadata
        spans: list[list[int]] = []
        counted = 0
        for g in range(metadata.num_row_groups):
            n = metadata.row_group(g).num_rows
            if not spans or counted + n > partition_rows:
                spans.append([])
                counted = 0
            spans[-1].append(g)
            counted += n
        for groups in spans:
            if expression is not None:
                rows = pyarrow.dataset.Scanner.from_fragment(
                    fragment.subset(row_group_ids=groups), schema=dataset.schema, filter=expression, columns=[]
                ).count_rows()
            else:
                rows = sum(metadata.row_group(g).num_rows for g in groups)
            span = f"row groups {groups[0]}-{groups[-1]}" if len(groups) > 1 else f"row group {groups[0]}"
            parts.append(
                Partition(
                    index=len(parts),
                    rows=int(rows),
                    label=f"{Path(fragment.path).name} {span}",
                    kind="parquet",
                    path=fragment.path,
                    row_groups=tuple(groups),
                    partition_expression=fragment.partition_expression,
                    schema=dataset.schema,
                    filesystem=dataset.filesystem,
                    options=dict(options),
                )
            )
    return parts


def read(part: Partition) -> Iterator[pandas.DataFrame]:
    """The partition's rows as frames in order: a Parquet batch or a SQL chunk at a time.

    Raises
    ------
    SourceError
        The file or table is gone or no longer readable as planned.
    """
    if part.kind == "sql":
        from fedmine.connectors.database import read_range

        yield from read_range(part)
        return
    columns = part.options.get("columns")
    if columns is not None:
        columns = column_list(columns)
    expression = _filter(part.options)
    fmt = pyarrow.dataset.ParquetFileFormat()
    try:
        fragment = fmt.make_fragment(
            part.path, filesystem=part.filesystem, partition_expression=part.partition_expression
        ).subset(row_group_ids=list(part.row_groups))
        batches = fragment.to_batches(
            schema=part.schema, columns=columns, filter=expression, batch_size=BATCH_ROWS, use_threads=False
        )
        seen = False
        for batch in batches:
            seen = True
            yield batch.to_pandas()
        if not seen:  # an empty partition: its columns, no rows
            empty = part.schema if columns is None else pyarrow.schema([part.schema.field(c) for c in columns])
            yield empty.empty_table().to_pandas()
    except FileNotFoundError as exc:
        raise SourceError(f"file not found: {part.path}") from exc
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, OSError, ValueError, KeyError) as exc:
        raise SourceError(f"cannot read {part.label}: {one_line(exc)}") from exc


def read_all(parts: list[Partition]) -> pandas.DataFrame:
    """Every partition's rows in order, in one frame (the single-process read of a partitioned source)."""
    frames = [frame for part in parts for frame in read(part)]
    if not frames:
        raise SourceError("no Parquet files found in the folder")
    return pandas.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
