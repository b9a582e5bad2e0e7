"""SQL sources: SQLite files and a real PostgreSQL server (never a mock)."""

from __future__ import annotations

import re
import sqlite3

import pandas
import pytest
import sqlalchemy as sa

from fedmine.connectors import load
from fedmine.errors import ConnectorError
from tests.support.postgres import free_port

INJECTION = 'Customers"; DROP TABLE "Customers"; --'


@pytest.fixture
def sqlite_db(tmp_path, frame):
    """``org/bank.db`` under tmp_path with tables Customers, empty_table and a view."""
    (tmp_path / "org").mkdir()
    path = tmp_path / "org" / "bank.db"
    with sqlite3.connect(path) as conn:
        frame.to_sql("Customers", conn, index=False)
        frame.iloc[:0].to_sql("empty_table", conn, index=False)
        conn.execute('CREATE VIEW defaulters AS SELECT * FROM "Customers" WHERE defaulted = 1')
    return path


@pytest.fixture(scope="module")
def postgres_db(postgres_url):
    """The session's database: Customers (in public and in schema branch), empty_table."""
    frame = pandas.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "Age (years)": [31.5, None, 47.0, 22.25],
            "city": ["Lyon", "Graz", "Porto", "Turku"],
            "defaulted": [0, 1, 0, 1],
        }
    )
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS branch"))
        frame.to_sql("Customers", conn, index=False, if_exists="replace")
        frame.iloc[:2].to_sql("Customers", conn, schema="branch", index=False, if_exists="replace")
        frame.iloc[:0].to_sql("empty_table", conn, index=False, if_exists="replace")
    engine.dispose()
    return postgres_url


# -- SQLite -------------------------------------------------------------------


def test_sqlite_table(sqlite_db, frame):
    pandas.testing.assert_frame_equal(load(f"sqlite:///{sqlite_db}?table=Customers"), frame)


def test_sqlite_relative_path_resolves_against_base_dir(sqlite_db, frame):
    loaded = load("sqlite:///org/bank.db?table=Customers", base_dir=sqlite_db.parent.parent)
    pandas.testing.assert_frame_equal(loaded, frame)


def test_sqlite_query(sqlite_db, frame):
    loaded = load(f"sqlite:///{sqlite_db}?query=SELECT id, city FROM Customers WHERE id %3E= 3 ORDER BY id")
    pandas.testing.assert_frame_equal(loaded, frame.loc[2:, ["id", "city"]].reset_index(drop=True))


def test_sqlite_query_keeps_plus_signs(sqlite_db):
    loaded = load(f"sqlite:///{sqlite_db}?query=SELECT id+1 AS next FROM Customers")
    assert loaded["next"].tolist() == [2, 3, 4, 5]


def test_sqlite_view_and_columns_option(sqlite_db):
    loaded = load(f"sqlite:///{sqlite_db}?table=defaulters", {"columns": ["Age (years)", "id"]})
    assert list(loaded.columns) == ["Age (years)", "id"]
    assert loaded["id"].tolist() == [2, 4]


def test_sqlite_empty_table_is_an_empty_frame(sqlite_db, frame):
    loaded = load(f"sqlite:///{sqlite_db}?table=empty_table")
    assert list(loaded.columns) == list(frame.columns)
    assert len(loaded) == 0


def test_sqlite_missing_table_lists_the_tables(sqlite_db):
    with pytest.raises(
        ConnectorError,
        match=r"organisation 'bank': source 'sqlite:///.*\?table=customer': "
        r"table 'customer' not found; tables: Customers, defaulters, empty_table$",
    ):
        load(f"sqlite:///{sqlite_db}?table=customer", org="bank")


def test_sqlite_missing_file_names_the_resolved_path_and_creates_nothing(tmp_path):
    expected = re.escape(f"file not found: {tmp_path}/org/none.db")
    with pytest.raises(ConnectorError, match=rf"{expected}$"):
        load("sqlite:///org/none.db?table=t", base_dir=tmp_path)
    assert not (tmp_path / "org" / "none.db").exists()


def test_sqlite_file_is_opened_read_only(sqlite_db):
    with pytest.raises(ConnectorError, match=r"reading query failed: attempt to write a readonly"):
        load(f"sqlite:///{sqlite_db}?query=DELETE FROM Customers RETURNING id")
    assert len(load(f"sqlite:///{sqlite_db}?table=Customers")) == 4


def test_sqlite_table_name_cannot_inject_sql(sqlite_db):
    with pytest.raises(ConnectorError, match=r"table 'Customers\"; DROP TABLE .*' not found"):
        load(f"sqlite:///{sqlite_db}?table={INJECTION}")
    assert len(load(f"sqlite:///{sqlite_db}?table=Customers")) == 4


@pytest.mark.parametrize(
    ("params", "given"),
    [
        ("", r"no \?table= or \?query="),
        ("?table=t&query=SELECT 1", r"both \?table= and \?query="),
    ],
)
def test_sqlite_needs_exactly_one_of_table_and_query(sqlite_db, params, given):
    with pytest.raises(ConnectorError, match=rf"{given}; a database source needs exactly one"):
        load(f"sqlite:///{sqlite_db}{params}")


def test_sqlite_unknown_parameter(sqlite_db):
    with pytest.raises(ConnectorError, match=r"unknown parameter 'tabel'; allowed: table, query, schema$"):
        load(f"sqlite:///{sqlite_db}?tabel=Customers")


def test_sqlite_uri_with_a_host_is_refused():
    with pytest.raises(ConnectorError, match=r"a SQLite URI names a file and no host"):
        load("sqlite://server/bank.db?table=t")


def test_not_a_sqlite_file(tmp_path):
    (tmp_path / "bank.db").write_text("id,city\n" * 100)
    with pytest.raises(ConnectorError, match=r"cannot list tables: file is not a database"):
        load(f"sqlite:///{tmp_path}/bank.db?table=t")


def test_database_read_options_are_checked(sqlite_db):
    with pytest.raises(ConnectorError, match=r"unknown read option 'sep' for a database; allowed"):
        load(f"sqlite:///{sqlite_db}?table=Customers", {"sep": ";"})
    with pytest.raises(ConnectorError, match=r"'columns' applies to \?table= only"):
        load(f"sqlite:///{sqlite_db}?query=SELECT 1", {"columns": ["id"]})


def test_query_parameters_through_read_options(sqlite_db):
    loaded = load(
        f"sqlite:///{sqlite_db}?query=SELECT city FROM Customers WHERE id = :id",
        {"params": {"id": 3}},
    )
    assert loaded["city"].tolist() == ["Porto"]


# -- PostgreSQL ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql://", "postgresql+psycopg://"])
def test_postgresql_table(postgres_db, frame, scheme):
    url = postgres_db.replace("postgresql://", scheme)
    pandas.testing.assert_frame_equal(load(f"{url}?table=Customers"), frame)


def test_postgresql_query(postgres_db, frame):
    loaded = load(f'{postgres_db}?query=SELECT "Age (years)", city FROM "Customers" WHERE id %3C 3 ORDER BY id')
    expected = frame.loc[:1, ["Age (years)", "city"]]
    pandas.testing.assert_frame_equal(loaded, expected)


def test_postgresql_schema(postgres_db, frame):
    loaded = load(f"{postgres_db}?table=Customers&schema=branch")
    pandas.testing.assert_frame_equal(loaded, frame.iloc[:2])


def test_postgresql_libpq_parameters_pass_through(postgres_db, frame):
    loaded = load(f"{postgres_db}?table=Customers&application_name=fedmine&connect_timeout=5")
    pandas.testing.assert_frame_equal(loaded, frame)


def test_postgresql_empty_table(postgres_db, frame):
    loaded = load(f"{postgres_db}?table=empty_table")
    assert list(loaded.columns) == list(frame.columns)
    assert len(loaded) == 0


def test_postgresql_missing_table_lists_the_tables(postgres_db):
    with pytest.raises(
        ConnectorError,
        match=r"organisation 'clinic': source '.*\?table=customers': "
        r"table 'customers' not found; tables: Customers, empty_table$",
    ):
        load(f"{postgres_db}?table=customers", org="clinic")


def test_postgresql_missing_table_in_a_schema(postgres_db):
    with pytest.raises(
        ConnectorError,
        match=r"table 'empty_table' not found in schema 'branch'; tables: Customers$",
    ):
        load(f"{postgres_db}?table=empty_table&schema=branch")


def test_postgresql_table_name_cannot_inject_sql(postgres_db):
    with pytest.raises(ConnectorError, match=r"table 'Customers\"; DROP TABLE .*' not found"):
        load(f"{postgres_db}?table={INJECTION}")
    assert len(load(f"{postgres_db}?table=Customers")) == 4


def test_postgresql_failing_query(postgres_db):
    with pytest.raises(ConnectorError, match=r"reading query failed: .*\"nope\" does not exist"):
        load(f"{postgres_db}?query=SELECT * FROM nope")


def test_postgresql_without_table_or_query(postgres_db):
    with pytest.raises(ConnectorError, match=r"no \?table= or \?query=; a database source needs"):
        load(postgres_db)


def test_postgresql_unknown_parameter(postgres_db):
    with pytest.raises(
        ConnectorError,
        match=r"invalid connection option \"tabel\"; allowed: table, query, schema and libpq",
    ):
        load(f"{postgres_db}?tabel=Customers")


def test_postgresql_without_database_name():
    with pytest.raises(ConnectorError, match=r"no database name"):
        load("postgresql://postgres@127.0.0.1:5432?table=t")


def test_unreachable_server_names_host_and_port_but_not_the_password():
    port = free_port()
    source = f"postgresql://analyst:s3cr3t-Pa55@127.0.0.1:{port}/bank?table=customers"
    with pytest.raises(ConnectorError) as caught:
        load(source, org="bank")
    message = str(caught.value)
    assert message.startswith(f"organisation 'bank': source 'postgresql://analyst:***@127.0.0.1:{port}/bank?table=")
    assert f"cannot connect to 127.0.0.1:{port}: " in message
    assert "s3cr3t" not in message
    assert "\n" not in message


@pytest.mark.parametrize("password", ["hunter2", "p%40ss%2Fw0rd", "colon:in"])
def test_password_never_appears_in_an_error_message(postgres_db, password):
    # Trust auth accepts any password, so the failure is the missing table.
    url = postgres_db.replace("postgres@", f"postgres:{password}@")
    with pytest.raises(ConnectorError, match=r"table 'missing' not found") as caught:
        load(f"{url}?table=missing")
    message = str(caught.value)
    assert "postgres:***@" in message
    for secret in {password, password.replace("%40", "@").replace("%2F", "/")}:
        assert secret not in message


def test_wrong_database_name(postgres_db):
    url = postgres_db.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(
        ConnectorError,
        match=r"cannot connect to 127\.0\.0\.1:\d+: .*\"no_such_db\" does not exist",
    ):
        load(f"{url}?table=t")


@pytest.mark.parametrize("password", ["plain@at", "sla/sh"])
def test_unencoded_special_characters_in_a_password_are_refused_and_masked(password):
    source = f"postgresql://analyst:{password}@127.0.0.1:5432/bank?table=t"
    with pytest.raises(ConnectorError, match=r"percent-encode '@' and '/'") as caught:
        load(source)
    message = str(caught.value)
    assert password not in message
    assert "source 'postgresql://analyst:***@127.0.0.1:5432/bank?table=t'" in message


def test_unreachable_database_is_transient_and_bad_input_is_not(tmp_path):
    """The flow retries a source only when trying again may help."""
    import socket

    from fedmine.connectors import load
    from fedmine.errors import ConnectorError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectorError) as unreachable:
        load(f"postgresql://u:secret@127.0.0.1:{port}/db?table=t&connect_timeout=2")
    assert unreachable.value.transient
    with pytest.raises(ConnectorError) as missing:
        load(str(tmp_path / "absent.csv"))
    assert not missing.value.transient
