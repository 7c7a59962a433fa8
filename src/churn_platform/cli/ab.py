"""`churn ab`: the experiments the prediction service routes by (stored in PostgreSQL; the service picks a change
up within one poll interval)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from churn_platform.cli.output import connect, console, fail
from churn_platform.experiments.records import planned_end
from churn_platform.settings import get_settings

ab_app = typer.Typer(
    help="A/B experiments: champion against a challenger, with sticky assignment.", no_args_is_help=True
)


@ab_app.command("start")
def ab_start(
    name: Annotated[str, typer.Argument(help="A new, unique experiment name (it labels the prediction log).")],
    variant: Annotated[
        str, typer.Option(help="The variant: an alias (challenger) or a version number.")
    ] = "challenger",
    share: Annotated[float, typer.Option(help="Share of users sent to the variant, between 0 and 1.")] = 0.5,
    ends_at: Annotated[
        datetime | None,
        typer.Option(parser=planned_end, help="Planned end (ISO 8601 time, UTC if no zone); default: until stopped."),
    ] = None,
    salt: Annotated[str | None, typer.Option(help="Assignment salt; default: random (reuse to reproduce).")] = None,
) -> None:
    """Start routing SHARE of users to VARIANT and the rest to the champion (sticky per user)."""
    from churn_platform.experiments import records
    from churn_platform.training import registry

    settings = get_settings()
    connections = connect(settings, mlflow=True)
    try:
        started = records.start_experiment(
            connections.database_url, name, variant, share,
            registered=registry.model_references(connections.mlflow, settings.model_name),
            ends_at=ends_at, salt=salt, created_by="churn ab start",
        )  # fmt: skip
    except (records.ExperimentError, registry.RegistryError) as exc:
        raise fail(str(exc)) from exc
    until = f" until {started.ends_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if started.ends_at else ""
    console.print(
        f"experiment {started.name}: {started.variant_share:.0%} of users to {started.variant}, the rest to"
        f" {started.control}{until}; the service follows within {settings.serve_poll_interval_s:.0f} s"
    )


@ab_app.command("stop")
def ab_stop(name: Annotated[str | None, typer.Argument(help="Default: the running experiment.")] = None) -> None:
    """Stop the running experiment: everyone gets the champion again."""
    from churn_platform.experiments import records

    try:
        stopped = records.stop_experiment(connect(get_settings()).database_url, name)
    except records.ExperimentError as exc:
        raise fail(str(exc)) from exc
    console.print(f"experiment {stopped.name} stopped; everyone gets the champion")


@ab_app.command("status")
def ab_status() -> None:
    """Every experiment, and per arm of each: requests, users and mean predicted churn so far."""
    from churn_platform.experiments import records

    url = connect(get_settings()).database_url
    found = records.list_experiments(url)
    if not found:
        console.print("no experiments yet: `churn ab start NAME --variant challenger --share 0.5`")
        return
    table = Table(title="A/B experiments (arms from the prediction log)")
    for column in ("experiment", "variant (share)", "arm", "requests", "users", "mean P(churn)"):
        table.add_column(column, no_wrap=column == "experiment", justify="left" if column[0] in "eva" else "right")
    for experiment in found:
        summary = records.experiment_summary(url, experiment.name)
        ended = experiment.stopped_at or experiment.ends_at
        state = "running" if summary["running"] else f"stopped {ended:%Y-%m-%d %H:%M}"
        for i, (arm, counts) in enumerate(summary["arms"].items()):
            mean = counts["mean_probability"]
            table.add_row(
                f"{experiment.name}\n[dim]{state}[/]" if i == 0 else "",
                f"{experiment.variant} ({experiment.variant_share:.0%})\nvs {experiment.control}" if i == 0 else "",
                arm,
                str(counts["requests"]),
                str(counts["users"]),
                "-" if mean is None else f"{mean:.3f}",
            )
    console.print(table)
