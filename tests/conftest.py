"""Session-wide fixtures: a Prefect test server, a real PostgreSQL, the demo federation.

Expensive things start once per session: Prefect's test harness (a temporary
API server, about 15-20 s) and PostgreSQL (about 1 s). MLflow stores live in
temporary folders; no test writes to the project's mlruns/.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

from tests.support.postgres import PostgresUnavailable, running_postgres

DEMO_ROUNDS = 40  # the demo config's training.rounds


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory):
    """URL of a throwaway PostgreSQL database, ``postgresql://postgres@127.0.0.1:PORT/DB``.

    Fails (never skips) when the server binaries are missing: users read from
    PostgreSQL, so it is tested against the real thing.
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


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API server for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> str:
    """A session-wide MLflow store (SQLite, artifacts beside it)."""
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlruns") / "mlflow.db")


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory, store) -> Path:
    """The demo federation (bank CSV, retailer Parquet, telecom SQLite) in a temporary folder."""
    from fedmine.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("demo"), tracking_uri=store)


@pytest.fixture(scope="session")
def trained(prefect_harness, demo_config, tmp_path_factory) -> dict:
    """The demo federation trained once through the Prefect flow, as configured (histogram, secure aggregation)."""
    from fedmine.flows.train import federated_training

    summary_path = tmp_path_factory.mktemp("summary") / "summary.json"
    summary = federated_training(str(demo_config), [], str(summary_path))
    return {"summary": summary, "summary_path": summary_path, "config": demo_config}


@pytest.fixture(scope="session")
def dask_cluster():
    """One real Dask LocalCluster for the session: 2 worker processes (not threads), one thread each.

    Yields the client; organisations on a cluster in the tests use it
    (``ClusterParty.for_organisation(..., client=...)``). A test that kills a
    worker leaves the cluster with 2 workers again (the nanny restarts it).
    """
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0", host="127.0.0.1"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
