"""MLflow for the platform: a configured tracking server, or an embedded `mlflow server` child process.

The embedded server listens on loopback, keeps its runs and model registry in a database of its own on the
platform's PostgreSQL, and serves artifacts itself (`--serve-artifacts`) from a folder under the data folder, so a
client needs nothing but its URL. Its PID, start time, URL and log are recorded in `stack.json`.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

import psycopg

from churn_platform.db import ensure_database, sqlalchemy_url
from churn_platform.settings import Settings
from churn_platform.stack.base import (
    Component,
    EmbeddedHttpServer,
    ExternalServer,
    http_health,
)

LOOPBACK = "127.0.0.1"


def mlflow_health(url: str) -> tuple[bool, str]:
    """GET the server's `/health` (open even behind basic auth), then its `/version` for the detail."""
    return http_health(url, "/health", "/version", "MLflow")


class ExternalMlflow(ExternalServer):
    """A tracking server the user runs (MLFLOW_TRACKING_URI); the platform only checks it."""

    name = "mlflow"
    label = "MLflow"
    setting = "MLFLOW_TRACKING_URI"

    def health(self) -> tuple[bool, str]:
        if urlsplit(self.url).scheme not in ("http", "https"):
            return True, "a store the client opens itself, not a server: not checked"
        return mlflow_health(self.url)


class EmbeddedMlflow(EmbeddedHttpServer):
    """`mlflow server` on a loopback port: runs and registry in PostgreSQL, artifacts served from the data folder."""

    name = "mlflow"
    label = "MLflow"
    port_setting = "CHURN_MLFLOW_PORT"
    url_setting = "MLFLOW_TRACKING_URI"
    timeout_setting = "CHURN_MLFLOW_START_TIMEOUT_S"

    def __init__(self, settings: Settings, postgres: Component) -> None:
        super().__init__(settings.data_dir, settings.mlflow_port, settings.mlflow_start_timeout_s)
        self.postgres = postgres
        self.artifacts = self.directory / "artifacts"
        self.database = settings.mlflow_database
        self.backend: str | None = None

    def health(self, url: str) -> tuple[bool, str]:
        return mlflow_health(url)

    def url(self, port: int) -> str:
        return f"http://{LOOPBACK}:{port}"

    def prepare(self) -> dict[str, str]:
        """The server's own database on the platform's PostgreSQL, created if missing; the artifacts folder."""
        platform_url = self.postgres.start()  # callers hold the stack lock; starts PostgreSQL only if it is down
        url = psycopg.conninfo.make_conninfo(platform_url, dbname=self.database)
        ensure_database(url)
        self.backend = sqlalchemy_url(url, self.database)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        return {"artifacts": str(self.artifacts)}

    def spawn(self, port: int, environment: dict[str, str]) -> list[str]:
        assert self.backend is not None
        # Through the environment, not the command line: the URL may carry the database password.
        environment["MLFLOW_BACKEND_STORE_URI"] = self.backend
        # Job execution (GenAI judges, trace roll-ups) adds seven huey worker processes; the platform uses none.
        environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        environment.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a local server phones nowhere unless asked
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", LOOPBACK,
            "--port", str(port),
            "--workers", "1",
            "--serve-artifacts",
            "--artifacts-destination", str(self.artifacts),
        ]  # fmt: skip

    def not_running(self) -> str:
        return f"not running (artifacts in {self.artifacts})"
