"""A drift run: the features served in a window against the champion's reference, stored, reported, tracked.

Reference: a sample of the version's test window, logged with the version at training time
(`training.registry.REFERENCE_ARTIFACT`, with the evaluated model's out-of-sample P(churn) on each row). Current:
every (user, snapshot) the service scored in the window (`monitoring.served`). The run computes each feature's test,
p-value and PSI (`monitoring.drift`), the score drift of the version's served probabilities against its reference
scores, and the served features' quality (`monitoring.quality`); writes an Evidently HTML report (and a snapshot in
the Evidently workspace); logs a monitoring run in MLflow (metrics and the report as an artifact); and stores the
numbers in `monitoring.drift_runs`, `monitoring.feature_drift` and `monitoring.feature_quality` with the alerts the
run raises or resolves (`monitoring.checks`; only a run over the newest window alerts) in one transaction, last,
so a failed run leaves no partial rows."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from churn_platform import db
from churn_platform.connections import Connections
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.model.aliases import CHAMPION, is_version_number
from churn_platform.monitoring import alerts, checks, drift, quality, reports, served
from churn_platform.settings import Settings
from churn_platform.training import registry

log = logging.getLogger(__name__)

EXPERIMENT = "churn-monitoring"  # MLflow experiment of monitoring runs
Step = Callable[[str], None]

PREVIOUS_VERDICT_SQL = """
SELECT dataset_drift FROM monitoring.drift_runs WHERE model_name = %(model)s AND model_version = %(version)s
ORDER BY ran_at DESC, run_id DESC LIMIT 1
"""
INSERT_RUN_SQL = """
INSERT INTO monitoring.drift_runs (
    ran_at, catalog, model_name, model_version, window_start, window_end, reference_rows, current_rows, features,
    drifted, drift_share, dataset_drift, score_ks, score_p_value, score_psi, alpha, psi_threshold, share_threshold,
    report_path, mlflow_run_id
) VALUES (
    %(ran_at)s, %(catalog)s, %(model_name)s, %(model_version)s, %(window_start)s, %(window_end)s, %(reference_rows)s,
    %(current_rows)s, %(features)s, %(drifted)s, %(drift_share)s, %(dataset_drift)s, %(score_ks)s, %(score_p_value)s,
    %(score_psi)s, %(alpha)s, %(psi_threshold)s, %(share_threshold)s, %(report_path)s, %(mlflow_run_id)s
) RETURNING run_id
"""
INSERT_FEATURE_SQL = """
INSERT INTO monitoring.feature_drift
    (run_id, feature, test, statistic, p_value, psi, reference_rows, current_rows, drifted)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
INSERT_QUALITY_SQL = """
INSERT INTO monitoring.feature_quality
    (run_id, feature, day, rows, missing_share, reference_missing, stale_share, out_of_range, new_categories)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


class MonitoringError(ValueError):
    """A drift run cannot be made as asked: no champion, no reference, nothing served in the window."""


@dataclass(frozen=True)
class ScoreDrift:
    ks: float
    p_value: float
    psi: float
    served: int  # the version's served scores in the window


@dataclass(frozen=True)
class DriftRun:
    run_id: int
    ran_at: datetime
    model_name: str
    model_version: str
    window: served.Window
    reference_rows: int
    current_rows: int
    result: drift.DatasetDrift
    score: ScoreDrift | None  # None when the version served no score in the window
    quality: list[quality.FeatureQuality]
    alerts: alerts.Changes
    report: Path | None  # None: no Evidently report this run (CHURN_MONITOR_REPORT_EVERY_DAYS)
    workspace_run: str | None
    mlflow_run_id: str | None


def resolve_version(settings: Settings, connections: Connections, version: str | None) -> registry.RegisteredVersion:
    """The version a run monitors: the champion unless named (a number or an alias)."""
    name, uri = settings.model_name, connections.mlflow
    reference = version or CHAMPION
    try:
        number = reference if is_version_number(reference) else registry.alias_version(uri, name, reference)
        if number is None:
            raise MonitoringError(f"model {name} has no `{reference}` version: train and register one first")
        return registry.get_version(uri, name, number)
    except registry.RegistryError as exc:
        raise MonitoringError(str(exc)) from exc


def run_drift(
    settings: Settings,
    connections: Connections,
    *,
    window_days: int | None = None,
    end: datetime | None = None,
    version: str | None = None,
    report_every_days: int | None = None,
    on_step: Step | None = None,
) -> DriftRun:
    """Compare the features served in the `window_days` (default: the setting) of snapshots ending at `end`
    (default: the newest snapshot served) with the version's reference; store, report and track the run. The
    Evidently report is written for windows ending every `report_every_days` days (default: the setting), and
    whenever the verdict differs from the version's previous run."""
    step = on_step or (lambda _description: None)
    url = connections.database_url
    catalog = catalog_from_settings(settings)
    days = window_days or settings.monitor_window_days

    step("reading the model version and its reference")
    registered = resolve_version(settings, connections, version)
    try:
        reference = registry.logged_reference(connections.mlflow, registered.run_id)
    except registry.RegistryError as exc:
        raise MonitoringError(str(exc)) from exc
    if reference is None:
        raise MonitoringError(
            f"version {registered.version} of {registered.name} has no drift reference (it was trained before"
            " monitoring kept one): train a new version"
        )
    features = [f for f in catalog.features if f.name in reference.columns]
    if not features:
        raise MonitoringError(
            f"version {registered.version}'s reference has none of catalog {catalog.name}'s features:"
            " it was trained on another catalog"
        )
    numeric = [f.name for f in features if f.dtype != "text"]
    categorical = [f.name for f in features if f.dtype == "text"]

    step("reading the served features")
    newest = end or served.newest_served_snapshot(url)
    if newest is None:
        raise MonitoringError("the prediction log holds no scored prediction yet: nothing to monitor")
    window = served.Window.ending(newest, days)
    current = served.served_features(url, catalog, window)
    if current.empty:
        raise MonitoringError(f"no prediction was served on a snapshot in {window}")

    step(f"comparing {len(features)} features")
    thresholds = drift.Thresholds(
        settings.monitor_drift_alpha, settings.monitor_psi_threshold, settings.monitor_drift_share
    )
    result = drift.feature_drift(reference, current, numeric, categorical, thresholds)
    scores = served.served_scores(url, window, registered.version)
    score = None
    if not scores.empty and registry.REFERENCE_SCORE in reference.columns:
        ks, p_value = drift.ks_2samp(reference[registry.REFERENCE_SCORE], scores)
        score = ScoreDrift(ks, p_value, drift.numeric_psi(reference[registry.REFERENCE_SCORE], scores), len(scores))

    step("checking the served features' quality")
    max_age = timedelta(hours=settings.serve_feature_max_age_hours)
    stale = quality.stale_by_day(url, catalog.feature_view_name, window, max_age)
    qualities = quality.feature_quality(reference, current, numeric, categorical, stale)
    subject = checks.version_subject(registered.name, registered.version)
    # Alerts say how things are now: a run over an earlier window (`end` given) stores its figures, never alerts.
    conditions = (
        [
            *checks.drift_checks(subject, result, thresholds, window),
            *checks.quality_checks(settings, subject, catalog.feature_view_name, qualities),
        ]
        if end is None
        else []
    )

    ran_at = datetime.now(UTC)
    html, workspace_run = None, None
    every = report_every_days or settings.monitor_report_every_days
    if report_due(window.end.date(), every) or _previous_verdict(url, registered) != result.drifted:
        step("writing the Evidently report")
        rows = settings.monitor_report_rows  # the report is drawn on samples; the stored figures used every row
        snapshot = reports.drift_report(
            reference.sample(n=rows, random_state=0) if len(reference) > rows else reference,
            current.sample(n=rows, random_state=0) if len(current) > rows else current,
            numeric=numeric,
            categorical=categorical,
            psi_threshold=settings.monitor_psi_threshold,
            drift_share=settings.monitor_drift_share,
            name=f"drift {registered.name} v{registered.version} {window.end:%Y-%m-%d}",
            timestamp=window.end,
            metadata={"model_name": registered.name, "model_version": registered.version, "window": str(window)},
        )
        stamp = f"{window.end:%Y%m%d}-{ran_at:%Y%m%dT%H%M%S%f}"
        path = settings.reports_folder / "drift" / registered.name / f"drift-v{registered.version}-{stamp}.html"
        saved = reports.save(snapshot, path, settings.reports_folder, registered.name)
        html, workspace_run = saved.html, saved.workspace_run

    step("logging the monitoring run to MLflow")
    mlflow_run_id = _log_mlflow(connections.mlflow, registered, window, result, score, html, len(current))

    step("storing the figures and the alerts")
    run_id, changes = _store(url, catalog.name, registered, window, ran_at, thresholds, result, score, html,
                             mlflow_run_id, len(reference), len(current), qualities, conditions)  # fmt: skip
    return DriftRun(
        run_id, ran_at, registered.name, registered.version, window, len(reference), len(current), result, score,
        qualities, changes, html, workspace_run, mlflow_run_id,
    )  # fmt: skip


def report_due(last_day: date, every_days: int) -> bool:
    """Whether a run whose window ends on `last_day` writes its Evidently report: every `every_days` days."""
    return every_days <= 1 or last_day.toordinal() % every_days == 0


def _previous_verdict(url: str, registered: registry.RegisteredVersion) -> bool | None:
    """The version's newest stored drift verdict (None: no run yet)."""
    with db.connect(url) as conn:
        row = conn.execute(PREVIOUS_VERDICT_SQL, {"model": registered.name, "version": registered.version}).fetchone()
    return None if row is None else bool(row[0])


def summary_markdown(run: DriftRun, tracking_uri: str | None = None) -> str:
    """The run as Markdown (for Prefect artifacts): the verdict, the drifted features first, links."""
    verdict = "**the data drift**" if run.result.drifted else "no data drift"
    lines = [
        f"# Drift of {run.model_name} v{run.model_version}, snapshots in {run.window}",
        "",
        f"{verdict}: {len(run.result.drifted_features)} of {len(run.result.features)} features"
        f" ({run.result.share:.0%}); {run.current_rows:,} served rows against {run.reference_rows:,} reference rows.",
    ]
    if run.score is not None:
        lines.append(f"Scores: KS {run.score.ks:.3f}, PSI {run.score.psi:.3f} over {run.score.served:,} predictions.")
    lines += ["", "| feature | test | statistic | p-value | PSI | drifted |", "|---|---|---|---|---|---|"]
    for f in sorted(run.result.features, key=lambda f: (not f.drifted, -(f.psi or 0.0))):
        cells = ["-" if v is None else f"{v:.3g}" for v in (f.statistic, f.p_value, f.psi)]
        lines.append(f"| {f.feature} | {f.test} | {' | '.join(cells)} | {'yes' if f.drifted else 'no'} |")
    lines += ["", *quality_markdown(run.quality), "", *alerts.changes_markdown(run.alerts)]
    report = f"Evidently report: `{run.report}`" if run.report else "No Evidently report this run"
    lines += ["", f"{report} (stored as monitoring run {run.run_id})."]
    if tracking_uri and run.mlflow_run_id:
        lines.append(f"MLflow run: {tracking_uri.rstrip('/')}/#/experiments/runs/{run.mlflow_run_id}")
    return "\n".join(lines)


def quality_markdown(qualities: list[quality.FeatureQuality]) -> list[str]:
    """Data quality over the window, per feature: missing (reference), the worst day's shares, new categories."""
    if not qualities:
        return []
    lines = [
        "| feature | missing (reference) | stale, worst day | outside the reference's range, worst day"
        " | new categories |",
        "|---|---|---|---|---|",
    ]
    for q in quality.window_summary(qualities):
        stale = "-" if q.worst_stale is None else f"{q.worst_stale:.1%}"
        outside = "-" if q.worst_out_of_range is None else f"{q.worst_out_of_range:.1%}"
        lines.append(
            f"| {q.feature} | {q.missing_share:.1%} ({q.reference_missing:.1%}) | {stale} | {outside}"
            f" | {', '.join(q.new_categories[:5]) or '-'} |"
        )
    return lines


def _log_mlflow(
    tracking_uri: str,
    registered: registry.RegisteredVersion,
    window: served.Window,
    result: drift.DatasetDrift,
    score: ScoreDrift | None,
    html: Path | None,
    current_rows: int,
) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    metrics: dict[str, float] = {
        "drift_share": result.share,
        "drifted_features": float(len(result.drifted_features)),
        "dataset_drift": float(result.drifted),
        "current_rows": float(current_rows),
    }
    metrics.update({f"psi_{f.feature}": f.psi for f in result.features if f.psi is not None})
    if score is not None:
        metrics.update({"score_ks": score.ks, "score_psi": score.psi})
    tags = {"model_name": registered.name, "model_version": registered.version, "monitoring": "drift"}
    with mlflow.start_run(run_name=f"drift {registered.name} v{registered.version} {window.end:%Y-%m-%d}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params({"window_start": window.start.isoformat(), "window_end": window.end.isoformat()})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as folder:
            table = Path(folder) / "feature_drift.csv"
            pd.DataFrame([vars(f) for f in result.features]).to_csv(table, index=False)
            mlflow.log_artifact(str(table), "drift")
        if html is not None:
            mlflow.log_artifact(str(html), "drift")
        run_id: str = run.info.run_id
    return run_id


def _store(
    url: str, catalog: str, registered: registry.RegisteredVersion, window: served.Window, ran_at: datetime,
    thresholds: drift.Thresholds, result: drift.DatasetDrift, score: ScoreDrift | None, html: Path | None,
    mlflow_run_id: str | None, reference_rows: int, current_rows: int, qualities: list[quality.FeatureQuality],
    conditions: list[alerts.Check],
) -> tuple[int, alerts.Changes]:  # fmt: skip
    values: dict[str, Any] = {
        "ran_at": ran_at, "catalog": catalog, "model_name": registered.name, "model_version": registered.version,
        "window_start": window.start, "window_end": window.end, "reference_rows": reference_rows,
        "current_rows": current_rows, "features": len(result.features), "drifted": len(result.drifted_features),
        "drift_share": result.share, "dataset_drift": result.drifted,
        "score_ks": None if score is None else score.ks, "score_p_value": None if score is None else score.p_value,
        "score_psi": None if score is None else score.psi, "alpha": thresholds.alpha,
        "psi_threshold": thresholds.psi, "share_threshold": thresholds.share,
        "report_path": None if html is None else str(html), "mlflow_run_id": mlflow_run_id,
    }  # fmt: skip
    with db.connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute(INSERT_RUN_SQL, values)
        row = cur.fetchone()
        assert row is not None
        run_id = int(row[0])
        fields = ("feature", "test", "statistic", "p_value", "psi", "reference_rows", "current_rows", "drifted")
        cur.executemany(INSERT_FEATURE_SQL, [(run_id, *(getattr(f, k) for k in fields)) for f in result.features])
        cur.executemany(INSERT_QUALITY_SQL, [
            (run_id, q.feature, q.day, q.rows, q.missing_share, q.reference_missing, q.stale_share, q.out_of_range,
             q.new_categories) for q in qualities
        ])  # fmt: skip
        changes = alerts.apply_checks(conn, conditions, by=f"drift run {run_id}: the condition cleared")
    return run_id, changes
