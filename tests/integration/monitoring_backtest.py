"""A monitoring backtest on a simulated world: a version trained before the monitored days, its scores on each of
them logged as the service logs a batch (`snapshot_at` the day's snapshot), and the stored drift statistics and
the estimated and realised performance of every window of those days.

The drift decision is the one a drift run stores (`monitoring.drift.feature_drift` over the features served in the
window against the version's logged reference); the Evidently report and MLflow run around it are left out, as
sixty of them would only cost time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
from sklearn.metrics import roc_auc_score
from tests.integration.feature_worlds import connections

from churn_platform.connections import Connections
from churn_platform.data.labels import ChurnDefinition
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import feast_repo, snapshots
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.population import snapshot_time
from churn_platform.monitoring import drift, estimation, performance, served
from churn_platform.serving.as_of_scores import score_as_of
from churn_platform.serving.prediction_log.rows import copy_lines, new_request_id
from churn_platform.serving.prediction_log.writer import COPY_SQL
from churn_platform.settings import Settings
from churn_platform.training import pipeline, registry
from churn_platform.training.trainer import TrainConfig


@dataclass(frozen=True)
class WindowFigures:
    end: date  # the window's last snapshot day
    drifted: bool
    drift_share: float
    drifted_features: list[str]
    estimated_auc: float | None
    realised_auc: float | None  # None until every outcome of the window is known


@dataclass(frozen=True)
class Backtest:
    start: date  # the world's first day
    first_monitored: date
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

    def estimate_errors(self, windows: list[WindowFigures]) -> list[float]:
        return [
            abs(w.estimated_auc - w.realised_auc)
            for w in windows
            if w.estimated_auc is not None and w.realised_auc is not None
        ]


def run_backtest(
    settings: Settings, url: str, config: WorldConfig, *, trained_through: int, monitored_days: int, window_days: int
) -> Backtest:
    """Generate `config`'s world, train on the snapshots of its first `trained_through` days, then score, log and
    monitor each of the `monitored_days` days after them."""
    world.generate_world(url, config)
    catalog = catalog_from_settings(settings)
    definition = ChurnDefinition.from_settings(settings)
    horizon = settings.label_horizon_days
    first = config.start_date + timedelta(days=trained_through)
    last = first + timedelta(days=monitored_days - 1)
    snapshots.compute_snapshots(url, catalog, definition, first - timedelta(days=1))
    snapshots.compute_labels(url, catalog, definition, horizon)
    feast_repo.apply(settings, connections(settings))
    servers = connections(settings, mlflow=True)
    train = TrainConfig(seed=3, test_days=21, validation_days=21, candidates=("logistic_regression",), refit=False)
    registered = pipeline.train(settings, servers, config=train).registered
    assert registered is not None
    snapshots.compute_snapshots(url, catalog, definition, last)
    snapshots.compute_labels(url, catalog, definition, horizon)

    store = feast_repo.open_store(settings, servers)
    day = first
    while day <= last:  # the version's scores on each monitored day, logged as the service logs a batch
        _log_scores(url, settings, servers, store, day, registered.version)
        day += timedelta(days=1)

    reference = registry.logged_reference(servers.mlflow, registered.run_id)
    assert reference is not None
    features = [f for f in catalog.features if f.name in reference.columns]
    numeric = [f.name for f in features if f.dtype != "text"]
    categorical = [f.name for f in features if f.dtype == "text"]
    thresholds = drift.Thresholds(settings.monitor_drift_alpha, settings.monitor_psi_threshold,
                                  settings.monitor_drift_share)  # fmt: skip
    windows = []
    end = first + timedelta(days=window_days - 1)
    while end <= last:
        window = served.Window.ending(snapshot_time(end), window_days)
        result = drift.feature_drift(reference, served.served_features(url, catalog, window), numeric, categorical,
                                     thresholds)  # fmt: skip
        start_day = end - timedelta(days=window_days - 1)
        scores = estimation.served_scores(url, start_day, end)
        estimated = estimation.estimate(scores["churn_probability"].to_numpy(dtype="float64"))
        windows.append(WindowFigures(end, result.drifted, result.share, result.drifted_features, estimated.roc_auc,
                                     _realised_auc(url, settings, start_day, end, len(scores))))  # fmt: skip
        end += timedelta(days=1)
    drift_starts = None if config.drift_at is None else config.start_date + timedelta(days=config.drift_at)
    return Backtest(config.start_date, first, drift_starts, windows)


def _log_scores(url: str, settings: Settings, servers: Connections, store: object, day: date, version: str) -> None:
    scored = score_as_of(settings, servers, day, version, store=store).frame
    count = len(scored)
    route = (None, "champion", "champion", version)
    lines = copy_lines(
        new_request_id(), datetime.now(UTC), 1.0, "predict_batch", list(scored["user_id"]), [route] * count,
        [float(p) for p in scored["p_churn"]], ["0" * 16] * count, [snapshot_time(day)] * count,
    )  # fmt: skip
    with psycopg.connect(url) as conn, conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
        copy.write("".join(lines))


def _realised_auc(url: str, settings: Settings, first: date, last: date, served_rows: int) -> float | None:
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    joined = performance.joined_predictions(url, catalog_from_settings(settings), settings.label_horizon_days,
                                            start, start + timedelta(days=(last - first).days + 1))  # fmt: skip
    if len(joined) < served_rows or joined["churned"].nunique() < 2:  # outcomes still to come
        return None
    return float(roc_auc_score(joined["churned"].to_numpy(), joined["churn_probability"].to_numpy(dtype=np.float64)))
