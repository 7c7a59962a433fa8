"""The process that serves the platform's Prefect deployments (`flows/deployments.py`, Prefect's `serve`).

`churn up` starts it after the Prefect API it registers with (the embedded server, or PREFECT_API_URL), with the
stack's URLs in its environment, so every flow run it executes reaches the same servers; `churn down` stops it
first. It is healthy while it runs and the API lists the platform's deployments (tag `churn-platform`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import psutil

from churn_platform.settings import Settings
from churn_platform.stack.base import (
    Component,
    ComponentStatus,
    StackError,
    StackRecord,
    child_environment,
    opener_for,
    running_record,
    stop_recorded,
    wait_for_child,
)

log = logging.getLogger(__name__)

TAG = "churn-platform"
MODULE = "flows.deployments"
# `churn flows run NAME` -> (flow, deployment, what it does); Prefect names a deployment "<flow>/<deployment>"
DEPLOYMENTS = {
    "day": ("platform-day", "daily", "one day of the platform, in order: the steps below, and a world's traffic"),
    "simulate": ("simulate", "scenario", "a synthetic world's closed loop: N platform days in a row, drift optional"),
    "advance-world": ("advance-world", "one-day", "a synthetic world: one more simulated day of events"),
    "features": ("features", "refresh", "snapshots and labels to the newest event, then materialization"),
    "monitor": ("monitor", "champion", "drift, data quality, realised and estimated performance, alerts"),
    "retrain": ("retrain", "if-needed", "the retraining triggers; a challenger and its A/B experiment if one fires"),
    "ab-analysis": ("ab-analysis", "running", "the running experiment's analysis and decision"),
}


def prefect_post(api_url: str, route: str, body: dict[str, Any], *, timeout_s: float = 30.0) -> Any:
    """POST a JSON body to a Prefect API route (e.g. `/flow_runs/filter`); the decoded answer."""
    request = urllib.request.Request(
        f"{api_url.rstrip('/')}{route}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with opener_for(api_url).open(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def served_deployments(api_url: str) -> list[str]:
    """The names of the platform's deployments the API holds (empty when it does not answer)."""
    try:
        found = prefect_post(api_url, "/deployments/filter", {"deployments": {"tags": {"all_": [TAG]}}, "limit": 200},
                             timeout_s=5)  # fmt: skip
        return sorted(str(d["name"]) for d in found)
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return []


class EmbeddedFlows:
    """`python -m flows.deployments`: serves the deployments, runs their flow runs as child processes."""

    name = "flows"
    embedded = True

    def __init__(self, settings: Settings, dependencies: Sequence[Component]) -> None:
        self.settings = settings
        self.dependencies = dependencies  # postgres, redis, mlflow, prefect: started first, their URLs handed down
        self.directory = (settings.data_dir / "flows").resolve()
        self.log_path = self.directory / "flows.log"
        self.record = StackRecord(settings.data_dir)
        self.expected = len(DEPLOYMENTS)

    def start(self) -> str:
        recorded = running_record(self.record, self.name)
        postgres, redis, mlflow, prefect = (component.start() for component in self.dependencies)
        if recorded is not None:
            return prefect
        folder = self.settings.flows_dir.resolve()
        if not (folder / "deployments.py").exists():
            raise StackError(f"no flows/deployments.py in {folder.parent} (CHURN_FLOWS_DIR)")
        self.directory.mkdir(parents=True, exist_ok=True)
        environment = child_environment(**{
            "CHURN_DATABASE_URL": postgres,
            "CHURN_REDIS_URL": redis,
            "MLFLOW_TRACKING_URI": mlflow,
            "PREFECT_API_URL": prefect,
            "CHURN_DATA_DIR": str(self.settings.data_dir.resolve()),
            "CHURN_FEATURE_REPO": str(self.settings.feature_repo.resolve()),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(folder.parent), os.environ.get("PYTHONPATH")])),
            # a run asked for (the UI's button, `churn flows run`) starts within 2 s rather than Prefect's 10
            "PREFECT_RUNNER_POLL_FREQUENCY": os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", "2"),
        })  # fmt: skip
        with open(self.log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", MODULE], cwd=folder.parent, env=environment, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.record.put(
            self.name,
            {"pid": process.pid, "started": psutil.Process(process.pid).create_time(), "url": prefect,
             "log": str(self.log_path)},
        )  # fmt: skip
        took = wait_for_child(
            process, lambda: len(served_deployments(prefect)) >= self.expected,
            timeout_s=self.settings.prefect_start_timeout_s, what="the flows' deployment server",
            setting="CHURN_PREFECT_START_TIMEOUT_S", log_path=self.log_path,
            forget=lambda: self.record.put(self.name, None),
        )  # fmt: skip
        log.info("serving the platform's deployments (pid %s) after %.1f s", process.pid, took)
        return prefect

    def stop(self) -> bool:
        pid = stop_recorded(self.record, self.name)
        if pid is not None:
            log.info("stopped the deployment server (pid %s)", pid)
        return pid is not None

    def status(self) -> ComponentStatus:
        recorded = running_record(self.record, self.name)
        if recorded is None:
            return ComponentStatus(self.name, None, False, True, "not running")
        served = served_deployments(recorded[1])
        healthy = len(served) >= self.expected
        detail = (
            f"serving {len(served)} deployments: {', '.join(served)}"
            if healthy
            else f"running, but the API lists {len(served)} of its deployments (log: {self.log_path})"
        )
        return ComponentStatus(self.name, recorded[1], healthy, True, detail)
