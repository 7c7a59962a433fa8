"""A monitored world: a simulated world, a version trained on its first days, and that version's scores on each of
the days after them logged as the service logs a batch (`snapshot_at` the day's snapshot); then the stored drift
statistics and the estimated and realised performance of every window of those days (the backtest).

The AUC of each window is estimated as a performance run would have estimated it at LEADS days after the window's
last snapshot (from its scores and the outcomes seen by then), and from its scores alone (plain CBPE).

The drift decision of a window is the one a drift run stores (`monitoring.drift.feature_drift` over the features
served in the window against the version's logged reference); the Evidently report and MLflow run around it are
left out, as eighty of them would only cost time (tests/integration/test_monitoring.py runs whole drift runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
from sklearn.metrics import roc_auc_score
from tests.integration.feature_worlds import connections

from churn_platform.data.labels import ChurnDefinition
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import feast_repo, population, snapshots
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.population import snapshot_time
from churn_platform.monitoring import drift, estimation, performance, served
from churn_platform.serving.as_of_scores import pipeline_scores
from churn_platform.serving.models import LoadedModel, load_version
from churn_platform.serving.prediction_log.rows import copy_lines, new_request_id
from churn_platform.serving.prediction_log.writer import COPY_SQL
from churn_platform.settings import Settings
from churn_platform.training import pipeline, registry
from churn_platform.training.censoring import deciding_events
from churn_platform.training.trainer import TrainConfig

LEADS = (0, 7, 14)  # days after a window's last snapshot its AUC is estimated at


@dataclass(frozen=True)
class MonitoredWorld:
    settings: Settings
    database_url: str
    config: WorldConfig
    version: str  # the registered version (the champion) whose scores were logged
    run_id: str  # its MLflow run, which holds the drift reference
    first_monitored: date
    last_monitored: date

    def day(self, index: int) -> date:
        return self.config.start_date + timedelta(days=index)


@dataclass(frozen=True)
class WindowFigures:
    end: date  # the window's last snapshot day
    drifted: bool
    drift_share: float
    drifted_features: list[str]
    scores_only_auc: float | None  # plain CBPE: the scores alone
    estimated_auc: dict[int, float | None]  # by lead: as of that many days after the window's last snapshot
    realised_auc: float | None  # None until every outcome of the window is known


@dataclass(frozen=True)
class Backtest:
    drift_starts: date | None
    windows: list[WindowFigures]

    def detection_delay(self) -> int | None:
        """Days from the drift's start to the first window ending on or after it that is flagged."""
        assert self.drift_starts is not None
        flagged = [w.end for w in self.windows if w.end >= self.drift_starts and w.drifted]
        return None if not flagged else (min(flagged) - self.drift_starts).days

    def before_drift(self, horizon_days: int = 0) -> list[WindowFigures]:
        """The windows whose days (and, with a horizon, whose outcomes) all come before the drift."""
        if self.drift_starts is None:
            return self.windows
        return [w for w in self.windows if w.end + timedelta(days=horizon_days) < self.drift_starts]

    def false_alarms(self) -> tuple[int, int]:
        """Flagged windows among those whose days all come before the drift."""
        clean = self.before_drift()
        return sum(w.drifted for w in clean), len(clean)

    def after_drift(self, window_days: int) -> list[WindowFigures]:
        """The windows whose days all come on or after the drift's first day."""
        assert self.drift_starts is not None
        return [w for w in self.windows if w.end - timedelta(days=window_days - 1) >= self.drift_starts]

    @staticmethod
    def estimate_errors(windows: list[WindowFigures], lead: int | None) -> list[float]:
        """|estimated - realised| AUC of the windows whose outcomes are known, estimated at `lead` (None: from the
        scores alone)."""
        found = []
        for w in windows:
            estimated = w.scores_only_auc if lead is None else w.estimated_auc[lead]
            if estimated is not None and w.realised_auc is not None:
                found.append(abs(estimated - w.realised_auc))
        return found


def monitored_world(
    settings: Settings, url: str, config: WorldConfig, *, trained_through: int, monitored_days: int
) -> MonitoredWorld:
    """Generate `config`'s world, train on the snapshots of its first `trained_through` days, then compute the
    snapshots and labels of the `monitored_days` after them and log the version's scores on each."""
    world.generate_world(url, config)
    first = config.start_date + timedelta(days=trained_through)
    last = first + timedelta(days=monitored_days - 1)
    extend_snapshots(settings, url, first - timedelta(days=1))
    feast_repo.apply(settings, connections(settings))
    train = TrainConfig(seed=3, test_days=21, validation_days=21, candidates=("logistic_regression",), refit=False)
    registered = pipeline.train(settings, connections(settings, mlflow=True), config=train).registered
    assert registered is not None
    extend_snapshots(settings, url, last)
    monitored = MonitoredWorld(settings, url, config, registered.version, registered.run_id, first, last)
    day = first
    while day <= last:
        log_scores(monitored, day)
        day += timedelta(days=1)
    return monitored


def extend_snapshots(settings: Settings, url: str, until: date) -> None:
    """Snapshots up to `until`, and every label whose horizon has passed in the data."""
    catalog = catalog_from_settings(settings)
    definition = ChurnDefinition.from_settings(settings)
    snapshots.compute_snapshots(url, catalog, definition, until)
    snapshots.compute_labels(url, catalog, definition, settings.label_horizon_days)


def log_scores(monitored: MonitoredWorld, day: date, users: int | None = None) -> pd.DataFrame:
    """The version's scores of every user of `day`'s snapshot (the first `users` of them), logged as the service
    logs a batch answered now; the scored rows (user_id, p_churn)."""
    settings = monitored.settings
    servers = connections(settings, mlflow=True)
    model = _model(servers.mlflow, settings.model_name, monitored.version)
    features = population.population_features(settings, servers, catalog_from_settings(settings), day)
    scored = pd.DataFrame({"user_id": features["user_id"], "p_churn": pipeline_scores(model, features)})
    if users is not None:
        scored = scored.head(users)
    count = len(scored)
    route = (None, "champion", "champion", monitored.version)
    lines = copy_lines(
        new_request_id(), datetime.now(UTC), 1.0, "predict_batch", list(scored["user_id"]), [route] * count,
        [float(p) for p in scored["p_churn"]], ["0" * 16] * count, [snapshot_time(day)] * count,
    )  # fmt: skip
    with psycopg.connect(monitored.database_url) as conn, conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
        copy.write("".join(lines))
    return scored


_MODELS: dict[tuple[str, str, str], LoadedModel] = {}


def _model(tracking_uri: str, name: str, version: str) -> LoadedModel:
    """One load per version: the registry's artifact does not change."""
    key = (tracking_uri, name, version)
    if key not in _MODELS:
        _MODELS[key] = load_version(tracking_uri, name, version)
    return _MODELS[key]


def backtest(monitored: MonitoredWorld, window_days: int) -> Backtest:
    """Every window of `window_days` snapshot days ending on a monitored day: its drift decision, and the AUC
    estimated from its scores beside the realised one."""
    settings, url = monitored.settings, monitored.database_url
    catalog = catalog_from_settings(settings)
    reference = registry.logged_reference(connections(settings, mlflow=True).mlflow, monitored.run_id)
    assert reference is not None
    features = [f for f in catalog.features if f.name in reference.columns]
    numeric = [f.name for f in features if f.dtype != "text"]
    categorical = [f.name for f in features if f.dtype == "text"]
    thresholds = drift.Thresholds(settings.monitor_drift_alpha, settings.monitor_psi_threshold,
                                  settings.monitor_drift_share)  # fmt: skip
    scores = estimation.served_scores(url, monitored.first_monitored, monitored.last_monitored)
    lookup = deciding_events(url, ChurnDefinition.from_settings(settings), settings.label_horizon_days)
    decided_after = lookup.decided_after(scores.rename(columns={"snapshot_at": "event_timestamp"}))
    windows = []
    end = monitored.first_monitored + timedelta(days=window_days - 1)
    while end <= monitored.last_monitored:
        window = served.Window.ending(snapshot_time(end), window_days)
        result = drift.feature_drift(reference, served.served_features(url, catalog, window), numeric, categorical,
                                     thresholds)  # fmt: skip
        start = end - timedelta(days=window_days - 1)
        in_window = ((scores["day"] >= start) & (scores["day"] <= end)).to_numpy()
        scores_only = estimation.estimate(scores["churn_probability"].to_numpy(dtype="float64")[in_window])
        estimated = {}
        for lead in LEADS:
            found = estimation.estimator_from(scores, decided_after, snapshot_time(end) + timedelta(days=lead),
                                              settings.label_horizon_days, lookup.contractual)  # fmt: skip
            figures = found.window(monitored.version, start, end)
            estimated[lead] = None if figures is None else figures.roc_auc
        realised = _realised_auc(settings, url, start, end, int(in_window.sum()))
        windows.append(WindowFigures(end, result.drifted, result.share, result.drifted_features,
                                     scores_only.roc_auc, estimated, realised))  # fmt: skip
        end += timedelta(days=1)
    config = monitored.config
    drift_starts = None if config.drift_at is None else monitored.day(config.drift_at)
    return Backtest(drift_starts, windows)


def _realised_auc(settings: Settings, url: str, first: date, last: date, served_rows: int) -> float | None:
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    joined = performance.joined_predictions(url, catalog_from_settings(settings), settings.label_horizon_days,
                                            start, start + timedelta(days=(last - first).days + 1))  # fmt: skip
    if len(joined) < served_rows or joined["churned"].nunique() < 2:  # outcomes still to come
        return None
    return float(roc_auc_score(joined["churned"].to_numpy(), joined["churn_probability"].to_numpy(dtype=np.float64)))
