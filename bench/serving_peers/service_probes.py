"""Probes of the prediction service under test: readiness, its workers' resident memory, its prediction log."""

from __future__ import annotations

import contextlib
import time
from urllib.parse import urlsplit

import psutil

from churn_platform import db, stack
from churn_platform.settings import Settings

LOG_SETTLE_S = 15.0
COUNT_LOG_SQL = "SELECT count(*) FROM serving.prediction_log"


def wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while stack.service_health(url) != (True, "ready"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the prediction service at {url} was not ready within {timeout_s:.0f} s")
        time.sleep(0.2)


def service_worker_connections(settings: Settings) -> list[int]:
    """Open client connections of each service worker, most first: BentoML's workers accept from one shared socket,
    so a few long-lived wrk connections can land unevenly (all on one worker, at worst)."""
    recorded = stack.StackRecord(settings.data_dir).read().get("service")
    if not recorded:
        raise RuntimeError("the prediction service is not running")
    port = urlsplit(str(recorded["url"])).port
    counts = []
    for child in psutil.Process(int(str(recorded["pid"]))).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "_bentoml_impl.worker.service" in child.cmdline():
                established = [c for c in child.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED]
                counts.append(sum(1 for c in established if c.laddr and c.laddr.port == port))
    return sorted(counts, reverse=True)


def service_worker_rss_mib(settings: Settings) -> float:
    """Resident memory of the service's worker processes (BentoML's workers, not its supervisor), in MiB.

    The supervisor leads the process group the local stack started; its workers run in sessions of their own, so
    they are found as its children.
    """
    recorded = stack.StackRecord(settings.data_dir).read().get("service")
    if not recorded:
        raise RuntimeError("the prediction service is not running")
    total = 0
    for child in psutil.Process(int(str(recorded["pid"]))).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "_bentoml_impl.worker.service" in child.cmdline():
                total += child.memory_info().rss
    if total == 0:
        raise RuntimeError("no worker process found under the prediction service")
    return total / 2**20


def logged_predictions(database_url: str) -> int:
    """Rows in the prediction log once the service's writer has caught up (the count stops moving)."""
    deadline, last = time.monotonic() + LOG_SETTLE_S, -1
    with db.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(COUNT_LOG_SQL).fetchone()
            count = int(row[0]) if row else 0
            if count == last:
                return count
            last = count
            time.sleep(1.0)
    return last
