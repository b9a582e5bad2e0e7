"""The throwaway PostgreSQL server of tests/support/postgres.py."""

from __future__ import annotations

import psycopg
import pytest

from tests.support import postgres


def test_server_answers_on_loopback(postgres_url):
    assert postgres_url.startswith("postgresql://postgres@127.0.0.1:")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (postgres.DATABASE,)


def test_missing_binaries_point_to_the_install_script(tmp_path, monkeypatch):
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres, "SEARCH_DIRS", (str(tmp_path / "nowhere" / "*"),))
    with (
        pytest.raises(postgres.PostgresUnavailable, match=r"run \.ci/ensure-postgres"),
        postgres.running_postgres(tmp_path),
    ):
        pass
