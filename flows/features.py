"""Prefect flow: compute feature snapshots and labels in PostgreSQL, then materialize them into Redis."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task

from churn_platform.connections import Connections
from churn_platform.features import feast_repo, online, snapshots
from churn_platform.settings import get_settings
from flows.common import platform_connections

# Transient failures (a server restarting, a dropped connection) are retried; the steps are idempotent.
RETRIES = 3
RETRY_DELAYS_S = [2.0, 10.0, 30.0]


@task(retries=RETRIES, retry_delay_seconds=RETRY_DELAYS_S)
def compute(url: str, until: date) -> snapshots.SnapshotRun:
    run, labelled = snapshots.refresh(url, get_settings(), until)
    get_run_logger().info("%s: %s snapshots, %s new labels", run.table, f"{run.rows_written:,}", f"{labelled:,}")
    return run


@task(retries=RETRIES, retry_delay_seconds=RETRY_DELAYS_S)
def apply_repo(connections: Connections) -> list[str]:
    return feast_repo.apply(get_settings(), connections)


@task(retries=RETRIES, retry_delay_seconds=RETRY_DELAYS_S)
def materialize(connections: Connections) -> online.MaterializeRun:
    return online.materialize(get_settings(), connections)


@flow(name="features")
def features_flow(until: date | None = None) -> online.MaterializeRun:
    """Snapshots and labels up to `until` (default: the day after the newest event), the Feast repository applied,
    the online store refreshed."""
    connections = platform_connections(redis=True)
    until = until or snapshots.day_after_last_event(connections.database_url)
    if until is None:
        raise ValueError("no events loaded yet: generate a world (`churn generate`) or ingest events first")
    compute(connections.database_url, until)
    apply_repo(connections)
    return materialize(connections)
