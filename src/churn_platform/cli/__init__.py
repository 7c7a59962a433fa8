"""The `churn` command line: each command resolves the servers it needs once, makes one library call, and prints
the result with rich. One module per command group."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from churn_platform.cli.ab import ab_app
from churn_platform.cli.alerts import alerts_app
from churn_platform.cli.database import db_app
from churn_platform.cli.features import features_app
from churn_platform.cli.flows import flows_app
from churn_platform.cli.ingest import ingest_app
from churn_platform.cli.models import models_app, retrain, train
from churn_platform.cli.monitor import monitor_app
from churn_platform.cli.scores import score
from churn_platform.cli.servers import down, status, up
from churn_platform.cli.serving import explain, predict
from churn_platform.cli.simulate import simulate
from churn_platform.cli.world import generate, world_app

app = typer.Typer(help="churn-platform: predict customer churn and keep the models honest.", no_args_is_help=True)
for command in (up, down, status, generate, simulate, train, retrain, score, predict, explain):
    app.command()(command)
for group, name in (
    (db_app, "db"),
    (world_app, "world"),
    (ingest_app, "ingest"),
    (features_app, "features"),
    (models_app, "models"),
    (ab_app, "ab"),
    (monitor_app, "monitor"),
    (alerts_app, "alerts"),
    (flows_app, "flows"),
):
    app.add_typer(group, name=name)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """Configure logging once, for the command about to run."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
