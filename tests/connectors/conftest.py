"""Fixtures for connector tests (the PostgreSQL server is tests/conftest.py's ``postgres_url``)."""

from __future__ import annotations

import pandas
import pytest


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
