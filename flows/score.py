"""Prefect flow: every user of the snapshot at a day, scored by the champion or a named version, to a file."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform.connections import Connections
from churn_platform.serving import as_of_scores
from churn_platform.settings import get_settings
from flows.common import platform_connections


@task
def score_snapshot(connections: Connections, as_of: date, version: str | None) -> as_of_scores.ScoredUsers:
    return as_of_scores.score_as_of(get_settings(), connections, as_of, version)


@task
def write_scores(scored: as_of_scores.ScoredUsers, out: Path) -> Path:
    return as_of_scores.write_scores(scored, out)


@flow(name="score")
def score_flow(as_of: date, out: str, version: str | None = None) -> str:
    """Scores as of `as_of` (midnight UTC) by `version` (default: the champion) -> `out` (.parquet or .csv), and
    the summary as a Markdown artifact; the file's path."""
    as_of_scores.output_format(Path(out))  # a wrong extension fails before any work
    connections = platform_connections(redis=True, mlflow=True)
    scored = score_snapshot(connections, as_of, version)
    written = write_scores(scored, Path(out))
    create_markdown_artifact(
        markdown=as_of_scores.summary_markdown(scored),
        key="churn-scores",
        description=f"Churn scores as of {as_of}, version {scored.model_version}",
    )
    get_run_logger().info("wrote %s scores to %s", f"{len(scored.frame):,}", written)
    return str(written)
