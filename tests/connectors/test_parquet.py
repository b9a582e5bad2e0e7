"""Parquet: local paths, file:// URIs, pyarrow filesystems, columns and filters."""

from __future__ import annotations

import re

import pandas
import pyarrow.fs
import pytest

from fedmine.connectors import load
from fedmine.errors import ConnectorError


@pytest.fixture
def parquet_file(tmp_path, frame):
    path = tmp_path / "bank.parquet"
    frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_local_round_trip(tmp_path, frame, suffix):
    path = tmp_path / f"bank{suffix}"
    frame.to_parquet(path, index=False)
    pandas.testing.assert_frame_equal(load(str(path)), frame)


def test_file_uri(parquet_file, frame):
    pandas.testing.assert_frame_equal(load(parquet_file.as_uri()), frame)


def test_file_uri_with_percent_encoded_path(tmp_path, frame):
    path = tmp_path / "north wing" / "bank.parquet"
    path.parent.mkdir()
    frame.to_parquet(path, index=False)
    assert "%20" in path.as_uri()
    pandas.testing.assert_frame_equal(load(path.as_uri()), frame)


def test_pyarrow_filesystem_option(parquet_file, frame):
    filesystem = pyarrow.fs.SubTreeFileSystem(str(parquet_file.parent), pyarrow.fs.LocalFileSystem())
    pandas.testing.assert_frame_equal(load("bank.parquet", {"filesystem": filesystem}), frame)


def test_pyarrow_local_filesystem_option(parquet_file, frame):
    loaded = load(str(parquet_file), {"filesystem": pyarrow.fs.LocalFileSystem()})
    pandas.testing.assert_frame_equal(loaded, frame)


def test_folder_of_parquet_files(tmp_path, frame):
    folder = tmp_path / "bank.parquet"
    folder.mkdir()
    frame.iloc[:2].to_parquet(folder / "part-0.parquet", index=False)
    frame.iloc[2:].to_parquet(folder / "part-1.parquet", index=False)
    pandas.testing.assert_frame_equal(load(str(folder)), frame)


def test_columns_and_filters(parquet_file, frame):
    loaded = load(str(parquet_file), {"columns": ["city", "id"], "filters": [["defaulted", "=", 1]]})
    expected = frame.loc[frame["defaulted"] == 1, ["city", "id"]].reset_index(drop=True)
    pandas.testing.assert_frame_equal(loaded, expected)


def test_filters_as_an_or_of_ands(parquet_file, frame):
    loaded = load(str(parquet_file), {"filters": [[["id", "=", 1]], [["id", ">", 3]]]})
    assert loaded["id"].tolist() == [1, 4]


def test_unknown_read_option(parquet_file):
    with pytest.raises(
        ConnectorError,
        match=r"unknown read option 'sep' for Parquet; allowed: columns, filters, filesystem$",
    ):
        load(str(parquet_file), {"sep": ";"})


def test_missing_column(parquet_file):
    with pytest.raises(ConnectorError, match=r"bad read option columns or filters: .*salary"):
        load(str(parquet_file), {"columns": ["salary"]})


def test_columns_must_be_a_list(parquet_file):
    with pytest.raises(ConnectorError, match=r"'columns' must be a list of names, got 'city'"):
        load(str(parquet_file), {"columns": "city"})


def test_malformed_filter(parquet_file):
    with pytest.raises(ConnectorError, match=r"expected \[column, op, value\], got 'id > 1'"):
        load(str(parquet_file), {"filters": ["id > 1"]})


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "bank.parquet").write_text("id,city\n1,Lyon\n")
    with pytest.raises(ConnectorError, match=r"source '.*bank\.parquet': cannot read as Parquet"):
        load(str(tmp_path / "bank.parquet"))


def test_missing_file_on_a_filesystem(tmp_path):
    filesystem = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
    with pytest.raises(ConnectorError, match=r"'org/bank\.pq': file not found: org/bank\.pq$"):
        load("org/bank.pq", {"filesystem": filesystem})


def test_missing_file_uri(tmp_path):
    uri = (tmp_path / "gone.parquet").as_uri()
    expected = re.escape(f"file not found: {tmp_path}/gone.parquet")
    with pytest.raises(ConnectorError, match=rf"{expected}$"):
        load(uri)


def test_relative_file_uri_is_refused():
    with pytest.raises(ConnectorError, match=r"file:// URI needs an absolute path"):
        load("file://data/bank.parquet")


def test_filesystem_option_with_a_uri_is_refused(parquet_file):
    with pytest.raises(ConnectorError, match=r"'filesystem' takes a path inside that filesystem"):
        load(parquet_file.as_uri(), {"filesystem": pyarrow.fs.LocalFileSystem()})
