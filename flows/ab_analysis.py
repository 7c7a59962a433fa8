"""Prefect flow: the analysis of an A/B experiment over the outcomes known now (per arm, the tests, the verdict),
stored with its history and published as a Markdown artifact; on a declared winner, the decision (promoted with
CHURN_AB_AUTO_PROMOTE, else recommended). Run it daily while an experiment runs: the sequential test stays valid
however often it is read."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform import stack
from churn_platform.connections import Connections
from churn_platform.experiments import analysis, decision, records
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import get_settings
from churn_platform.training.registry import ModelRegistry
from flows.common import platform_connections, retry_unless, run_on_the_stack


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless(records.ExperimentError))
def analyse(connections: Connections, name: str) -> analysis.Analysis:
    settings = get_settings()
    return analysis.analyse(connections.database_url, catalog_from_settings(settings), settings.label_horizon_days,
                            name, analysis.Thresholds.from_settings(settings))  # fmt: skip


@task(retries=2, retry_delay_seconds=10)
def decide(connections: Connections, result: analysis.Analysis, auto_promote: bool | None) -> decision.Decision | None:
    settings = get_settings()
    auto = settings.ab_auto_promote if auto_promote is None else auto_promote
    tracking_uri = stack.connect(settings, mlflow=True).mlflow  # only a winner needs the registry (the schema is in)
    return decision.decide(
        connections.database_url, result, ModelRegistry(tracking_uri, settings.model_name), auto_promote=auto,
        decided_by=f"flow ab-analysis ({'automatic promotion' if auto else 'automatic promotion off'}"
        f"{', CHURN_AB_AUTO_PROMOTE' if auto_promote is None else ', asked by the run'})",
    )  # fmt: skip


@flow(name="ab-analysis")
def ab_analysis_flow(name: str | None = None, auto_promote: bool | None = None) -> str:
    """Analyse the named experiment (default: the running one); its verdict. A declared winner is promoted or
    recommended as `auto_promote` says (default: CHURN_AB_AUTO_PROMOTE)."""
    connections = platform_connections()
    if name is None:
        running = records.running_experiment(connections.database_url)
        if running is None:
            raise records.ExperimentError("no experiment is running: name one")
        name = running.name
    result = analyse(connections, name)
    decided = decide(connections, result, auto_promote) if result.winner else None
    markdown = analysis.summary_markdown(result)
    if decided is not None:
        markdown += f"\n\n**Decision ({decided.action}, by {decided.decided_by}):** {decided.reason}"
    create_markdown_artifact(markdown=markdown, key="churn-ab-analysis", description=f"A/B experiment {name}")
    get_run_logger().info("%s: %s", name, result.reason if decided is None else decided.reason)
    return result.reason


if __name__ == "__main__":
    run_on_the_stack(ab_analysis_flow)
