"""A realised-performance run: every served prediction whose outcome is known, evaluated per version and day,
stored, reported (Evidently's classification preset, for the monitored version) and tracked in MLflow."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from churn_platform import db
from churn_platform.connections import Connections
from churn_platform.data.labels import ChurnDefinition
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.snapshots import labels_table_name
from churn_platform.monitoring import alerts, checks, estimation, performance, reports, served
from churn_platform.monitoring.drift_runs import EXPERIMENT, MonitoringError, Step, report_due, resolve_version
from churn_platform.settings import Settings

COMPARED_DAYS = timedelta(days=365)  # how far before the evaluated days past estimates are set beside outcomes
NEWEST_LABEL_SQL = "SELECT max(event_timestamp) FROM {labels} WHERE horizon_days = %(horizon)s"


@dataclass(frozen=True)
class PerformanceRun:
    model_name: str
    model_version: str  # the monitored version (its report, MLflow run and alerts)
    first_day: date  # the snapshot days evaluated against outcomes (default: ending at the newest labelled one)
    last_day: date
    estimated_days: tuple[date, date]  # the days estimated from the scores (default: ending at the newest served)
    horizon_days: int
    by_day: dict[tuple[str, date], performance.Figures]  # realised, every version served on a labelled day
    overall: performance.Figures | None  # the monitored version's realised figures; None before outcomes arrive
    estimates: dict[tuple[str, date], estimation.Estimate]  # every version served in the range
    recent_estimate: estimation.Estimate | None  # the monitored version over its newest window of served days
    recalibration: estimation.Recalibration | None  # the monitored version's, from the outcomes seen so far
    comparisons: list[estimation.Comparison]  # past days with both an estimate and realised figures
    alerts: alerts.Changes
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
    report_every_days: int | None = None,
    on_step: Step | None = None,
) -> PerformanceRun:
    """Estimate the figures of the `days` snapshot days (default: the setting) ending at `last_day` (default: the
    newest served) from the scores, and evaluate the `days` ending at `last_day` (default: the newest labelled)
    against their outcomes. The Evidently report is written when `last_day` falls every `report_every_days` days
    (default: the setting)."""
    step = on_step or (lambda _description: None)
    url = connections.database_url
    horizon = settings.label_horizon_days
    step("reading the model version")
    registered = resolve_version(settings, connections, version)
    subject = checks.version_subject(registered.name, registered.version)
    test_auc = registered.metrics.get(checks.TEST_AUC_METRIC)  # None for a version logged without one: no AUC alert

    step("estimating the figures from the served scores and the outcomes seen so far")
    newest = served.newest_served_snapshot(url)
    if newest is None:
        raise MonitoringError("the prediction log holds no scored prediction yet: nothing to evaluate")
    span = timedelta(days=(days or settings.monitor_performance_days) - 1)
    estimated_last = last_day or newest.astimezone(UTC).date()
    # as of the last estimated snapshot: its features, and every outcome before it, were known then
    as_of = datetime(estimated_last.year, estimated_last.month, estimated_last.day, tzinfo=UTC)
    found = estimation.estimator(url, ChurnDefinition.from_settings(settings), horizon, estimated_last - span, as_of)
    estimates = found.daily(estimated_last - span, estimated_last)
    if not estimates:
        raise MonitoringError(
            f"no prediction was scored on a snapshot from {estimated_last - span} to {estimated_last}"
        )
    mine = sorted(day for version, day in estimates if version == registered.version)
    recent_estimate = (
        found.window(registered.version, mine[-1] - timedelta(days=settings.monitor_window_days - 1), mine[-1])
        if mine
        else None
    )
    recalibration = found.recalibrations.get(registered.version)

    step("joining the served predictions with their outcomes")
    labelled = newest_label_day(url, settings)
    last = last_day or labelled or estimated_last
    first = last - span
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    joined = (
        performance.joined_predictions(url, catalog_from_settings(settings), horizon, start,
                                       start + timedelta(days=(last - first).days + 1))
        if labelled is not None and labelled >= first
        else pd.DataFrame(columns=["model_version", "churned", "churn_probability"])
    )  # fmt: skip
    by_day = performance.daily_figures(joined) if not joined.empty else {}
    realised = joined[joined["model_version"] == registered.version]
    overall = performance.figures(realised["churned"], realised["churn_probability"]) if len(realised) else None
    evaluated_at = datetime.now(UTC)

    report, mlflow_run_id = None, None
    if overall is not None:
        if report_due(last, report_every_days or settings.monitor_report_every_days):
            step("writing the Evidently report")
            report = _report(settings, registered.name, registered.version, realised, first, last, horizon,
                             evaluated_at)  # fmt: skip
        step("logging the run to MLflow")
        mlflow_run_id = _log_mlflow(
            connections.mlflow, registered.name, registered.version, first, last, overall, by_day, report
        )
    step("storing the figures and the alerts")
    performance.store(url, settings.model_name, horizon, by_day, evaluated_at)
    estimation.store(url, settings.model_name, found, estimates, evaluated_at)
    # alerts say how things are now: a run over earlier days (`last_day` given) stores its figures, never alerts
    conditions = [] if last_day is not None else _conditions(settings, subject, test_auc, overall, recent_estimate)
    with db.connect(url) as conn, conn.transaction():
        changes = alerts.apply_checks(conn, conditions, by="performance run: the condition cleared")
    comparisons = estimation.compared(url, settings.model_name, horizon, first - COMPARED_DAYS, last)
    return PerformanceRun(
        registered.name, registered.version, first, last, (estimated_last - span, estimated_last), horizon, by_day,
        overall, estimates, recent_estimate, recalibration, comparisons, changes, report, mlflow_run_id,
    )  # fmt: skip


def _conditions(
    settings: Settings, subject: str, test_auc: float | None, overall: performance.Figures | None,
    recent: estimation.Estimate | None,
) -> list[alerts.Check]:  # fmt: skip
    """The realised AUC and calibration, where outcomes are known, and the newest window's estimated AUC."""
    conditions: list[alerts.Check] = []
    if overall is not None:
        conditions += checks.auc_checks(
            settings, subject, test_auc, overall.roc_auc, overall.rows, source="performance", what="realised"
        )
        conditions += checks.calibration_checks(settings, subject, overall)
    if recent is not None:
        conditions += checks.auc_checks(
            settings, subject, test_auc, recent.roc_auc, recent.rows, source="estimate",
            what=f"estimated (from the scores of the newest {settings.monitor_window_days} served days and the outcomes"
            " seen so far)",
        )  # fmt: skip
    return conditions


def _report(
    settings: Settings, name: str, version: str, realised: pd.DataFrame, first: date, last: date, horizon: int,
    at: datetime,
) -> Path:  # fmt: skip
    snapshot = reports.classification_report(
        realised,
        name=f"performance {name} v{version} {first}..{last}",
        timestamp=datetime(last.year, last.month, last.day, tzinfo=UTC),
        metadata={"model_name": name, "model_version": version, "horizon": str(horizon)},
    )
    stamp = f"{last:%Y%m%d}-{at:%Y%m%dT%H%M%S%f}"
    html = settings.reports_folder / "performance" / name / f"performance-v{version}-{stamp}.html"
    return reports.save(snapshot, html, settings.reports_folder, name).html


def summary_markdown(run: PerformanceRun) -> str:
    """The run as Markdown (for Prefect artifacts): the monitored version, then each version's days (realised
    figures beside the estimates), then how close past estimates came."""
    first, last = run.estimated_days
    lines = [
        f"# Performance: realised on snapshots {run.first_day}..{run.last_day} ({run.horizon_days}-day outcomes),"
        f" estimated on {first}..{last}",
        "",
    ]
    lines += summary_sentences(run)
    if run.report is not None:
        lines.append(f"Evidently report: `{run.report}`.")
    lines += [
        "",
        "| version | day | rows | ROC AUC | estimated | Brier | estimated | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(set(run.by_day) | set(run.estimates)):
        f_, e_ = run.by_day.get(key), run.estimates.get(key)
        rows = f_.rows if f_ is not None else e_.rows if e_ is not None else 0
        lines.append(
            f"| {key[0]} | {key[1]} | {rows:,} | {_cell(None if f_ is None else f_.roc_auc)}"
            f" | {_cell(None if e_ is None else e_.roc_auc)} | {_cell(None if f_ is None else f_.brier)}"
            f" | {_cell(None if e_ is None else e_.brier)} | {_cell(None if f_ is None else f_.calibration_error)} |"
        )
    lines += ["", *alerts.changes_markdown(run.alerts)]
    return "\n".join(lines)


def summary_sentences(run: PerformanceRun) -> list[str]:
    """The monitored version's realised and estimated figures, and how close past estimates came, in sentences."""
    version = f"v{run.model_version}"
    sentences = []
    if run.overall is not None:
        f = run.overall
        sentences.append(
            f"{version} realised on {run.first_day}..{run.last_day}: ROC AUC {_cell(f.roc_auc)}, Brier {f.brier:.3f},"
            f" calibration error {f.calibration_error:.3f}, churn rate {f.positive_rate:.3f} against a mean score"
            f" {f.mean_score:.3f}, over {f.rows:,} predictions."
        )
    else:
        sentences.append(f"{version}: no prediction in {run.first_day}..{run.last_day} has a known outcome yet.")
    if run.recent_estimate is not None:
        e = run.recent_estimate
        sentences.append(
            f"{version} estimated from its newest scores and the {e.decided:,} outcomes already seen among them:"
            f" ROC AUC {_cell(e.roc_auc)}, Brier {e.brier:.3f}, churn rate {e.positive_rate:.3f}, over {e.rows:,}"
            " predictions."
        )
    r = run.recalibration
    if r is not None and (r.intercept, r.slope) != (0.0, 1.0):
        sentences.append(
            f"The outcomes seen in the last {run.horizon_days} days ({r.decided:,} decided predictions) reject"
            f" {version}'s calibration (p = {r.p_value:.2g}): its scores now mean expit({r.intercept:.2f} +"
            f" {r.slope:.2f} logit(p)), and the estimates use that."
        )
    by_week: dict[int, list[float]] = {}
    for c in run.comparisons:
        if c.auc_error is not None and c.model_version == run.model_version:
            by_week.setdefault(c.outcome_days // 7, []).append(abs(c.auc_error))
    if by_week:
        parts = [
            f"{week * 7}-{min(week * 7 + 6, run.horizon_days - 1)} days: median {float(np.median(errors)):.3f},"
            f" largest {max(errors):.3f} ({len(errors)} estimates)"
            for week, errors in sorted(by_week.items())
        ]
        sentences.append(
            f"{version}'s past estimates against its realised ROC AUC (absolute error), by the days of outcomes they"
            f" had seen: {'; '.join(parts)}."
        )
    return sentences


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _log_mlflow(
    tracking_uri: str,
    model_name: str,
    version: str,
    first: date,
    last: date,
    overall: performance.Figures,
    by_day: dict[tuple[str, date], performance.Figures],
    html: Path | None,
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
        if html is not None:
            mlflow.log_artifact(str(html), "performance")
        run_id: str = run.info.run_id
    return run_id
