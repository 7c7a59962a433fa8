"""Prefect flow: train on a Feast training set, track the run in MLflow, register a version with its aliases."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform.connections import Connections
from churn_platform.settings import get_settings
from churn_platform.training import pipeline, report
from flows.common import platform_connections


@task
def train_and_register(connections: Connections, start: date | None, end: date | None) -> pipeline.TrainResult:
    # No retries: a failed run is tracked as failed in MLflow, and a second attempt would register twice.
    return pipeline.train(get_settings(), connections, start=start, end=end)


@flow(name="train")
def train_flow(start: date | None = None, end: date | None = None) -> str | None:
    """Labelled snapshots in [start, end) (default: all) -> candidates -> the best, registered; its version."""
    connections = platform_connections(redis=True, mlflow=True)
    result = train_and_register(connections, start, end)
    table = report.metrics_markdown(result)
    create_markdown_artifact(markdown=table, key="training-metrics", description="Test-window metrics of the run")
    version = result.registered.version if result.registered else None
    get_run_logger().info("registered version %s (%s)", version, result.trained.candidate)
    return version
