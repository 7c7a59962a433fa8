"""`churn ab`: the experiments the prediction service routes by (stored in PostgreSQL; the service picks a change
up within one poll interval)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

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


@ab_app.command("report")
def ab_report(
    name: Annotated[str | None, typer.Argument(help="Default: the running experiment, else the newest.")] = None,
    history: Annotated[bool, typer.Option("--history", help="Also every earlier analysis of it.")] = False,
) -> None:
    """Analyse an experiment over the outcomes known now: per arm, the tests, and the verdict (stored, with its
    history); on a declared winner, the decision: promoted with CHURN_AB_AUTO_PROMOTE, else recommended."""
    import getpass

    from churn_platform.experiments import analysis, decision, records
    from churn_platform.features.catalog import catalog_from_settings
    from churn_platform.training.registry import ModelRegistry

    settings = get_settings()
    url = connect(settings).database_url
    if name is None:
        found = records.list_experiments(url)
        running = [e for e in found if e.is_running()]
        if not found:
            raise fail("no experiments yet: `churn ab start NAME --variant challenger --share 0.5`")
        name = (running or found)[-1].name
    with console.status(f"analysing {name}"):
        try:
            result = analysis.analyse(url, catalog_from_settings(settings), settings.label_horizon_days, name,
                                      analysis.Thresholds.from_settings(settings))  # fmt: skip
        except records.ExperimentError as exc:
            raise fail(str(exc)) from exc
    print_report(result)
    if result.winner is not None:
        auto = settings.ab_auto_promote
        registry = ModelRegistry(connect(settings, mlflow=True).mlflow, settings.model_name)
        decided = decision.decide(url, result, registry, auto_promote=auto,
                                  decided_by=f"churn ab report, run by {getpass.getuser()}"
                                  f" (CHURN_AB_AUTO_PROMOTE={'true' if auto else 'false'})")  # fmt: skip
        if decided is not None:
            console.print(f"[bold]decision ({decided.action}):[/] {decided.reason}")
    if history:
        table = Table(title=f"earlier analyses of {name}")
        for column in ("analysed at", "users with outcomes (c / v)", "log loss (c / v)", "always-valid p", "verdict"):
            table.add_column(column)
        for row in analysis.history(url, name):
            losses = [row["log_loss_control"], row["log_loss_variant"]]
            table.add_row(
                f"{row['analysed_at']:%Y-%m-%d %H:%M}",
                f"{row['outcome_users_control']:,} / {row['outcome_users_variant']:,}",
                " / ".join("-" if v is None else f"{v:.4f}" for v in losses),
                _decisive_p(row),
                row["winner"] or "none yet",
            )
        console.print(table)
        for decided in decision.decisions(url, name):
            console.print(
                f"{decided.decided_at:%Y-%m-%d %H:%M} {decided.action} by {decided.decided_by}: {decided.reason}"
            )


def _decisive_p(row: dict[str, Any]) -> str:
    """The always-valid p-value the stored verdict rested on, and which test gave it."""
    paired = row["decisive_test"] == "paired"
    p = row["paired_sequential_p"] if paired else row["sequential_p"]
    return "-" if p is None else f"{p:.3g} ({'paired' if paired else 'split'})"


def print_report(result: Any) -> None:
    """An analysis as two tables (per arm, then the tests) and its verdict."""
    from churn_platform.experiments.analysis import ARM_COLUMNS, arm_cells, comparison_rows

    arms = Table(title=f"{result.name}: {result.variant} ({result.variant_share:.0%}) against {result.control}")
    for column in ARM_COLUMNS:
        arms.add_column(column, justify="left" if column == "arm" else "right")
    for arm, figures in result.arms.items():
        arms.add_row(*arm_cells(arm, figures))
    console.print(arms)
    tests = Table(title="variant - control")
    for column in ("test", "difference [95% interval]", "p-value", "reads"):
        tests.add_column(column)
    for row in comparison_rows(result):
        tests.add_row(*row)
    if result.probability_variant_better is not None:
        tests.add_row("P(variant's loss is lower)", "", "", f"{result.probability_variant_better:.1%}")
    console.print(tests)
    colour = "green" if result.winner else "yellow"
    console.print(f"[{colour}]verdict:[/] {result.reason}")
