"""Prefect flow: drift of the features the service scored in a window against the champion's training data, and
the realised performance of the predictions whose outcome is known, in one run."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform.connections import Connections
from churn_platform.monitoring import drift_runs, performance_runs
from churn_platform.settings import get_settings
from flows.common import platform_connections


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=lambda _task, _run, state: not _refused(state))
def drift(
    connections: Connections, window_days: int | None, end: date | None, version: str | None
) -> drift_runs.DriftRun:
    ends = None if end is None else datetime.combine(end, time.max, tzinfo=UTC)
    return drift_runs.run_drift(get_settings(), connections, window_days=window_days, end=ends, version=version)


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=lambda _task, _run, state: not _refused(state))
def realised_performance(
    connections: Connections, end: date | None, version: str | None
) -> performance_runs.PerformanceRun | None:
    """None while no served prediction has a known outcome (labels come a horizon late): not a failure."""
    try:
        return performance_runs.run_performance(get_settings(), connections, last_day=end, version=version)
    except drift_runs.MonitoringError as exc:
        get_run_logger().info("no realised performance yet: %s", exc)
        return None


def _refused(state: object) -> bool:
    """A run refused for what it was asked (no champion, nothing served) fails at once: retrying cannot help."""
    try:
        state.result()  # type: ignore[attr-defined]
    except drift_runs.MonitoringError:
        return True
    except Exception:  # any other failure (a server briefly away) is worth a retry
        return False
    return False


@flow(name="monitor")
def monitor_flow(window_days: int | None = None, end: date | None = None, version: str | None = None) -> int:
    """One drift run and one realised-performance run (each stored, reported, tracked), summarised in one Markdown
    artifact; the drift run's id."""
    connections = platform_connections(mlflow=True)
    run = drift(connections, window_days, end, version)
    realised = realised_performance(connections, end, version)
    summary = drift_runs.summary_markdown(run, connections.mlflow)
    if realised is not None:
        summary += "\n\n" + performance_runs.summary_markdown(realised)
    create_markdown_artifact(
        markdown=summary,
        key="churn-monitoring",
        description=f"Monitoring of {run.model_name} v{run.model_version}, snapshots in {run.window}",
    )
    get_run_logger().info(
        "drift share %.2f (%s); report %s", run.result.share, "drift" if run.result.drifted else "no drift", run.report
    )
    return run.run_id


if __name__ == "__main__":
    monitor_flow()
