"""Prefect flows that create and continue the synthetic world (thin: the library does the work)."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import Returns, WorldConfig, WorldKind, world_config_from_settings
from churn_platform.settings import get_settings
from flows.common import platform_connections, run_on_the_stack


@task
def generate(url: str, config: WorldConfig, replace: bool) -> world.WorldSummary:
    return world.generate_world(url, config, replace=replace)


@task
def advance(url: str, days: int, label_rate: bool) -> world.WorldSummary:
    return world.advance_world(url, days, label_rate=label_rate)


@task
def publish(summary: world.WorldSummary, key: str) -> None:
    get_run_logger().info("; ".join(f"{what.strip()}: {value}" for what, value in world.summary_rows(summary)))
    create_markdown_artifact(key=key, markdown=world.summary_markdown(summary), description="synthetic world")


@flow(name="generate-world")
def generate_world_flow(
    users: int = WorldConfig.users,
    days: int = WorldConfig.days,
    seed: int = WorldConfig.seed,
    start_date: date = WorldConfig.start_date,
    horizon_days: int | None = None,
    drift_at: int | None = None,
    kind: WorldKind = WorldConfig.kind,
    returns: Returns = WorldConfig.returns,
    replace: bool = False,
) -> world.WorldSummary:
    """Simulate a subscription product or a shop's purchases and load it into PostgreSQL (the oracle's horizon: the
    label horizon)."""
    config = world_config_from_settings(
        get_settings(), users=users, days=days, seed=seed, start_date=start_date, horizon_days=horizon_days,
        drift_at=drift_at, kind=kind, returns=returns,
    )  # fmt: skip
    url = platform_connections().database_url
    summary = generate(url, config, replace)
    publish(summary, key="synthetic-world")
    return summary


@flow(name="advance-world")
def advance_world_flow(days: int = 7, label_rate: bool = True) -> world.WorldSummary:
    """Continue the stored world by `days` days (its summary with the positive-label rate, which reads every
    snapshot's horizon, unless not `label_rate`)."""
    url = platform_connections().database_url
    summary = advance(url, days, label_rate)
    publish(summary, key="synthetic-world")
    return summary


if __name__ == "__main__":
    run_on_the_stack(generate_world_flow)
