"""Prefect flows that load a user's own events or users file (thin: the library does the work)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform.data.ingest import loads
from churn_platform.settings import get_settings
from flows.common import platform_connections


@task
def load_events(url: str, path: str, timezone: str | None) -> loads.LoadSummary:
    return loads.ingest_events(url, Path(path), timezone=timezone, chunk_rows=get_settings().ingest_chunk_rows)


@task
def load_users(url: str, path: str, timezone: str | None) -> loads.LoadSummary:
    return loads.ingest_users(url, Path(path), timezone=timezone, chunk_rows=get_settings().ingest_chunk_rows)


@task
def publish(summary: loads.LoadSummary) -> None:
    get_run_logger().info(
        "%s load %s of %s: %s rows read, %s loaded, %s duplicates, %s quarantined (%s in-file repeats, "
        "%s new users) in %.1f s",
        summary.kind, summary.load_id, summary.source, f"{summary.rows_read:,}", f"{summary.rows_loaded:,}",
        f"{summary.rows_duplicate:,}", f"{summary.rows_quarantined:,}", f"{summary.rows_repeated:,}",
        f"{summary.users_added:,}", summary.seconds,
    )  # fmt: skip
    create_markdown_artifact(
        key=f"{summary.kind}-load", markdown=summary.to_markdown(), description=f"{summary.kind} load"
    )


@flow(name="ingest-events")
def ingest_events_flow(path: str, timezone: str | None = None) -> loads.LoadSummary:
    """Load an events file (CSV or Parquet) into raw.events; bad rows go to raw.quarantine."""
    summary = load_events(platform_connections().database_url, path, timezone)
    publish(summary)
    return summary


@flow(name="ingest-users")
def ingest_users_flow(path: str, timezone: str | None = None) -> loads.LoadSummary:
    """Upsert a users file (CSV or Parquet) into raw.users; bad rows go to raw.quarantine."""
    summary = load_users(platform_connections().database_url, path, timezone)
    publish(summary)
    return summary
