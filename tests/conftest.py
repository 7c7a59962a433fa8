"""Real-service fixtures: fresh PostgreSQL databases and an isolated Redis db on the configured servers.

With CHURN_DATABASE_URL / CHURN_REDIS_URL set, tests use those servers; unset, the embedded stack is started
in a temporary data folder (the same code path `make demo` uses). A configured server that does not answer
fails the test with a message naming it: never a silent skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from churn_platform import db, local_stack
from churn_platform.settings import Settings


def _with_database(url: str, database: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=database)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for the session: the configured servers, or an embedded stack in a temporary folder."""
    data_dir = tmp_path_factory.mktemp("churn-data")
    settings = Settings(
        database_url=os.environ.get("CHURN_DATABASE_URL") or None,
        redis_url=os.environ.get("CHURN_REDIS_URL") or None,
        data_dir=data_dir,
    )
    try:
        try:
            statuses = local_stack.up(settings)
        except local_stack.StackError as exc:
            pytest.fail(f"required servers are not reachable: {exc}", pytrace=False)
        unhealthy = [s for s in statuses if not s.healthy]
        if unhealthy:
            names = ", ".join(f"{s.name} at {s.url} ({s.detail})" for s in unhealthy)
            pytest.fail(f"required servers are not reachable: {names}", pytrace=False)
        yield settings
    finally:
        local_stack.down(settings)  # stops only what this session started


@pytest.fixture(scope="session")
def server_url(stack_settings: Settings) -> str:
    """URL of the PostgreSQL server the tests create their databases on."""
    return local_stack.database_url(stack_settings)


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
def data_dir(tmp_path: Path) -> Path:
    """A temporary data folder for tests that start their own embedded servers."""
    return tmp_path / "churn"
