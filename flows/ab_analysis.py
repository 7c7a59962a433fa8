"""Prefect flow: the analysis of an A/B experiment over the outcomes known now (per arm, the tests, the verdict),
stored with its history and published as a Markdown artifact; run it daily while an experiment runs: the sequential
test stays valid however often it is read."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform.connections import Connections
from churn_platform.experiments import analysis, records
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import get_settings
from flows.common import platform_connections, retry_unless


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless(records.ExperimentError))
def analyse(connections: Connections, name: str) -> analysis.Analysis:
    settings = get_settings()
    return analysis.analyse(connections.database_url, catalog_from_settings(settings), settings.label_horizon_days,
                            name, analysis.Thresholds.from_settings(settings))  # fmt: skip


@flow(name="ab-analysis")
def ab_analysis_flow(name: str | None = None) -> str:
    """Analyse the named experiment (default: the running one); its verdict."""
    connections = platform_connections()
    if name is None:
        running = records.running_experiment(connections.database_url)
        if running is None:
            raise records.ExperimentError("no experiment is running: name one")
        name = running.name
    result = analyse(connections, name)
    create_markdown_artifact(
        markdown=analysis.summary_markdown(result), key="churn-ab-analysis", description=f"A/B experiment {name}"
    )
    get_run_logger().info("%s: %s", name, result.reason)
    return result.reason


if __name__ == "__main__":
    ab_analysis_flow()
