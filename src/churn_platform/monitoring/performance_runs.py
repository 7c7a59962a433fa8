"""A realised-performance run: every served prediction whose outcome is known, evaluated per version and day,
stored, reported (Evidently's classification preset, for the monitored version) and tracked in MLflow."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from churn_platform import db
from churn_platform.connections import Connections
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.snapshots import labels_table_name
from churn_platform.monitoring import performance, reports
from churn_platform.monitoring.drift_runs import EXPERIMENT, MonitoringError, Step, resolve_version
from churn_platform.settings import Settings

NEWEST_LABEL_SQL = "SELECT max(event_timestamp) FROM {labels} WHERE horizon_days = %(horizon)s"


@dataclass(frozen=True)
class PerformanceRun:
    model_name: str
    model_version: str  # the monitored version (its report and MLflow run)
    first_day: date
    last_day: date
    horizon_days: int
    by_day: dict[tuple[str, date], performance.Figures]  # every version served in the range
    overall: performance.Figures | None  # the monitored version over the range; None if it served no known outcome
    report: Path | None
    mlflow_run_id: str | None


def newest_label_day(url: str, settings: Settings) -> date | None:
    from psycopg import sql

    labels = labels_table_name(catalog_from_settings(settings))
    with db.connect(url) as conn:
        row = conn.execute(
            sql.SQL(NEWEST_LABEL_SQL).format(labels=labels), {"horizon": settings.label_horizon_days}
        ).fetchone()
    return None if row is None or row[0] is None else row[0].astimezone(UTC).date()


def run_performance(
    settings: Settings,
    connections: Connections,
    *,
    days: int | None = None,
    last_day: date | None = None,
    version: str | None = None,
    on_step: Step | None = None,
) -> PerformanceRun:
    """Evaluate the predictions scored on the `days` snapshot days (default: the setting) ending at `last_day`
    (default: the newest labelled day) against their outcomes."""
    step = on_step or (lambda _description: None)
    url = connections.database_url
    horizon = settings.label_horizon_days
    step("reading the model version")
    registered = resolve_version(settings, connections, version)
    step("joining the served predictions with their outcomes")
    last = last_day or newest_label_day(url, settings)
    if last is None:
        raise MonitoringError(f"no snapshot has a {horizon}-day outcome yet: nothing to evaluate")
    first = last - timedelta(days=(days or settings.monitor_performance_days) - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    joined = performance.joined_predictions(
        url, catalog_from_settings(settings), horizon, start, start + timedelta(days=(last - first).days + 1)
    )
    if joined.empty:
        raise MonitoringError(
            f"no prediction scored on a snapshot from {first} to {last} has a known {horizon}-day outcome"
        )
    step("computing the figures")
    by_day = performance.daily_figures(joined)
    mine = joined[joined["model_version"] == registered.version]
    overall = performance.figures(mine["churned"], mine["churn_probability"]) if not mine.empty else None
    evaluated_at = datetime.now(UTC)

    report, mlflow_run_id = None, None
    if overall is not None:
        step("writing the Evidently report")
        snapshot = reports.classification_report(
            mine,
            name=f"performance {registered.name} v{registered.version} {first}..{last}",
            timestamp=datetime(last.year, last.month, last.day, tzinfo=UTC),
            metadata={"model_name": registered.name, "model_version": registered.version, "horizon": str(horizon)},
        )
        stamp = f"{last:%Y%m%d}-{evaluated_at:%Y%m%dT%H%M%S%f}"
        html = (
            settings.reports_folder
            / "performance"
            / registered.name
            / f"performance-v{registered.version}-{stamp}.html"
        )
        report = reports.save(snapshot, html, settings.reports_folder, registered.name).html
        step("logging the run to MLflow")
        mlflow_run_id = _log_mlflow(
            connections.mlflow, registered.name, registered.version, first, last, overall, by_day, report
        )
    step("storing the figures")
    performance.store(url, settings.model_name, horizon, by_day, evaluated_at)
    return PerformanceRun(
        registered.name, registered.version, first, last, horizon, by_day, overall, report, mlflow_run_id
    )


def summary_markdown(run: PerformanceRun) -> str:
    """The run as Markdown (for Prefect artifacts): the monitored version over the range, then each version's days."""
    lines = [
        f"# Realised performance, {run.horizon_days}-day outcomes of snapshots {run.first_day}..{run.last_day}",
        "",
    ]
    if run.overall is not None:
        f = run.overall
        auc = "-" if f.roc_auc is None else f"{f.roc_auc:.3f}"
        lines.append(
            f"{run.model_name} v{run.model_version}: ROC AUC {auc}, Brier {f.brier:.3f}, calibration error"
            f" {f.calibration_error:.3f}, churn rate {f.positive_rate:.3f} against a mean score {f.mean_score:.3f}"
            f" over {f.rows:,} predictions. Evidently report: `{run.report}`."
        )
    lines += ["", "| version | day | rows | ROC AUC | Brier | ECE |", "|---|---|---|---|---|---|"]
    for (version, day), f in sorted(run.by_day.items()):
        auc = "-" if f.roc_auc is None else f"{f.roc_auc:.3f}"
        lines.append(f"| {version} | {day} | {f.rows:,} | {auc} | {f.brier:.3f} | {f.calibration_error:.3f} |")
    return "\n".join(lines)


def _log_mlflow(
    tracking_uri: str,
    model_name: str,
    version: str,
    first: date,
    last: date,
    overall: performance.Figures,
    by_day: dict[tuple[str, date], performance.Figures],
    html: Path,
) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    metrics = {f"realised_{k}": float(v) for k, v in vars(overall).items() if v is not None}
    with mlflow.start_run(run_name=f"performance {model_name} v{version} {first}..{last}") as run:
        mlflow.set_tags({"model_name": model_name, "model_version": version, "monitoring": "performance"})
        mlflow.log_params({"first_day": first.isoformat(), "last_day": last.isoformat()})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as folder:
            table = Path(folder) / "performance_by_day.csv"
            pd.DataFrame([{"model_version": v, "day": d, **vars(f)} for (v, d), f in by_day.items()]).to_csv(
                table, index=False
            )
            mlflow.log_artifact(str(table), "performance")
        mlflow.log_artifact(str(html), "performance")
        run_id: str = run.info.run_id
    return run_id
