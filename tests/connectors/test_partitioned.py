"""Sources read in partitions: Parquet folders with hive partitioning, by files and row groups."""

from __future__ import annotations

import numpy as np
import pandas
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedmine.connectors import load, plan, read_partition
from fedmine.errors import ConnectorError


@pytest.fixture
def hive(tmp_path):
    rng = np.random.default_rng(3)
    n = 1000
    frame = pandas.DataFrame(
        {
            "x": rng.normal(size=n),
            "k": rng.integers(0, 9, n),
            "year": rng.choice([2023, 2024], n),
            "region": rng.choice(["north", "south", "east"], n),
        }
    )
    folder = tmp_path / "lake"
    pq.write_to_dataset(
        pa.Table.from_pandas(frame, preserve_index=False),
        str(folder),
        partition_cols=["year", "region"],
        row_group_size=70,
    )
    return folder


def test_partitions_concatenate_to_the_single_process_read(hive):
    whole = load(str(hive))  # a folder without suffix: a Parquet dataset
    assert len(whole) == 1000 and set(whole.columns) == {"x", "k", "year", "region"}
    parts = plan(str(hive), partition_rows=150)
    assert len(parts) > 6 and all(p.rows <= 150 or len(p.row_groups) == 1 for p in parts)
    assert [p.index for p in parts] == list(range(len(parts)))
    frames = [pandas.concat(list(read_partition(p, source=str(hive)))) for p in parts]
    assert [len(f) for f in frames] == [p.rows for p in parts]
    pandas.testing.assert_frame_equal(pandas.concat(frames, ignore_index=True), whole)
    assert set(whole["region"]) == {"north", "south", "east"}  # hive keys are columns of the rows


def test_filters_and_columns_apply_to_every_partition(hive):
    read = {"columns": ["x", "region"], "filters": [["year", "==", 2024]]}
    whole = load(str(hive), read)
    parts = plan(str(hive), read, partition_rows=200)
    assert sum(p.rows for p in parts) == len(whole) and 300 < len(whole) < 700
    got = pandas.concat([f for p in parts for f in read_partition(p, source=str(hive))], ignore_index=True)
    pandas.testing.assert_frame_equal(got, whole)
    assert list(got.columns) == ["x", "region"]


def test_a_file_that_cannot_be_split_is_named(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(
        ConnectorError, match=r"^organisation 'bank': source '.*rows\.csv': a \.csv file cannot be read in partitions"
    ):
        plan(str(path), org="bank")


def test_a_partition_whose_file_is_gone_is_named(hive):
    parts = plan(str(hive), partition_rows=150)
    import os

    os.remove(parts[2].path)
    with pytest.raises(ConnectorError, match=rf"^source '{hive}': partition 2 \({parts[2].label}\): file not found"):
        list(read_partition(parts[2], source=str(hive)))


def test_sql_key_ranges_read_the_rows_load_reads(tmp_path):
    import sqlite3

    db = tmp_path / "bank.db"
    rng = np.random.default_rng(5)
    frame = pandas.DataFrame({"id": rng.permutation(np.arange(10, 1010)), "x": rng.normal(size=1000)})
    with sqlite3.connect(db) as con:
        frame.to_sql("customers", con, index=False)
    source = f"sqlite:///{db}?table=customers"
    read = {"partition_key": "id"}
    whole = load(source, read)
    assert whole["id"].is_monotonic_increasing and len(whole) == 1000  # ordered by the key
    parts = plan(source, read, partition_rows=300)
    assert len(parts) == 4 and sum(p.rows for p in parts) == 1000
    got = pandas.concat([f for p in parts for f in read_partition(p, source=source)], ignore_index=True)
    pandas.testing.assert_frame_equal(got, whole)
    assert [p.rows for p in plan(source, read, partitions=2)] == [499, 501]  # ids 10-508, 509-1009
    with pytest.raises(
        ConnectorError, match=r"a SQL source is read in partitions by ranges of a key: set read option partition_key"
    ):
        plan(source)
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO customers VALUES (10, 0.5)")
    with pytest.raises(
        ConnectorError, match=r"partition_key id must be unique and never NULL \(it orders the rows\): 1 of 1001 rows"
    ):
        plan(source, read)


def test_a_dataset_on_an_fsspec_filesystem(hive):
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in sorted(hive.rglob("*.parquet")):
        memory.pipe(f"/lake/{path.relative_to(hive).as_posix()}", path.read_bytes())
    whole = load("memory://lake")
    pandas.testing.assert_frame_equal(whole, load(str(hive)))
    parts = plan("memory://lake", partition_rows=150)
    got = pandas.concat([f for p in parts for f in read_partition(p, source="memory://lake")], ignore_index=True)
    pandas.testing.assert_frame_equal(got, whole)
