"""A trained, materialized world behind a real prediction service, for the serving tests.

One module-scoped world: 400 users over 200 days, snapshots and labels, the Feast repo applied, features
materialized to a Redis db of its own, a model name of its own in the session's MLflow server with two versions
(a logistic regression as champion, a gradient-boosted model as challenger; neither refitted after its test
evaluation), and `bentoml serve` started by the local-stack code on a free port, polling every second.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from tests.integration.feature_worlds import connections, labelled_world, platform_settings

from churn_platform import stack
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import online
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import Settings
from churn_platform.training import pipeline
from churn_platform.training.trainer import TrainConfig

POLL_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ServedWorld:
    settings: Settings
    url: str  # the service
    database_url: str
    users: list[str]  # users with features in the online store
    versions: dict[str, str]  # candidate -> registered version


def build_world(settings: Settings, database_url: str) -> tuple[list[str], dict[str, str]]:
    """World, snapshots, labels, Feast apply + materialize, and one registered version per candidate."""
    labelled_world(settings, database_url, WorldConfig(users=400, days=200, seed=21), date(2025, 7, 20))
    online.materialize(settings, connections(settings))
    versions = {}
    for candidate in ("logistic_regression", "gradient_boosting"):
        # No refit: the serving tests need registered versions of each kind, not the refit on every row (tested in
        # test_training and test_training_folds), which only costs time here.
        config = TrainConfig(seed=5, test_days=21, validation_days=21, candidates=(candidate,), refit=False)
        registered = pipeline.train(settings, connections(settings, mlflow=True), config=config).registered
        assert registered is not None
        versions[candidate] = registered.version
    users = online.sample_of_latest_users(database_url, catalog_from_settings(settings), 200)
    return users, versions


@contextlib.contextmanager
def served_world(database_url: str, redis_url: str, mlflow_server: str, data_dir: Path) -> Iterator[ServedWorld]:
    """`build_world` in `database_url` and `redis_url` (emptied), behind a running service."""
    variables = {**environment(mlflow_server), "CHURN_DATA_DIR": str(data_dir)}
    with platform_settings(database_url, redis_url, **variables) as settings:
        users, versions = build_world(settings, database_url)
        with running_service(settings) as service:
            yield ServedWorld(settings, service, database_url, users, versions)


def environment(mlflow_server: str) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "CHURN_MODEL_NAME": f"churn_serving_{uuid.uuid4().hex[:8]}",
        "CHURN_SERVE_PORT": "0",
        "CHURN_SERVE_POLL_INTERVAL_S": str(POLL_INTERVAL_S),
        "CHURN_SERVE_MAX_BATCH": "20000",
    }


@contextlib.contextmanager
def running_service(settings: Settings) -> Iterator[str]:
    """`bentoml serve` of the platform's service, started and stopped by the local-stack code; yields its URL."""
    component = stack.components(settings)[-1]
    assert component.name == "service" and component.embedded
    url = component.start()
    try:
        wait_ready(url)
        yield url
    finally:
        component.stop()


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while stack.service_health(url) != (True, "ready"):
        if time.monotonic() > deadline:
            raise AssertionError(f"the prediction service at {url} was not ready within {timeout_s} s")
        time.sleep(0.2)


def post(url: str, route: str, body: Any, timeout_s: float = 60.0) -> tuple[int, Any]:
    """POST JSON (or raw bytes) and return the status and the decoded body.

    Raises on a refused or reset connection, a timeout, and an answer whose body is not JSON.
    """
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{route}", data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
