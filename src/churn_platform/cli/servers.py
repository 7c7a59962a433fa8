"""`churn up`, `churn down`, `churn status`: the stack's servers, embedded or configured."""

from __future__ import annotations

import typer
from rich.table import Table

from churn_platform import db, stack
from churn_platform.cli.output import console, fail
from churn_platform.settings import get_settings


def _status_table(statuses: list[stack.ComponentStatus]) -> Table:
    table = Table(title="churn-platform stack")
    for column in ("component", "mode", "url", "health", "detail"):
        table.add_column(column, overflow="fold")
    for s in statuses:
        health = "[green]healthy[/]" if s.healthy else "[red]down[/]"
        table.add_row(s.name, "embedded" if s.embedded else "external", s.url or "-", health, s.detail)
    return table


def up() -> None:
    """Start the embedded servers (or check the configured ones) and initialise the database."""
    settings = get_settings()
    with console.status("starting the stack..."):
        try:
            statuses = stack.up(settings)
            db.init_schema(stack.database_url(settings))
        except stack.StackError as exc:
            raise fail(str(exc)) from exc
    console.print(_status_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(code=1)


def down() -> None:
    """Stop the servers this platform started (configured servers are left alone)."""
    stopped = stack.down(get_settings())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def status() -> None:
    """Each component, its URL and its health; exits 1 if one is down."""
    statuses = stack.status(get_settings())
    console.print(_status_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(code=1)
