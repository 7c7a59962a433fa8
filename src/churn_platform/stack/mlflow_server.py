"""MLflow for the platform: a configured tracking server, or an embedded `mlflow server` child process.

The embedded server listens on loopback, keeps its runs and model registry in a database of its own on the
platform's PostgreSQL, and serves artifacts itself (`--serve-artifacts`) from a folder under the data folder, so a
client needs nothing but its URL. Its PID, start time, URL and log are recorded in `stack.json`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from urllib.parse import urlsplit

import psutil
import psycopg

from churn_platform.db import ensure_database, sqlalchemy_url
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


class EmbeddedMlflow:
    """`mlflow server` on a loopback port: runs and registry in PostgreSQL, artifacts served from the data folder."""

    name = "mlflow"
    embedded = True

    def __init__(self, settings: Settings, postgres: Component) -> None:
        self.postgres = postgres
        self.directory = (settings.data_dir / "mlflow").resolve()
        self.artifacts = self.directory / "artifacts"
        self.log_path = self.directory / "mlflow.log"
        self.port = settings.mlflow_port
        self.database = settings.mlflow_database
        self.timeout_s = settings.mlflow_start_timeout_s
        self.record = StackRecord(settings.data_dir)

    def _recorded(self) -> tuple[int, str] | None:
        return running_record(self.record, self.name)

    def start(self) -> str:
        recorded = self._recorded()
        if recorded is not None:
            # Running, maybe still starting: wait for it rather than start a second server.
            url = recorded[1]
            wait_until(lambda: mlflow_health(url), self.timeout_s, f"embedded MLflow server (log: {self.log_path})")
            return url
        port = self.port or free_loopback_port()
        if not loopback_port_is_free(port):
            raise StackError(
                f"port {port} on {LOOPBACK} is taken: set CHURN_MLFLOW_PORT to a free port (0 picks one), "
                "or MLFLOW_TRACKING_URI to use the server listening there"
            )
        backend = self._backend_store()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        url = f"http://{LOOPBACK}:{port}"
        process = self._spawn(port, backend)
        # Recorded before the wait, so a server that starts but never turns healthy is not orphaned.
        self.record.put(
            self.name,
            {
                "pid": process.pid,
                "started": psutil.Process(process.pid).create_time(),
                "url": url,
                "artifacts": str(self.artifacts),
                "log": str(self.log_path),
            },
        )
        return self._wait_healthy(process, url)

    def _backend_store(self) -> str:
        """SQLAlchemy URL of the server's own database on the platform's PostgreSQL, created if missing."""
        platform_url = self.postgres.start()  # callers hold the stack lock; starts PostgreSQL only if it is down
        url = psycopg.conninfo.make_conninfo(platform_url, dbname=self.database)
        ensure_database(url)
        return sqlalchemy_url(url, self.database)

    def _spawn(self, port: int, backend: str) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            # Through the environment, not the command line: the URL may carry the database password.
            "MLFLOW_BACKEND_STORE_URI": backend,
            # Job execution (GenAI judges, trace roll-ups) adds seven huey worker processes; the platform uses none.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        environment.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a local server phones nowhere unless asked
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--host", LOOPBACK,
            "--port", str(port),
            "--workers", "1",
            "--serve-artifacts",
            "--artifacts-destination", str(self.artifacts),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log_file:
            return subprocess.Popen(
                command,
                cwd=self.directory,
                env=environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command; `churn down` stops its process group
            )

    def _wait_healthy(self, process: subprocess.Popen[bytes], url: str) -> str:
        took = wait_for_child(
            process, lambda: mlflow_health(url)[0], timeout_s=self.timeout_s, what="embedded MLflow server",
            setting="CHURN_MLFLOW_START_TIMEOUT_S", log_path=self.log_path,
            forget=lambda: self.record.put(self.name, None),
        )  # fmt: skip
        log.info("started embedded MLflow (pid %s) on %s in %.1f s", process.pid, url, took)
        return url

    def stop(self) -> bool:
        pid = stop_recorded(self.record, self.name)
        if pid is not None:
            log.info("stopped embedded MLflow (pid %s)", pid)
        return pid is not None

    def status(self) -> ComponentStatus:
        recorded = self._recorded()
        if recorded is None:
            return ComponentStatus(self.name, None, False, True, f"not running (artifacts in {self.artifacts})")
        healthy, detail = mlflow_health(recorded[1])
        if not healthy:
            detail = f"running but not answering: {detail} (log: {self.log_path})"
        return ComponentStatus(self.name, recorded[1], healthy, True, detail)
