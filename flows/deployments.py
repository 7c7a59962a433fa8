"""The platform's Prefect deployments, served by one long-running process (`churn up` starts it, `churn down` stops
it): the platform's day (`flows/day.py`: each step below in order as child flow runs, and a synthetic world's
traffic), and each step on its own: world advance (a synthetic world, one simulated day per run), features
(snapshots, labels, materialization), monitor, A/B analysis and retrain (if a trigger fires). Each can be run from
the Prefect UI or with `churn flows run NAME`. With CHURN_FLOWS_INTERVAL_MINUTES set the platform's day runs on that
schedule (the platform's clock: one day per run, its steps in order); the steps alone stay on demand.

    uv run python -m flows.deployments      # what `churn up` runs, with the stack's URLs in its environment
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import serve

from churn_platform.settings import Settings, get_settings
from churn_platform.stack.flow_server import DEPLOYMENTS, TAG
from flows.ab_analysis import ab_analysis_flow
from flows.day import platform_day_flow, simulate_flow
from flows.features import features_flow
from flows.generate import advance_world_flow
from flows.monitor import monitor_flow
from flows.retrain import retrain_flow


def deployments(settings: Settings) -> list[Any]:
    """The RunnerDeployments, on the schedule the settings give (none: on demand only)."""
    minutes = settings.flows_interval_minutes
    schedule: dict[str, Any] = {} if minutes is None else {"interval": timedelta(minutes=minutes)}
    flows: dict[str, tuple[Any, dict[str, Any]]] = {
        "day": (platform_day_flow, {}),
        "simulate": (simulate_flow, {"days": 7}),
        "advance-world": (advance_world_flow, {"days": 1}),
        "features": (features_flow, {}),
        "monitor": (monitor_flow, {}),
        "retrain": (retrain_flow, {"if_needed": True}),
        "ab-analysis": (ab_analysis_flow, {}),
    }
    return [
        flow.to_deployment(
            name=DEPLOYMENTS[key][1],
            parameters=parameters,
            description=DEPLOYMENTS[key][2],
            tags=[TAG],
            **(schedule if key == "day" else {}),
        )
        for key, (flow, parameters) in flows.items()
    ]


def main() -> None:
    # Stopping this process leaves the schedules active: the next start serves them again.
    serve(*deployments(get_settings()), pause_on_shutdown=False, print_starting_message=False)


if __name__ == "__main__":
    main()
