"""Delimited text: round trips, read options, and their errors."""

from __future__ import annotations

import pandas
import pyarrow.fs
import pytest

from fedmine.connectors import load
from fedmine.errors import ConnectorError


def test_csv_round_trip_with_separator_and_missing_markers(tmp_path, frame):
    path = tmp_path / "bank.csv"
    frame.to_csv(path, sep=";", index=False, na_rep="?")
    path.write_text(path.read_text().replace("Lyon", "-9"))  # a second missing marker

    loaded = load(str(path), {"sep": ";", "na_values": ["?", "-9"]})

    expected = frame.assign(city=[None, "Graz", "Porto", "Turku"])
    pandas.testing.assert_frame_equal(loaded, expected)


def test_csv_gz_is_decompressed(tmp_path, frame):
    path = tmp_path / "bank.csv.gz"
    frame.to_csv(path, index=False)
    pandas.testing.assert_frame_equal(load(str(path)), frame)


@pytest.mark.parametrize(("name", "sep"), [("bank.tsv", "\t"), ("bank.txt", ",")])
def test_default_separator_follows_the_suffix(tmp_path, frame, name, sep):
    path = tmp_path / name
    frame.to_csv(path, sep=sep, index=False)
    pandas.testing.assert_frame_equal(load(str(path)), frame)


def test_suffix_is_case_insensitive(tmp_path, frame):
    path = tmp_path / "BANK.CSV"
    frame.to_csv(path, index=False)
    pandas.testing.assert_frame_equal(load(str(path)), frame)


def test_csv_on_a_pyarrow_filesystem(tmp_path, frame):
    (tmp_path / "org").mkdir()
    frame.to_csv(tmp_path / "org" / "bank.csv.gz", index=False)
    filesystem = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())

    loaded = load("org/bank.csv.gz", {"filesystem": filesystem})

    pandas.testing.assert_frame_equal(loaded, frame)


def test_unknown_read_option_is_named_with_a_suggestion(tmp_path, frame):
    frame.to_csv(tmp_path / "bank.csv", index=False)
    with pytest.raises(
        ConnectorError,
        match=r"source 'bank.csv': unknown read option 'na_value' .*did you mean 'na_values'\?",
    ):
        load("bank.csv", {"na_value": ["?"]}, base_dir=tmp_path)


def test_bad_read_option_value_is_reported(tmp_path, frame):
    frame.to_csv(tmp_path / "bank.csv", index=False)
    with pytest.raises(ConnectorError, match=r"source 'bank.csv': bad read options: "):
        load("bank.csv", {"usecols": ["no such column"]}, base_dir=tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConnectorError, match=r"file is empty: .*empty\.csv$"):
        load(str(tmp_path / "empty.csv"))


def test_header_only_file_is_an_empty_frame(tmp_path):
    (tmp_path / "header.csv").write_text("id,city\n")
    loaded = load(str(tmp_path / "header.csv"))
    assert list(loaded.columns) == ["id", "city"]
    assert len(loaded) == 0


def test_undecodable_text_suggests_an_encoding(tmp_path):
    (tmp_path / "latin.csv").write_bytes("city\nJyv\xe4skyl\xe4\n".encode("latin-1"))
    with pytest.raises(ConnectorError, match=r"not valid utf-8 text .*set read option 'encoding'"):
        load(str(tmp_path / "latin.csv"))
    loaded = load(str(tmp_path / "latin.csv"), {"encoding": "latin-1"})
    assert loaded["city"].tolist() == ["Jyväskylä"]


def test_a_folder_is_not_a_file(tmp_path):
    (tmp_path / "data.csv").mkdir()
    with pytest.raises(ConnectorError, match=r"is a folder, not a file: .*data\.csv"):
        load(str(tmp_path / "data.csv"))
