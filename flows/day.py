"""Prefect flow: one day of the platform, in order. A synthetic world advances one simulated day and its active
users ask the prediction service for their scores over HTTP (as the product's backend would); then the features are
refreshed, the champion is monitored, a running A/B experiment is analysed (and decided) and the retraining triggers
are evaluated. Each step is a child flow run of its own, with its artifacts, in the Prefect UI.

With CHURN_FLOWS_INTERVAL_MINUTES set this is the deployment that runs on the schedule: the platform's clock, one
day per run. `simulate` (what `churn simulate --days N` runs) is N of these days in a row in one process, each a
child run of its own.
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform import stack
from churn_platform.connections import Connections
from churn_platform.data.synthetic import world
from churn_platform.experiments import records
from churn_platform.model.aliases import CHAMPION
from churn_platform.serving.client import ServiceClient
from churn_platform.settings import get_settings
from churn_platform.simulation import traffic
from churn_platform.training import registry
from flows.ab_analysis import ab_analysis_flow
from flows.common import platform_connections, run_on_the_stack
from flows.features import features_flow
from flows.generate import advance_world_flow
from flows.monitor import monitor_flow
from flows.retrain import retrain_flow


@task
def synthetic_world(url: str) -> bool:
    return world.load_world(url) is not None


@task(retries=2, retry_delay_seconds=[5.0, 15.0])  # the service restarting; a request is a read, safe to repeat
def serve_the_day(url: str, day: date) -> traffic.DayTraffic:
    """The day's active users call the prediction service (`/predict_batch`), as the product's backend would."""
    settings = get_settings()
    client = ServiceClient(stack.connect(settings, service=True).service, max_batch=settings.serve_max_batch)
    served = traffic.serve_day(url, client, day)
    get_run_logger().info("%s", served.sentence())
    return served


@task
def drift_from(url: str, simulated_day: int) -> str:
    drifts = world.schedule_drift(url, simulated_day - 1)
    return f"the world drifts from {drifts} (simulated day {simulated_day}): an app launch and a price rise"


@task
def champion(connections: Connections) -> str | None:
    return registry.alias_version(connections.mlflow, get_settings().model_name, CHAMPION)


@flow(name="platform-day")
def platform_day_flow(auto_promote: bool | None = None, report_every_days: int | None = None) -> str:
    """One day: the world's day and its traffic (synthetic worlds), features, monitoring (Evidently reports every
    `report_every_days`; default CHURN_MONITOR_REPORT_EVERY_DAYS), A/B analysis (a winner promoted as
    `auto_promote` says; default CHURN_AB_AUTO_PROMOTE), retraining; what happened, a line per step."""
    connections = platform_connections(redis=True, mlflow=True)
    url = connections.database_url
    steps: list[str] = []
    simulated = synthetic_world(url)
    day = None
    if simulated:
        summary = advance_world_flow(days=1, label_rate=False)
        day = summary.last_day
        steps.append(f"world: {day}, {summary.active_users:,} users active")
    features_flow()
    if day is not None:
        steps.append(serve_the_day(url, day).sentence())
    if champion(connections) is None:
        steps.append("no champion yet: nothing to monitor or retrain (`churn train`)")
    else:
        monitor_flow(report_every_days=report_every_days)
        steps.append("monitored the champion")
        if records.running_experiment(url) is not None:
            steps.append(f"A/B: {ab_analysis_flow(auto_promote=auto_promote)}")
        steps.append(f"retraining: {retrain_flow(if_needed=True)}")
    create_markdown_artifact(markdown="\n".join(f"- {step}" for step in steps), key="churn-platform-day",
                             description="What the platform's day did")  # fmt: skip
    for step in steps:
        get_run_logger().info("%s", step)
    return "; ".join(steps)


@flow(name="simulate")
def simulate_flow(
    days: int = 7, drift_at: int | None = None, auto_promote: bool = True, report_every_days: int = 7
) -> str:
    """The closed loop on a synthetic world: `days` platform days in a row, each a child run; from simulated day
    `drift_at` (1: the first) the world drifts, when given; an A/B winner is promoted at once unless `auto_promote`
    is false; Evidently reports weekly (`report_every_days`) and whenever the drift verdict changes."""
    if days < 1:
        raise ValueError(f"days: expected 1 or more, got {days}")
    url = platform_connections().database_url
    if not synthetic_world(url):
        raise world.NoWorldError("this database holds no synthetic world: run `churn generate` first")
    if drift_at is not None:
        get_run_logger().info("%s", drift_from(url, drift_at))
    for _ in range(days):
        platform_day_flow(auto_promote=auto_promote, report_every_days=report_every_days)
    return f"{days} platform days simulated"


if __name__ == "__main__":
    run_on_the_stack(platform_day_flow)
