"""`churn generate` and `churn world`: the synthetic world."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import date
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churn_platform import db
from churn_platform.cli.output import connect, console, fail
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import Returns, WorldConfig, WorldKind, world_config_from_settings
from churn_platform.settings import get_settings

world_app = typer.Typer(help="The synthetic world.", no_args_is_help=True)


@contextlib.contextmanager
def _days_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A progress bar over simulated days; yields the callback that advances it."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("days"))
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(description, total=total)
        yield lambda days: progress.advance(task, days)


def _world_table(summary: world.WorldSummary) -> Table:
    table = Table(title="synthetic world", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for what, value in world.summary_rows(summary):
        table.add_row(what, value)
    return table


def generate(
    users: Annotated[int, typer.Option(min=1, help="Users at the start of the world.")] = WorldConfig.users,
    days: Annotated[int, typer.Option(min=1, help="Days to simulate.")] = WorldConfig.days,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same world.")] = WorldConfig.seed,
    start: Annotated[
        str, typer.Option(help="First day of the world (YYYY-MM-DD).")
    ] = WorldConfig.start_date.isoformat(),
    horizon: Annotated[
        int | None,
        typer.Option(
            min=1, help="Days ahead the oracle's churn probability covers [default: CHURN_LABEL_HORIZON_DAYS]"
        ),
    ] = None,
    drift_at: Annotated[
        int | None, typer.Option("--drift-at", min=1, help="Day index from which the world drifts.")
    ] = None,
    kind: Annotated[
        WorldKind,
        typer.Option(help="subscription: a product with plans and cancel events; purchases: a shop without contracts."),
    ] = WorldConfig.kind,
    returns: Annotated[
        Returns, typer.Option(help="purchases worlds: how often dormant customers come back (rare or common).")
    ] = WorldConfig.returns,
    replace: Annotated[bool, typer.Option("--replace", help="Discard the world or data already loaded.")] = False,
) -> None:
    """Simulate a subscription product or a shop's purchases and load its users and events into PostgreSQL."""
    settings = get_settings()
    try:
        start_date = date.fromisoformat(start)
    except ValueError as exc:
        raise fail(f"--start: {exc}") from exc
    config = world_config_from_settings(
        settings, users=users, days=days, seed=seed, start_date=start_date, horizon_days=horizon, drift_at=drift_at,
        kind=kind, returns=returns,
    )  # fmt: skip
    url = connect(settings).database_url
    db.init_schema(url)
    try:
        world.check_can_generate(url, replace=replace)
    except world.WorldExistsError as exc:
        raise fail(str(exc)) from exc
    with _days_bar(days, "simulating") as advance:
        try:
            summary = world.generate_world(url, config, replace=replace, progress=advance)
        except world.WorldExistsError as exc:
            raise fail(str(exc)) from exc
    console.print(_world_table(summary))


@world_app.command("advance")
def world_advance(days: Annotated[int, typer.Option(min=1, help="Days to add to the world.")] = 7) -> None:
    """Continue the stored world by N days: new events, new users, realised churn."""
    url = connect(get_settings()).database_url
    with _days_bar(days, "advancing") as advance:
        try:
            summary = world.advance_world(url, days, progress=advance)
        except (world.NoWorldError, ValueError) as exc:  # no world, or one stored by an older simulator
            raise fail(str(exc)) from exc
    console.print(_world_table(summary))


@world_app.command("show")
def world_show() -> None:
    """Summarise the stored world."""
    url = connect(get_settings()).database_url
    stored = world.load_world(url)
    if stored is None:
        raise fail("this database holds no synthetic world: run `churn generate` first")
    console.print(_world_table(world.summarise(url, *stored)))
