"""The request path of the prediction service: read features, route, score, enqueue the log rows.

Everything slow happens off this path: models load and swap on the poller's thread, the running experiment is
re-read there too, and prediction-log rows go to a background writer. A request reads one user's (or a batch's)
features from Redis in one round trip, then composes routing (`routing`), scoring (`batch_scoring`) and its log
rows (`request_log`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from churn_platform import db
from churn_platform.connections import Connections
from churn_platform.experiments.records import Experiment, running_experiment
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.feature_batch import FeatureBatch, FeatureVector
from churn_platform.features.online import OnlineFeatures, last_materialized
from churn_platform.model.aliases import CHALLENGER, CHAMPION
from churn_platform.monitoring import alerts, webhook
from churn_platform.serving import prediction_log
from churn_platform.serving.batch_scoring import (
    Outcome,
    featureless_ids,
    has_no_features,
    outcomes,
    risk_band,
    score_batch,
)
from churn_platform.serving.models import LoadedModel, ModelSet, Poller
from churn_platform.serving.prediction_log import PredictionLogWriter
from churn_platform.serving.request_log import RequestLog
from churn_platform.serving.routing import Route, Router, ServiceUnavailableError
from churn_platform.settings import Settings

log = logging.getLogger(__name__)

KNOWN_USERS_SQL = "SELECT user_id FROM raw.users WHERE user_id = ANY(%(ids)s)"


class UnknownUserError(LookupError):
    """Neither the online store nor the platform's users know this user id."""


@dataclass(frozen=True)
class Prediction:
    """One user's answer; `churn_probability` is None exactly when the user has no features to score."""

    request_id: str
    user_id: str
    outcome: Outcome
    churn_probability: float | None
    risk_band: str
    model_version: str
    model_alias: str
    experiment: str | None
    arm: str
    features: FeatureVector
    message: str | None


@dataclass(frozen=True)
class BatchPrediction:
    """One request's predictions as columns, one entry per user in request order."""

    request_id: str
    batch: FeatureBatch
    routes: list[Route]
    outcomes: list[Outcome]
    probabilities: list[float | None]
    risk_bands: list[str]
    messages: list[str | None]

    @property
    def user_ids(self) -> Sequence[str]:
        return self.batch.user_ids

    def predictions(self) -> list[Prediction]:
        """One `Prediction` per user, with their feature vectors (values decoded for display)."""
        columns = zip(
            self.batch.vectors(), self.routes, self.outcomes, self.probabilities, self.risk_bands, self.messages,
            strict=True,
        )  # fmt: skip
        return [
            Prediction(
                self.request_id,
                vector.user_id,
                outcome,
                p,
                band,
                route.model.version,
                route.reference,
                route.experiment,
                route.arm,
                vector,
                message,
            )
            for vector, route, outcome, p, band, message in columns
        ]


class ChurnPredictor:
    """Long-lived serving state of one worker: features, models by alias, the running experiment, the log."""

    def __init__(self, settings: Settings, connections: Connections) -> None:
        self.settings = settings
        self.connections = connections
        self.database_url = connections.database_url
        self.tracking_uri = connections.mlflow
        self.catalog = catalog_from_settings(settings)
        self._features: OnlineFeatures | None = None  # opened on the first poll that finds the feature service
        self.features_error: str | None = "not opened yet"
        self._webhook = webhook.from_settings(settings, self.database_url)  # delivers the service's new alerts
        self.models = ModelSet(
            self.tracking_uri, settings.model_name, self.catalog.names, on_alert=self._alert,
            on_recovered=self._recovered,
        )  # fmt: skip
        self.log = PredictionLogWriter(self.database_url, max_buffer=settings.serve_log_buffer_rows)
        self.experiment: Experiment | None = None
        self.feature_clock: datetime | None = None  # the newest materialized snapshot: staleness is judged there
        self._users_lock = threading.Lock()
        self._users_conn: psycopg.Connection | None = None
        self._poller = Poller(self.refresh, settings.serve_poll_interval_s, "churn-model-poller")
        self.router = Router(settings.model_name, shadow_scoring=settings.serve_shadow_scoring)
        self._request_log = RequestLog(self.log.buffer)
        self._drops_alerted = 0  # prediction-log rows dropped, as far as the last alert told

    def start(self) -> None:
        """Load the models and the experiment once, then follow them on a background thread."""
        self.log.start()
        self.refresh()
        self._poller.start()

    def close(self) -> None:
        self._poller.stop()
        self.log.close(timeout_s=10)
        try:
            if self._features is not None:
                self._features.close()
        finally:
            with self._users_lock:
                if self._users_conn is not None:
                    self._users_conn.close()

    @property
    def features(self) -> OnlineFeatures:
        if self._features is None:
            raise ServiceUnavailableError(f"the online store is not available: {self.features_error}")
        return self._features

    def open_features(self) -> None:
        """Open the online store once its feature service is applied (the service may start before it is)."""
        if self._features is not None:
            return
        try:
            self._features = OnlineFeatures(
                self.settings, self.connections, max_age=timedelta(hours=self.settings.serve_feature_max_age_hours)
            )
        except Exception as exc:  # Feast raises several types for "not applied yet"
            self.features_error = f"feature service {self.catalog.name} could not be opened ({exc})"
            log.warning("%s; run `churn features apply`", self.features_error)
        else:
            self.features_error = None

    def refresh(self) -> None:
        """One poll: the running experiment, then the models it and the aliases need, then the feature clock."""
        self.open_features()
        self.alert_log_drops()
        experiment = self.experiment
        try:
            experiment = running_experiment(self.database_url)
        except psycopg.Error as exc:
            log.warning("could not read the running experiment (keeping %s): %s", experiment, exc)
        references = {CHAMPION, CHALLENGER}
        if experiment is not None:
            references |= {experiment.control, experiment.variant}
        self.models.refresh(references)
        self.experiment = experiment  # routed by only once its models are loaded
        try:
            end = last_materialized(self.database_url, self.catalog.feature_view_name)
        except psycopg.Error as exc:
            log.warning("could not read the materialization ledger: %s", exc)
        else:
            self.feature_clock = None if end is None else end - timedelta(microseconds=1)

    def ready(self) -> tuple[bool, str]:
        """Ready: a champion is loaded and the online store answers."""
        if CHAMPION not in self.models.current():
            return False, f"no {CHAMPION} version of {self.settings.model_name} is loaded"
        try:
            self.features.ping()
        except ServiceUnavailableError as exc:
            return False, str(exc)
        except Exception as exc:
            return False, f"the online store (Redis) does not answer: {exc}"
        return True, "ready"

    def predict(self, user_ids: Sequence[str], *, endpoint: str, unknown_is_error: bool = False) -> list[Prediction]:
        """Predictions for `user_ids`, in order; an unknown user is a result (`unknown_user`), or with
        `unknown_is_error` an UnknownUserError naming the first."""
        return self.predict_batch(user_ids, endpoint=endpoint, unknown_is_error=unknown_is_error).predictions()

    async def predict_async(
        self, user_ids: Sequence[str], *, endpoint: str, unknown_is_error: bool = False
    ) -> list[Prediction]:
        """`predict` on an event loop (the service's path): nothing waits on Redis or PostgreSQL in the loop."""
        batch = await self.predict_batch_async(user_ids, endpoint=endpoint, unknown_is_error=unknown_is_error)
        return batch.predictions()

    def predict_batch(
        self, user_ids: Sequence[str], *, endpoint: str, unknown_is_error: bool = False
    ) -> BatchPrediction:
        """As `predict`, as columns: the batch endpoint builds its response from them without a dict per user."""
        started = time.perf_counter()
        models, experiment = self._request_state()
        batch = self.features.read_batch(user_ids, now=self.feature_clock)
        unknown = self._unknown_users(featureless_ids(batch))
        return self._answer(batch, unknown, models, experiment, started, endpoint, unknown_is_error)

    async def predict_batch_async(
        self, user_ids: Sequence[str], *, endpoint: str, unknown_is_error: bool = False
    ) -> BatchPrediction:
        """`predict_batch` on an event loop: the loop serves other requests while Redis (or, for users without
        features, PostgreSQL) answers."""
        started = time.perf_counter()
        models, experiment = self._request_state()
        batch = await self.features.read_batch_async(user_ids, now=self.feature_clock)
        featureless = featureless_ids(batch)
        unknown = await asyncio.to_thread(self._unknown_users, featureless) if featureless else set()
        return self._answer(batch, unknown, models, experiment, started, endpoint, unknown_is_error)

    def _request_state(self) -> tuple[Mapping[str, LoadedModel], Experiment | None]:
        """This request's models and experiment, whatever moves while it runs (503 before anything is read when
        no champion is loaded)."""
        models, experiment = self.models.current(), self.experiment
        self.router.champion(models)
        if experiment is not None and not experiment.is_running(datetime.now(UTC)):
            experiment = None  # its planned end passed since the last poll
        return models, experiment

    def _answer(
        self, batch: FeatureBatch, unknown: set[str], models: Mapping[str, LoadedModel], experiment: Experiment | None,
        started: float, endpoint: str, unknown_is_error: bool,
    ) -> BatchPrediction:  # fmt: skip
        """Route, score and log a batch whose features are read and whose unknown users are known."""
        user_ids = batch.user_ids
        routes = self.router.routes(user_ids, models, experiment)
        if unknown and unknown_is_error:
            first = next(user_id for user_id in user_ids if user_id in unknown)
            raise UnknownUserError(f"unknown user {first!r}: no features and no such user in raw.users")
        featureless = batch.featureless
        probabilities, hashes, shadows = score_batch(batch, routes, featureless)
        answers, messages = outcomes(batch, featureless, probabilities, unknown)
        request_id = prediction_log.new_request_id()
        latency_ms = (time.perf_counter() - started) * 1000
        self._request_log.submit(
            request_id, latency_ms, endpoint, user_ids, routes, probabilities, hashes, batch.snapshot_times(), answers,
            unknown, shadows,
        )  # fmt: skip
        bands = self.settings.serve_risk_bands
        return BatchPrediction(
            str(request_id), batch, routes, answers, probabilities, [risk_band(p, bands) for p in probabilities],
            messages,
        )  # fmt: skip

    def explain(self, user_id: str) -> tuple[Route, FeatureVector, Any]:
        """The model that answers this user, their features, and that model's explanation of its score."""
        models, experiment = self.models.current(), self.experiment
        vector = self.features.read([user_id], now=self.feature_clock)[0]
        route = self.router.route(user_id, models, experiment)
        if has_no_features(vector):
            if self._unknown_users([user_id]):
                raise UnknownUserError(f"unknown user {user_id!r}: no features and no such user in raw.users")
            return route, vector, None
        if route.model.explainer is None:
            raise ServiceUnavailableError(f"version {route.model.version} serves predictions but cannot be explained")
        return route, vector, route.model.explainer.explain(vector.values)

    def _unknown_users(self, user_ids: list[str]) -> set[str]:
        """Of users with no features at all, those raw.users does not know (the rare path: one query)."""
        if not user_ids:
            return set()
        with self._users_lock:
            if self._users_conn is None or self._users_conn.closed:
                self._users_conn = db.connect(self.database_url, autocommit=True)
            try:
                known = {row[0] for row in self._users_conn.execute(KNOWN_USERS_SQL, {"ids": user_ids})}
            except psycopg.OperationalError:
                self._users_conn.close()
                raise
        return set(user_ids) - known

    def _alert(self, kind: str, subject: str, message: str) -> bool:
        """Record (and deliver) one of the service's alerts; False when the database could not take it."""
        try:
            alert, opened = alerts.record_alert(self.database_url, kind, subject, message)
        except psycopg.Error as exc:
            log.error("could not record the alert %s (%s: %s): %s", kind, subject, message, exc)
            return False
        if opened and self._webhook is not None:
            self._webhook.send(alerts.Changes([alert], [], []))
        return True

    def _recovered(self, kind: str, subject: str) -> None:
        try:
            alert = alerts.record_recovery(self.database_url, kind, subject)
        except psycopg.Error as exc:
            log.error("could not resolve the alert %s (%s): %s", kind, subject, exc)
            return
        if alert is not None and self._webhook is not None:
            self._webhook.send(alerts.Changes([], [], [alert]))

    def alert_log_drops(self) -> None:
        """Rows the prediction log dropped since the last poll (its buffer was full: the database fell behind)."""
        dropped = int(self.log.buffer.counts()["dropped"])
        if dropped > self._drops_alerted and self._alert(
                "prediction_log_drops", "serving.prediction_log",
                f"the prediction log dropped {dropped - self._drops_alerted:,} rows since the last check"
                f" ({dropped:,} since the service started): the database did not keep up or was away",
            ):  # fmt: skip
            self._drops_alerted = dropped  # not before: rows drop when the database is away, and so would the alert
