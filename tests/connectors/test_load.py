"""connectors.load: dispatch, path resolution and the shape of every error message."""

from __future__ import annotations

import ast
import pathlib
import re
from urllib.parse import quote

import pandas
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedmine import connectors
from fedmine.connectors import SUPPORTED, load
from fedmine.connectors.source import mask
from fedmine.errors import ConnectorError, FedmineError

SUPPORTED_LIST = re.escape(
    ".csv, .csv.gz, .tsv, .txt, .parquet, .pq, file://, sqlite://, postgresql://, postgresql+psycopg://"
)


def test_supported_lists_suffixes_and_schemes():
    assert SUPPORTED == (
        ".csv", ".csv.gz", ".tsv", ".txt", ".parquet", ".pq",
        "file://", "sqlite://", "postgresql://", "postgresql+psycopg://",
    )  # fmt: skip


def test_connector_error_is_a_fedmine_error():
    assert issubclass(ConnectorError, FedmineError)


@pytest.mark.parametrize("name", ["bank.csv", "bank.parquet"])
def test_relative_path_resolves_against_base_dir(tmp_path, frame, name, monkeypatch):
    (tmp_path / "config" / "data").mkdir(parents=True)
    path = tmp_path / "config" / "data" / name
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter

    loaded = load(f"data/{name}", base_dir=tmp_path / "config")

    pandas.testing.assert_frame_equal(loaded, frame)


def test_relative_path_without_base_dir_uses_the_working_directory(tmp_path, frame, monkeypatch):
    frame.to_csv(tmp_path / "bank.csv", index=False)
    monkeypatch.chdir(tmp_path)
    pandas.testing.assert_frame_equal(load("bank.csv"), frame)


def test_absolute_path_ignores_base_dir(tmp_path, frame):
    frame.to_csv(tmp_path / "bank.csv", index=False)
    loaded = load(str(tmp_path / "bank.csv"), base_dir="/nonexistent")
    pandas.testing.assert_frame_equal(loaded, frame)


def test_path_objects_are_accepted(tmp_path, frame):
    frame.to_csv(tmp_path / "bank.csv", index=False)
    pandas.testing.assert_frame_equal(load(tmp_path / "bank.csv"), frame)


def test_missing_file_names_organisation_source_and_resolved_path(tmp_path):
    expected = f"organisation 'bank': source 'data/x.csv': file not found: {tmp_path}/data/x.csv"
    with pytest.raises(ConnectorError, match=f"^{re.escape(expected)}$"):
        load("data/x.csv", base_dir=tmp_path, org="bank")


def test_without_org_the_message_starts_with_the_source(tmp_path):
    with pytest.raises(ConnectorError, match=r"^source 'x\.parquet': file not found: "):
        load("x.parquet", base_dir=tmp_path)


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("bank.xlsx", "unsupported suffix '.xlsx'"),
        ("bank", "no file suffix"),
        ("mysql://host/db?table=t", "unsupported scheme 'mysql://'"),
        ("postgres://host/db?table=t", "unsupported scheme 'postgres://'"),
        ("s3://bucket/bank.json", "unsupported suffix '.json'"),
    ],
)
def test_unsupported_source_lists_what_is_supported(source, what):
    with pytest.raises(
        ConnectorError,
        match=rf"^organisation 'bank': source '{re.escape(source)}': {re.escape(what)}; "
        rf"supported: {SUPPORTED_LIST}$",
    ):
        load(source, org="bank")


def test_unknown_filesystem_scheme_lists_what_is_supported():
    with pytest.raises(
        ConnectorError,
        match=r"unsupported scheme 'nosuchfs' \(.*\); supported: .*, a pyarrow or an fsspec filesystem URI$",
    ):
        load("nosuchfs://bucket/bank.parquet")


@pytest.mark.parametrize(
    ("source", "read", "reason"),
    [
        ("", None, "a source must be a non-empty path or URI, got ''"),
        ("bank.csv", ["sep", ";"], "read options must be a mapping, got list"),
    ],
)
def test_malformed_arguments(source, read, reason):
    with pytest.raises(ConnectorError, match=rf": {reason}$"):
        load(source, read)


def test_messages_are_one_line(tmp_path):
    (tmp_path / "bad.csv").write_text('a,b\n1,"unterminated\n2,3\n')
    with pytest.raises(ConnectorError) as caught:
        load(str(tmp_path / "bad.csv"), {"engine": "c"})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:pw@h:5/db", "postgresql://u:***@h:5/db"),
        ("postgresql+psycopg://u:p%40w@h/db?table=t", "postgresql+psycopg://u:***@h/db?table=t"),
        ("s3://key:secret@bucket/x.parquet", "s3://key:***@bucket/x.parquet"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///a.db?query=SELECT 'a@b'", "sqlite:///a.db?query=SELECT 'a@b'"),
    ],
)
def test_mask(text, masked):
    assert mask(text) == masked


def test_mask_hides_listed_secrets_anywhere():
    assert mask("failed for hunter2 at host", ["hunter2"]) == "failed for *** at host"


def test_connectors_import_neither_prefect_nor_mlflow():
    package = pathlib.Path(connectors.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"prefect", "mlflow"}, f"{module.name}: {name}"


@given(password=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=6))
@settings(max_examples=200, deadline=None)
def test_no_password_survives_into_a_message(password):
    encoded = quote(password, safe="")
    source = f"postgresql://analyst:{encoded}@127.0.0.1:1/bank"
    rest = f"organisation 'bank': source '{source.replace(encoded, '***')}'"
    assume(password not in rest and encoded not in rest)  # no coincidental matches
    with pytest.raises(ConnectorError) as caught:
        load(source, org="bank")  # no ?table=: fails before connecting
    message = str(caught.value)
    assert password not in message
    assert encoded not in message
