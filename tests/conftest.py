"""Real-service fixtures: fresh PostgreSQL databases and an isolated Redis db on the configured servers.

With CHURN_DATABASE_URL / CHURN_REDIS_URL set, tests use those servers; unset, the embedded stack is started
in a temporary data folder (the same code path `make demo` uses). MLflow is always the session's own `mlflow
server`, started by the local-stack code on first use, on a fresh database and the temporary folder. A server that
does not answer or start fails the test with a message naming it: never a silent skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from churn_platform import db, stack
from churn_platform.settings import Settings, get_settings


def _with_database(url: str, database: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=database)


def _up_or_fail(settings: Settings, names: tuple[str, ...]) -> None:
    """Start (or check) the named components; fail the test, naming each server, if one is not healthy."""
    try:
        statuses = stack.up(settings, only=names)
    except stack.StackError as exc:
        pytest.fail(f"required servers are not reachable: {exc}", pytrace=False)
    unhealthy = [s for s in statuses if not s.healthy]
    if unhealthy:
        described = ", ".join(f"{s.name} at {s.url} ({s.detail})" for s in unhealthy)
        pytest.fail(f"required servers are not reachable: {described}", pytrace=False)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for the session: the configured servers, or an embedded stack in a temporary folder.

    PostgreSQL and Redis start here; the MLflow server only when a test asks for `mlflow_server` (it takes tens of
    seconds), with its own database on the session's PostgreSQL and its artifacts in the temporary folder.
    """
    data_dir = tmp_path_factory.mktemp("churn-data")
    settings = Settings(
        database_url=os.environ.get("CHURN_DATABASE_URL") or None,
        redis_url=os.environ.get("CHURN_REDIS_URL") or None,
        data_dir=data_dir,
        mlflow_tracking_uri=None,
        mlflow_port=0,
        mlflow_database=f"mlflow_test_{uuid.uuid4().hex[:12]}",
    )
    try:
        _up_or_fail(settings, ("postgres", "redis"))
        yield settings
    finally:
        stack.down(settings)  # stops only what this session started
        if settings.database_url:  # an embedded PostgreSQL goes away with the temporary folder
            _drop_database(settings.database_url, settings.mlflow_database)


@pytest.fixture(scope="session")
def mlflow_server(stack_settings: Settings) -> str:
    """URL of the session's MLflow tracking server (a real `mlflow server` started by the local-stack code)."""
    _up_or_fail(stack_settings, ("mlflow",))
    return stack.mlflow_tracking_uri(stack_settings)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server for every flow run of the session (it takes ~13 s to start: once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlflow_tracking(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session's MLflow server as this test's tracking and registry URI; mlflow's globals are reset after."""
    import mlflow  # imported here: importing mlflow costs seconds, and most tests never need it

    # mlflow.set_tracking_uri / set_experiment write these variables and globals: monkeypatch restores them after.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)  # the registry then follows the tracking URI
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


def _drop_database(server_url: str, database: str) -> None:
    with psycopg.connect(_with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


@pytest.fixture(scope="session")
def server_url(stack_settings: Settings) -> str:
    """URL of the PostgreSQL server the tests create their databases on."""
    return stack.database_url(stack_settings)


@pytest.fixture(scope="session")
def make_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Factory for fresh databases with the platform schema; all are dropped at the end of the session."""
    created: list[str] = []
    admin = _with_database(server_url, "postgres")

    def make() -> str:
        name = f"churn_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        url = _with_database(server_url, name)
        db.init_schema(url)
        return url

    yield make
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(make_database: Callable[[], str]) -> str:
    """A fresh, schema-initialised database for one test."""
    return make_database()


@pytest.fixture
def platform_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The platform's settings (as the CLI and the flows read them) pointed at the test's database."""
    monkeypatch.setenv("CHURN_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A temporary data folder for tests that start their own embedded servers."""
    return tmp_path / "churn"


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's console 250 columns wide, so a table row or a sentence stays on one line. Rich reads COLUMNS once,
    when the console is made (on the CLI's first import, whichever test comes first), so the width is set on it."""
    from churn_platform.cli import output

    monkeypatch.setattr(output.console, "_width", 250)
