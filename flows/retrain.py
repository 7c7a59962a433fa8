"""Prefect flow: evaluate the retraining triggers (drift, realised quality, new outcomes), record the evaluation
whether it fired or not, and on a fired one train a challenger and start its A/B experiment against the champion;
the evaluation is published as a Markdown artifact, so "why did it retrain?" and "why didn't it?" are answered in
the Prefect UI too."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from churn_platform.connections import Connections
from churn_platform.monitoring import retraining
from churn_platform.settings import get_settings
from flows.common import platform_connections, run_on_the_stack


@task  # no retries: a failed run after the training registered a version would register a second one
def evaluate_and_retrain(connections: Connections, if_needed: bool) -> retraining.Retraining:
    return retraining.retrain(get_settings(), connections, if_needed=if_needed)


@flow(name="retrain")
def retrain_flow(if_needed: bool = True) -> str:
    """Retrain when a trigger fires (always with `if_needed` False); what was done."""
    connections = platform_connections(redis=True, mlflow=True)
    done = evaluate_and_retrain(connections, if_needed)
    create_markdown_artifact(markdown=retraining.summary_markdown(done.evaluation), key="churn-retraining",
                             description="The retraining triggers and what came of them")  # fmt: skip
    get_run_logger().info("%s", done.action)
    return done.action


if __name__ == "__main__":
    run_on_the_stack(retrain_flow)
