"""Models by alias against a real MLflow server that really goes away: `ModelSet` as the prediction service builds it
(the real loader, the real registry reads, alerts kept in PostgreSQL), polling an `mlflow server` of its own that
these tests stop and start again.

tests/unit/test_serving_models.py covers the same rules fast, with an in-memory registry; here the registry's
failures are the ones MLflow's client really raises.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql
from tests.small_models import FEATURES, small_pipeline

from churn_platform import stack
from churn_platform.monitoring import alerts
from churn_platform.serving.models import LoadedModel, ModelSet, load_version
from churn_platform.serving.service_config import REGISTRY_CLIENT_ENVIRONMENT
from churn_platform.settings import Settings
from churn_platform.training import registry

ROWS: list[dict[str, Any]] = [
    {"logins": 3.0, "plan": "a"},
    {"logins": 9.0, "plan": "b"},
    {"logins": None, "plan": None},
]


@dataclass
class OwnRegistry:
    """An embedded `mlflow server` of this module's own, started and stopped by the local-stack code."""

    settings: Settings

    @property
    def url(self) -> str:
        return stack.mlflow_tracking_uri(self.settings)

    def start(self) -> str:
        statuses = stack.up(self.settings, only=("mlflow",))
        assert [(s.name, s.healthy) for s in statuses] == [("mlflow", True)], statuses
        # A restart must come back where the service looks for it: pin the port the first start picked.
        url = self.url
        self.settings = self.settings.model_copy(update={"mlflow_port": int(url.rsplit(":", 1)[1])})
        return url

    def stop(self) -> None:
        assert stack.down(self.settings) == ["mlflow"]
        assert not stack.mlflow_health(self.url_when_stopped)[0]

    @property
    def url_when_stopped(self) -> str:
        return f"http://127.0.0.1:{self.settings.mlflow_port}"


@pytest.fixture(scope="module")
def own_registry(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRegistry]:
    server_url = stack.database_url(stack_settings)
    settings = Settings(
        database_url=server_url,
        redis_url=stack.redis_url(stack_settings),
        data_dir=tmp_path_factory.mktemp("own-registry"),
        mlflow_tracking_uri=None,
        mlflow_port=0,
        mlflow_database=f"mlflow_models_{uuid.uuid4().hex[:12]}",
    )
    own = OwnRegistry(settings)
    try:
        own.start()
        yield own
    finally:
        stack.down(own.settings)
        with psycopg.connect(psycopg.conninfo.make_conninfo(server_url, dbname="postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(settings.mlflow_database))
            )


@pytest.fixture
def tracking(own_registry: OwnRegistry, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The module's server as MLflow's tracking and registry URI for this test; mlflow's globals reset after."""
    import mlflow

    url = own_registry.url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    for name, value in REGISTRY_CLIENT_ENVIRONMENT.items():  # as the service configures MLflow's client
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    # Training (`registry.log_and_register`) sets MLflow's process-wide registry URI to the session's server, and
    # registering a model follows it over the tracking URI: unset, the registry is the tracking server again.
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", None)
    mlflow.set_tracking_uri(url)
    yield url
    mlflow.set_tracking_uri(None)


def _register(model_name: str, model: Any) -> str:
    """Log `model` and register it as a new version, as training does (skops, trusted types listed)."""
    import mlflow
    import mlflow.sklearn

    mlflow.set_experiment("serving-models")
    with mlflow.start_run():
        platform_pipeline = hasattr(model, "named_steps")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=model_name,
            serialization_format="skops" if platform_pipeline else "cloudpickle",
            skops_trusted_types=registry.trusted_types(model) if platform_pipeline else None,
            pip_requirements=registry.pip_requirements(),
            await_registration_for=60,
        )
    return str(info.registered_model_version)


def _set_alias(tracking_uri: str, model_name: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        model_name, alias, version
    )


class CountingLoader:
    """The service's real loader (`load_version`), counting the versions it is asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, tracking_uri: str, name: str, version: str) -> LoadedModel:
        self.calls.append(version)
        return load_version(tracking_uri, name, version)


@dataclass
class Served:
    models: ModelSet
    loader: CountingLoader
    model_name: str
    database_url: str

    def alerts(self) -> list[tuple[str, str]]:
        return [(a.kind, a.subject) for a in reversed(alerts.list_alerts(self.database_url, include_resolved=True))]

    def open_alerts(self) -> list[tuple[str, str]]:
        return [(a.kind, a.subject) for a in alerts.list_alerts(self.database_url)]


@pytest.fixture
def served(tracking: str, database_url: str) -> Served:
    """A model set built as `ChurnPredictor` builds it, on a model name of this test's own; alerts go to
    monitoring.alerts of a fresh database through the service's own sinks."""
    model_name = f"churn_models_{uuid.uuid4().hex[:8]}"
    loader = CountingLoader()

    def record(kind: str, subject: str, message: str) -> None:
        alerts.record_alert(database_url, kind, subject, message)

    def recovered(kind: str, subject: str) -> None:
        alerts.record_recovery(database_url, kind, subject)

    models = ModelSet(tracking, model_name, FEATURES, on_alert=record, on_recovered=recovered, loader=loader)
    return Served(models, loader, model_name, database_url)


def _predictions(model: LoadedModel) -> list[float]:
    return [float(p) for p in model.predict(ROWS)]


def test_a_stopped_registry_keeps_the_last_good_model_alerts_once_and_recovers(
    served: Served, own_registry: OwnRegistry, tracking: str
) -> None:
    # Given a champion loaded from the running server
    first, second = _register(served.model_name, small_pipeline(1)), _register(served.model_name, small_pipeline(2))
    _set_alias(tracking, served.model_name, "champion", first)
    assert served.models.refresh(["champion"]) == {"champion": first}
    before = _predictions(served.models.current()["champion"])

    # When the server is stopped and the set polls three times
    own_registry.stop()
    try:
        started = time.monotonic()
        polls = [served.models.refresh(["champion"]) for _ in range(3)]
        outage_s = time.monotonic() - started

        # Then the last good model keeps answering as before, the outage is known, and one alert was raised
        assert polls == [{"champion": first}] * 3
        assert _predictions(served.models.current()["champion"]) == before
        assert served.models.registry_error is not None and "Connection refused" in served.models.registry_error
        assert served.alerts() == [("registry_unreachable", tracking)]
        assert served.open_alerts() == [("registry_unreachable", tracking)]
    finally:
        own_registry.start()

    # When it is back, the next poll reads it again: the outage is cleared and an alias moved since is followed
    _set_alias(tracking, served.model_name, "champion", second)
    assert served.models.refresh(["champion"]) == {"champion": second}
    assert served.models.registry_error is None
    assert _predictions(served.models.current()["champion"]) != before
    assert served.alerts() == [("registry_unreachable", tracking)]  # recovering raises nothing new
    assert served.open_alerts() == []  # and resolves the outage's alert, which stays in the history
    assert served.loader.calls == [first, second]
    assert outage_s < 60, f"three polls against a stopped registry took {outage_s:.0f} s"


def test_a_version_that_fails_to_load_is_refused_once_and_never_retried_by_later_polls(
    served: Served, tracking: str
) -> None:
    # Given a champion, then a version that is not the platform's pipeline (a bare classifier) given the alias
    from sklearn.linear_model import LogisticRegression

    good = _register(served.model_name, small_pipeline(1))
    _set_alias(tracking, served.model_name, "champion", good)
    assert served.models.refresh(["champion"]) == {"champion": good}
    bare = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]))
    broken = _register(served.model_name, bare)
    _set_alias(tracking, served.model_name, "champion", broken)

    # When the set polls five times
    polls = [served.models.refresh(["champion"]) for _ in range(5)]

    # Then the good version keeps serving, the broken one was loaded once and alerted once
    assert polls == [{"champion": good}] * 5
    assert served.models.current()["champion"].version == good
    assert served.loader.calls == [good, broken]
    assert served.alerts() == [("model_refused", f"{served.model_name} version {broken} (champion)")]
    message = alerts.list_alerts(served.database_url)[0].message
    assert "not the platform's encode -> classify pipeline" in message and "keeps serving" in message


def test_a_deleted_alias_stops_being_served(served: Served, tracking: str) -> None:
    from mlflow import MlflowClient

    # Given a champion and a challenger both served
    champion, challenger = (
        _register(served.model_name, small_pipeline(1)),
        _register(served.model_name, small_pipeline(2)),
    )
    _set_alias(tracking, served.model_name, "champion", champion)
    _set_alias(tracking, served.model_name, "challenger", challenger)
    assert served.models.refresh(["champion", "challenger"]) == {"champion": champion, "challenger": challenger}

    # When the challenger alias is deleted in the registry
    MlflowClient(tracking_uri=tracking).delete_registered_model_alias(served.model_name, "challenger")

    # Then the next poll drops it, and the champion keeps serving
    assert served.models.refresh(["champion", "challenger"]) == {"champion": champion}
    assert set(served.models.current()) == {"champion"}
    assert served.alerts() == []


def test_version_numbers_and_aliases_resolve_to_the_same_loaded_model(served: Served, tracking: str) -> None:
    version = _register(served.model_name, small_pipeline(3))
    _set_alias(tracking, served.model_name, "champion", version)

    assert served.models.refresh(["champion", version]) == {"champion": version, version: version}
    assert served.models.current()["champion"] is served.models.current()[version]
    assert served.loader.calls == [version]
