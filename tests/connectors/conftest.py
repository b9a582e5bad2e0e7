"""Fixtures for connector tests: a real PostgreSQL server for the whole session."""

from __future__ import annotations

import contextlib

import pandas
import pytest

from tests.support.postgres import PostgresUnavailable, running_postgres


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory):
    """URL of a throwaway PostgreSQL database, ``postgresql://postgres@127.0.0.1:PORT/DB``.

    Fails (never skips) when the server binaries are missing: users read from
    PostgreSQL, so the connector is tested against the real thing.
    """
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(running_postgres(tmp_path_factory.mktemp("postgres")))
        except PostgresUnavailable as exc:
            missing = str(exc)
        else:
            missing = None
        if missing:
            pytest.fail(missing, pytrace=False)
        yield url


@pytest.fixture
def frame() -> pandas.DataFrame:
    """A small frame with a missing value, text, and column names that need quoting."""
    return pandas.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "Age (years)": [31.5, None, 47.0, 22.25],
            "city": ["Lyon", "Graz", "Porto", "Turku"],
            "defaulted": [0, 1, 0, 1],
        }
    )
