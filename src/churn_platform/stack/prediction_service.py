"""The prediction service in the local stack: `bentoml serve` of `bentos/churn_service` as a child process.

The child gets the URLs of the stack's own PostgreSQL, Redis and MLflow server in its environment (the embedded
servers' addresses, resolved here), so it never starts servers itself. `churn up` waits until it is alive, not
ready: a fresh stack has no champion and no features yet; the service becomes ready on its own once a model is
registered and features are materialized (it polls). `churn status` shows which.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import urllib.error
import urllib.request

import psutil

from churn_platform.settings import Settings
from churn_platform.stack.base import (
    Component,
    ComponentStatus,
    ExternalServer,
    StackError,
    StackRecord,
    child_environment,
    free_loopback_port,
    loopback_port_is_free,
    running_record,
    stop_recorded,
    wait_for_child,
)

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SERVICE = "service:ChurnService"


def service_health(url: str) -> tuple[bool, str]:
    """(alive, detail): alive answers `/livez`; the detail says whether `/readyz` does (a champion is loaded and the
    online store answers). A service that is alive but not ready yet is healthy: it polls and becomes ready."""
    if not service_alive(url):
        return False, "unreachable: /livez does not answer"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url.rstrip('/')}/readyz", timeout=3):
            return True, "ready"
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return True, "alive, not ready: no champion loaded or no online store yet (it polls)"
        return True, f"alive, /readyz answered {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return True, f"alive, /readyz unreachable: {getattr(exc, 'reason', exc)}"


def service_alive(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url.rstrip('/')}/livez", timeout=3):
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ExternalService(ExternalServer):
    """A prediction service running elsewhere (CHURN_SERVE_URL): only checked (alive is enough, ready or not)."""

    name = "service"
    label = "the prediction service"
    setting = "CHURN_SERVE_URL"

    def health(self) -> tuple[bool, str]:
        return service_health(self.url)


class EmbeddedService:
    """`bentoml serve` on a loopback port, wired to the stack's servers."""

    name = "service"
    embedded = True

    def __init__(self, settings: Settings, postgres: Component, redis: Component, mlflow: Component) -> None:
        self.settings = settings
        self.dependencies = (postgres, redis, mlflow)
        self.directory = (settings.data_dir / "service").resolve()
        self.log_path = self.directory / "service.log"
        self.record = StackRecord(settings.data_dir)

    def start(self) -> str:
        recorded = running_record(self.record, self.name)
        if recorded is not None:
            self._wait_alive(None, recorded[1])
            return recorded[1]
        port = self.settings.serve_port or free_loopback_port()
        if not loopback_port_is_free(port):
            raise StackError(
                f"port {port} on {LOOPBACK} is taken: set CHURN_SERVE_PORT to a free port (0 picks one), "
                "or CHURN_SERVE_URL to use the service listening there"
            )
        postgres, redis, mlflow = (component.start() for component in self.dependencies)
        self.directory.mkdir(parents=True, exist_ok=True)
        url = f"http://{LOOPBACK}:{port}"
        process = self._spawn(port, postgres, redis, mlflow)
        self.record.put(
            self.name,
            {"pid": process.pid, "started": psutil.Process(process.pid).create_time(), "url": url,
             "log": str(self.log_path)},
        )  # fmt: skip
        self._wait_alive(process, url)
        return url

    def _spawn(self, port: int, postgres: str, redis: str, mlflow: str) -> subprocess.Popen[bytes]:
        bento = self.settings.serve_bento_dir.resolve()
        if not (bento / "service.py").exists():
            raise StackError(f"no prediction service in {bento} (CHURN_SERVE_BENTO_DIR)")
        # The stack's own servers, resolved here: the service must not start (or lock) anything itself.
        environment = child_environment(**{
            "CHURN_DATABASE_URL": postgres,
            "CHURN_REDIS_URL": redis,
            "MLFLOW_TRACKING_URI": mlflow,
            "CHURN_DATA_DIR": str(self.settings.data_dir.resolve()),
            "CHURN_FEATURE_REPO": str(self.settings.feature_repo.resolve()),
            "BENTOML_HOME": str(self.directory / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
        })  # fmt: skip
        command = [
            sys.executable, "-m", "bentoml", "serve", SERVICE,
            "--working-dir", str(bento),
            "--host", LOOPBACK,
            "--port", str(port),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log_file:
            return subprocess.Popen(
                command, cwd=self.directory, env=environment, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def _wait_alive(self, process: subprocess.Popen[bytes] | None, url: str) -> None:
        took = wait_for_child(
            process, lambda: service_alive(url), timeout_s=self.settings.serve_start_timeout_s,
            what="prediction service", setting="CHURN_SERVE_START_TIMEOUT_S", log_path=self.log_path,
            forget=lambda: self.record.put(self.name, None),
        )  # fmt: skip
        log.info("prediction service alive on %s after %.1f s", url, took)

    def stop(self) -> bool:
        pid = stop_recorded(self.record, self.name)
        if pid is not None:
            log.info("stopped the prediction service (pid %s)", pid)
        return pid is not None

    def status(self) -> ComponentStatus:
        recorded = running_record(self.record, self.name)
        if recorded is None:
            return ComponentStatus(self.name, None, False, True, "not running")
        healthy, detail = service_health(recorded[1])
        return ComponentStatus(self.name, recorded[1], healthy, True, f"{detail} (log: {self.log_path})")
