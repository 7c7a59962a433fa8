"""Starting and stopping the peer servers the prediction service is measured against, each in its own process group.

The peers' code (`bare_service.py`, `gateway.py`) is next to this module; `bench/serving.py` runs them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from churn_platform import stack
from churn_platform.features import feast_repo
from churn_platform.model import aliases
from churn_platform.settings import Settings
from churn_platform.stack.base import free_loopback_port, stop_process_group

PEERS = Path(__file__).resolve().parent
PEER_START_TIMEOUT_S = 120.0
FEAST_DEFAULT_MAX_REQUESTS = 1000


@contextlib.contextmanager
def process_group(
    command: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A server in a session of its own, logging to `log`; stopped on exit with everything it started."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        # BentoML's supervisor starts its workers in sessions of their own: outside the group, so stopped by pid.
        descendants: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(process.pid).children(recursive=True)
        stop_process_group(process.pid)
        process.wait(timeout=5)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()


def wait_http_ok(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = PEER_START_TIMEOUT_S
) -> None:
    """Poll a GET until it answers 2xx; fail early, with the log, when the server's process exits."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError), opener.open(url, timeout=2):
            return
        if process.poll() is not None:
            raise RuntimeError(f"the server behind {url} exited with code {process.returncode}; log: {log}")
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s; log: {log}")


@contextlib.contextmanager
def peer_server(
    name: str, command: Sequence[str], ready_path: str, port: int, *, cwd: Path, env: dict[str, str], logs: Path
) -> Iterator[str]:
    """A peer server on `port`, started, waited for and stopped; yields its base URL."""
    log = logs / f"{name}.log"
    url = f"http://127.0.0.1:{port}"
    with process_group(command, cwd=cwd, env=env, log=log) as process:
        wait_http_ok(url + ready_path, process, log)
        yield url


def python_tool(name: str) -> str:
    """A console script of this environment (`feast`, `bentoml`), next to the running interpreter."""
    return str(Path(sys.executable).parent / name)


def bare_bentoml(settings: Settings, logs: Path, *, stock: bool) -> contextlib.AbstractContextManager[str]:
    """The bare service: `stock` with BentoML's default access log and tracing, else with the service's settings."""
    port = free_loopback_port()
    command = [
        sys.executable, "-m", "bentoml", "serve", "bare_service:BareService",
        "--working-dir", str(PEERS), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {
        **os.environ,
        "BARE_SERVICE_WORKERS": str(settings.serve_workers),
        "BARE_SERVICE_STOCK": "1" if stock else "0",
        # As the prediction service has them (its settings may come from a .env the peer's folder does not see).
        "CHURN_SERVE_ACCESS_LOG": str(settings.serve_access_log).lower(),
        "CHURN_SERVE_TRACING": str(settings.serve_tracing).lower(),
        "BENTOML_HOME": str(logs / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    name = "bare-bentoml-stock" if stock else "bare-bentoml"
    return peer_server(name, command, "/readyz", port, cwd=PEERS, env=env, logs=logs)


def feast_server(settings: Settings, logs: Path, max_requests: int) -> contextlib.AbstractContextManager[str]:
    """`feast serve` from the feature repo folder, with the connections the platform gives Feast."""
    port = free_loopback_port()
    command = [python_tool("feast"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    if max_requests != FEAST_DEFAULT_MAX_REQUESTS:
        command += ["--max-requests", str(max_requests)]
    redis_url = settings.redis_url or ""
    env = {**os.environ, **feast_repo.feast_environment(settings.database_url or "", redis_url)}
    return peer_server(
        f"feast-serve-{max_requests}", command, "/health", port, cwd=settings.feature_repo.resolve(), env=env, logs=logs
    )


def mlflow_model_server(settings: Settings, logs: Path) -> contextlib.AbstractContextManager[str]:
    """`mlflow models serve` of the registry's champion, in this environment."""
    port = free_loopback_port()
    model = f"models:/{settings.model_name}@{aliases.CHAMPION}"
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri(settings)}
    return peer_server("mlflow-models-serve", command, "/ping", port, cwd=logs, env=env, logs=logs)


def peer_gateway(
    name: str, features_url: str, model_url: str, feature_service: str, logs: Path
) -> contextlib.AbstractContextManager[str]:
    """The gateway (`serving_peers/gateway.py`), one uvicorn worker, in front of a feature and a model server."""
    port = free_loopback_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "gateway:create_app", "--app-dir", str(PEERS),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PEER_FEATURES_URL": features_url,
        "PEER_MODEL_URL": model_url,
        "PEER_FEATURE_SERVICE": feature_service,
    }
    return peer_server(name, command, "/health", port, cwd=PEERS, env=env, logs=logs)


BARE_PEER = "bare BentoML"  # with the service's access-log and tracing settings: BentoML's own cost per request
STOCK_PEER = "bare BentoML, stock"  # BentoML's defaults: the floor the 0.7x target is set against


@dataclass(frozen=True)
class PeerServer:
    name: str
    url: str
    target: float | None  # ours / this, in req/s, at least (None: shown for comparison only)


@contextlib.contextmanager
def running_bare_peers(settings: Settings) -> Iterator[list[PeerServer]]:
    """Only the two bare BentoML services (for `/predict_batch` alone)."""
    logs = settings.data_dir / "peers"
    with bare_bentoml(settings, logs, stock=True) as stock, bare_bentoml(settings, logs, stock=False) as bare:
        yield [PeerServer(STOCK_PEER, stock, 0.7), PeerServer(BARE_PEER, bare, None)]


@contextlib.contextmanager
def running_peers(settings: Settings) -> Iterator[list[PeerServer]]:
    """Every peer, up before the first `/predict` run and stopped after the last, so each runs right after ours.

    The two peer paths share one `mlflow models serve`; each has its own `feast serve` and gateway.
    """
    logs = settings.data_dir / "peers"
    with contextlib.ExitStack() as stack:
        stock = stack.enter_context(bare_bentoml(settings, logs, stock=True))
        bare = stack.enter_context(bare_bentoml(settings, logs, stock=False))
        model = stack.enter_context(mlflow_model_server(settings, logs))
        gateways = []
        for max_requests in (FEAST_DEFAULT_MAX_REQUESTS, 0):
            features = stack.enter_context(feast_server(settings, logs, max_requests))
            gateway = peer_gateway(f"gateway-{max_requests}", features, model, settings.feature_catalog, logs)
            gateways.append(stack.enter_context(gateway))
        yield [
            PeerServer(STOCK_PEER, stock, 0.7),
            PeerServer(BARE_PEER, bare, None),
            PeerServer("peer path", gateways[0], 3.0),
            PeerServer("peer path, no restarts", gateways[1], 3.0),
        ]
