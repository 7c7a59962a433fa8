"""Prefect flow: drift and data quality of the features the service scored in a window against the champion's
test window, realised performance where outcomes are known and estimated performance where they are not, and the
alerts all of them raise or resolve (delivered to the webhook when one is configured), in one run."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform.connections import Connections
from churn_platform.monitoring import alerts, drift_runs, performance_runs, webhook
from churn_platform.settings import get_settings
from flows.common import platform_connections, retry_unless, run_on_the_stack


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless(drift_runs.MonitoringError))
def drift(
    connections: Connections, window_days: int | None, end: date | None, version: str | None, every: int | None
) -> drift_runs.DriftRun:
    ends = None if end is None else datetime.combine(end, time.max, tzinfo=UTC)
    return drift_runs.run_drift(get_settings(), connections, window_days=window_days, end=ends, version=version,
                                report_every_days=every)  # fmt: skip


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless(drift_runs.MonitoringError))
def performance(
    connections: Connections, end: date | None, version: str | None, every: int | None
) -> performance_runs.PerformanceRun:
    """Realised figures where outcomes are known (labels come a horizon late), estimated ones for every day."""
    return performance_runs.run_performance(get_settings(), connections, last_day=end, version=version,
                                            report_every_days=every)  # fmt: skip


@task
def deliver_alerts(connections: Connections, changes: list[alerts.Changes]) -> None:
    """Post the alerts opened and resolved to the webhook, if one is configured (and any open alert an earlier
    delivery missed); a failed delivery is logged and left for the next run."""
    hook = webhook.from_settings(get_settings(), connections.database_url)
    if hook is None:
        return
    for change in changes:
        hook.send(change)
    hook.wait()


@flow(name="monitor")
def monitor_flow(
    window_days: int | None = None, end: date | None = None, version: str | None = None,
    report_every_days: int | None = None,
) -> int:  # fmt: skip
    """One drift and data-quality run and one performance run (each stored, reported, tracked, alerting),
    summarised in one Markdown artifact; the drift run's id. Evidently reports come every `report_every_days`
    days of windows (default: CHURN_MONITOR_REPORT_EVERY_DAYS)."""
    connections = platform_connections(mlflow=True)
    run = drift(connections, window_days, end, version, report_every_days)
    deliver_alerts(connections, [run.alerts])  # now: the performance run may fail
    evaluated = performance(connections, end, version, report_every_days)
    deliver_alerts(connections, [evaluated.alerts])
    summary = (
        drift_runs.summary_markdown(run, connections.mlflow) + "\n\n" + performance_runs.summary_markdown(evaluated)
    )
    create_markdown_artifact(
        markdown=summary,
        key="churn-monitoring",
        description=f"Monitoring of {run.model_name} v{run.model_version}, snapshots in {run.window}",
    )
    opened = len(run.alerts.opened) + len(evaluated.alerts.opened)
    get_run_logger().info(
        "drift share %.2f (%s); %d alerts opened; report %s",
        run.result.share, "drift" if run.result.drifted else "no drift", opened, run.report,
    )  # fmt: skip
    return run.run_id


if __name__ == "__main__":
    run_on_the_stack(monitor_flow)
