"""The request path of the prediction service: assign an arm, read features, predict, enqueue the log row.

Everything slow happens off this path: models load and swap on the poller's thread, the running experiment is
re-read there too, and prediction-log rows go to a background writer. A request reads one user's (or a batch's)
features from Redis in one round trip and calls the classifier on a numpy matrix.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import mmh3
import numpy as np
import numpy.typing as npt
import psycopg

from churn_platform import db
from churn_platform.connections import Connections
from churn_platform.experiments.records import Experiment, running_experiment
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.feature_batch import MISSING, PRESENT, STALE, FeatureBatch, FeatureVector
from churn_platform.features.online import OnlineFeatures, last_materialized
from churn_platform.model.aliases import CHALLENGER, CHAMPION
from churn_platform.monitoring import alerts
from churn_platform.serving import prediction_log
from churn_platform.serving.models import LoadedModel, ModelSet, Poller
from churn_platform.serving.prediction_log import PredictionLogWriter
from churn_platform.settings import Settings

log = logging.getLogger(__name__)

Outcome = Literal["ok", "no_features", "unknown_user"]
NO_EXPERIMENT_ARM = "champion"  # the arm of every request while no experiment runs
FALLBACK_ARM = "fallback"  # assigned to the variant, but the variant's model is not loaded: the champion answered
KNOWN_USERS_SQL = "SELECT user_id FROM raw.users WHERE user_id = ANY(%(ids)s)"
NO_FEATURES_HASH = "no-features"
T = TypeVar("T")


class ServiceUnavailableError(RuntimeError):
    """No champion is loaded yet (nothing registered, or every version refused)."""


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


@dataclass(frozen=True)
class Route:
    """Which model answers a user, and why."""

    reference: str  # the alias (or version number) in the model set
    model: LoadedModel
    experiment: str | None
    arm: str


def risk_band(probability: float | None, edges: tuple[float, float]) -> str:
    if probability is None:
        return "unknown"
    return "high" if probability >= edges[1] else "medium" if probability >= edges[0] else "low"


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
        self.models = ModelSet(self.tracking_uri, settings.model_name, self.catalog.names, on_alert=self._alert)
        self.log = PredictionLogWriter(self.database_url, max_buffer=settings.serve_log_buffer_rows)
        self.experiment: Experiment | None = None
        self.feature_clock: datetime | None = None  # the newest materialized snapshot: staleness is judged there
        self._users_lock = threading.Lock()
        self._users_conn: psycopg.Connection | None = None
        self._poller = Poller(self.refresh, settings.serve_poll_interval_s, "churn-model-poller")

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

    def champion(self, models: Mapping[str, LoadedModel]) -> LoadedModel:
        champion = models.get(CHAMPION)
        if champion is None:
            raise ServiceUnavailableError(
                f"no {CHAMPION} version of model {self.settings.model_name!r} is loaded yet: train one (`churn train`)"
                " or wait for the registry"
            )
        return champion

    def route(self, user_id: str, models: Mapping[str, LoadedModel], experiment: Experiment | None) -> Route:
        if experiment is None:
            return Route(CHAMPION, self.champion(models), None, NO_EXPERIMENT_ARM)
        return self._arm_route(experiment.arm_for(user_id), models, experiment)

    def _arm_route(self, arm: str, models: Mapping[str, LoadedModel], experiment: Experiment) -> Route:
        champion = self.champion(models)
        reference = experiment.variant if arm == "variant" else experiment.control
        model = models.get(reference)
        if model is None:
            return Route(CHAMPION, champion, experiment.name, FALLBACK_ARM)
        return Route(reference, model, experiment.name, arm)

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
        unknown = self._unknown_users(_featureless_ids(batch))
        return self._score(batch, unknown, models, experiment, started, endpoint, unknown_is_error)

    async def predict_batch_async(
        self, user_ids: Sequence[str], *, endpoint: str, unknown_is_error: bool = False
    ) -> BatchPrediction:
        """`predict_batch` on an event loop: the loop serves other requests while Redis (or, for users without
        features, PostgreSQL) answers."""
        started = time.perf_counter()
        models, experiment = self._request_state()
        batch = await self.features.read_batch_async(user_ids, now=self.feature_clock)
        featureless = _featureless_ids(batch)
        unknown = await asyncio.to_thread(self._unknown_users, featureless) if featureless else set()
        return self._score(batch, unknown, models, experiment, started, endpoint, unknown_is_error)

    def _request_state(self) -> tuple[Mapping[str, LoadedModel], Experiment | None]:
        """This request's models and experiment, whatever moves while it runs (503 before anything is read when
        no champion is loaded)."""
        models, experiment = self.models.current(), self.experiment
        self.champion(models)
        if experiment is not None and not experiment.is_running(datetime.now(UTC)):
            experiment = None  # its planned end passed since the last poll
        return models, experiment

    def _score(
        self, batch: FeatureBatch, unknown: set[str], models: Mapping[str, LoadedModel], experiment: Experiment | None,
        started: float, endpoint: str, unknown_is_error: bool,
    ) -> BatchPrediction:  # fmt: skip
        """Route, score and log a batch whose features are read and whose unknown users are known."""
        user_ids = batch.user_ids
        if experiment is None:  # everyone gets the champion: one route for all
            routes = [self.route(user_ids[0], models, None)] * len(user_ids)
        else:  # one Route per arm, shared by its users
            arms = [experiment.arm_for(user_id) for user_id in user_ids]
            by_arm = {arm: self._arm_route(arm, models, experiment) for arm in set(arms)}
            routes = [by_arm[arm] for arm in arms]
        if unknown and unknown_is_error:
            first = next(user_id for user_id in user_ids if user_id in unknown)
            raise UnknownUserError(f"unknown user {first!r}: no features and no such user in raw.users")
        featureless = batch.featureless
        probabilities: list[float | None] = [None] * len(user_ids)
        hashes = [NO_FEATURES_HASH] * len(user_ids)
        for rows in _rows_by_model(routes, featureless):
            model = routes[rows[0]].model
            matrix = model.encoder.transform_batch(batch, rows)
            for i, p, hashed in zip(rows.tolist(), model.score(matrix).tolist(), row_hashes(matrix), strict=True):
                probabilities[i] = p
                hashes[i] = hashed
        outcomes, messages = _outcomes(batch, featureless, probabilities, unknown)
        request_id = prediction_log.new_request_id()
        latency_ms = (time.perf_counter() - started) * 1000
        route_fields = per_route(
            routes, lambda route: (route.experiment, route.arm, route.reference, route.model.version)
        )
        logged_ids, logged_ps = user_ids, probabilities
        if unknown:  # an unknown user gets an answer but no log row
            kept = [i for i, outcome in enumerate(outcomes) if outcome != "unknown_user"]
            logged_ids, logged_ps = [user_ids[i] for i in kept], [probabilities[i] for i in kept]
            route_fields, hashes = [route_fields[i] for i in kept], [hashes[i] for i in kept]
        self.log.buffer.submit_rows(
            request_id, datetime.now(UTC), latency_ms, endpoint, logged_ids, route_fields, logged_ps, hashes
        )
        bands = self.settings.serve_risk_bands
        return BatchPrediction(
            str(request_id), batch, routes, outcomes, probabilities, [risk_band(p, bands) for p in probabilities],
            messages,
        )  # fmt: skip

    def explain(self, user_id: str) -> tuple[Route, FeatureVector, Any]:
        """The model that answers this user, their features, and that model's explanation of its score."""
        models, experiment = self.models.current(), self.experiment
        vector = self.features.read([user_id], now=self.feature_clock)[0]
        route = self.route(user_id, models, experiment)
        if _has_no_features(vector):
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

    def _alert(self, kind: str, subject: str, message: str) -> None:
        try:
            alerts.record_alert(self.database_url, kind, subject, message)
        except psycopg.Error as exc:
            log.error("could not record the alert %s (%s: %s): %s", kind, subject, message, exc)


def per_route(routes: Sequence[Route], fields: Callable[[Route], T]) -> list[T]:
    """`fields(route)` for each row, computed once per distinct Route (rows routed alike share one object)."""
    distinct = {id(route): route for route in routes}
    computed = {key: fields(route) for key, route in distinct.items()}
    return [computed[id(route)] for route in routes]


def _featureless_ids(batch: FeatureBatch) -> list[str]:
    """The users of a batch without any stored feature (unknown, or known but not materialized yet)."""
    return [batch.user_ids[i] for i in np.flatnonzero(batch.featureless).tolist()]


def _has_no_features(vector: FeatureVector) -> bool:
    return set(vector.status.values()) <= {"missing"}


def _rows_by_model(routes: Sequence[Route], featureless: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.intp]]:
    """The rows each model scores (users with features), grouped by model version."""
    if len({id(route.model) for route in routes}) == 1:
        rows = np.flatnonzero(~featureless)
        return [rows] if len(rows) else []
    groups: dict[str, list[int]] = {}
    for i, (none, route) in enumerate(zip(featureless.tolist(), routes, strict=True)):
        if not none:
            groups.setdefault(route.model.version, []).append(i)
    return [np.asarray(rows, dtype=np.intp) for rows in groups.values()]


def row_hashes(matrix: npt.NDArray[np.float64]) -> list[str]:
    """A short hash of each encoded feature vector the model scored, so log rows can be grouped and joined by
    input: the first 8 bytes of MurmurHash3 (x64, 128 bits, seed 0) of the row's float64 bytes, as 16 hex digits.
    `NO_FEATURES_HASH` stands for a user that had none. Not a cryptographic hash: nothing relies on it being hard
    to forge."""
    raw = np.ascontiguousarray(matrix, dtype=np.float64).tobytes()
    width = matrix.shape[1] * 8
    hash_bytes = mmh3.hash_bytes
    return [hash_bytes(raw[start : start + width])[:8].hex() for start in range(0, len(raw), width)]


def _outcomes(
    batch: FeatureBatch, featureless: npt.NDArray[np.bool_], probabilities: list[float | None], unknown: set[str]
) -> tuple[list[Outcome], list[str | None]]:
    """Each user's outcome and message; only users with something to say are looked at one by one."""
    outcomes: list[Outcome] = ["ok"] * len(batch)
    messages: list[str | None] = [None] * len(batch)
    states = batch.states
    irregular = np.flatnonzero((states != PRESENT).any(axis=1) | featureless).tolist()
    if not irregular:
        return outcomes, messages
    snapshots = batch.snapshot_times()
    for i in irregular:
        user_id = batch.user_ids[i]
        if user_id in unknown:
            outcomes[i], messages[i] = "unknown_user", f"unknown user {user_id!r}"
        elif probabilities[i] is None:
            outcomes[i] = "no_features"
            messages[i] = f"user {user_id!r} has no features in the online store (not materialized yet): no score"
        elif (states[i] == STALE).any():
            messages[i] = (
                f"{int((states[i] == STALE).sum())} features are stale (snapshot {snapshots[i]:%Y-%m-%d %H:%M})"
            )
        else:
            missing = [name for name, state in zip(batch.names, states[i].tolist(), strict=True) if state == MISSING]
            messages[i] = f"features missing, scored as missing by the model: {missing}"
    return outcomes, messages
