"""The `churn` command line: each command wires settings to one library call and prints the result with rich."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from churn_platform import db, local_stack
from churn_platform.settings import Settings, get_settings

app = typer.Typer(help="churn-platform: predict customer churn and keep the models honest.", no_args_is_help=True)
db_app = typer.Typer(help="The platform database.", no_args_is_help=True)
world_app = typer.Typer(help="The synthetic world.", no_args_is_help=True)
ingest_app = typer.Typer(help="Load your own users and events (CSV or Parquet).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(world_app, name="world")
app.add_typer(ingest_app, name="ingest")

console = Console()
err_console = Console(stderr=True)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """Configure logging once, for the command about to run."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=1)


def _status_table(statuses: list[local_stack.ComponentStatus]) -> Table:
    table = Table(title="churn-platform stack")
    for column in ("component", "mode", "url", "health", "detail"):
        table.add_column(column)
    for s in statuses:
        health = "[green]healthy[/]" if s.healthy else "[red]down[/]"
        table.add_row(s.name, "embedded" if s.embedded else "external", s.url or "-", health, s.detail)
    return table


# --- the stack -----------------------------------------------------------------------------------------------------


@app.command()
def up() -> None:
    """Start the embedded servers (or check the configured ones) and initialise the database."""
    settings = get_settings()
    with console.status("starting the stack..."):
        try:
            statuses = local_stack.up(settings)
            db.init_schema(local_stack.database_url(settings))
        except local_stack.StackError as exc:
            raise _fail(str(exc)) from exc
    console.print(_status_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(code=1)


@app.command()
def down() -> None:
    """Stop the servers this platform started (configured servers are left alone)."""
    stopped = local_stack.down(get_settings())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status() -> None:
    """Each component, its URL and its health; exits 1 if one is down."""
    statuses = local_stack.status(get_settings())
    console.print(_status_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(code=1)


# --- the database --------------------------------------------------------------------------------------------------


@db_app.command("init")
def db_init() -> None:
    """Create the database if needed and apply the schema under infra/postgres/ (idempotent)."""
    url = db.platform_url(get_settings())
    applied = db.init_schema(url)
    console.print(f"schema applied: {', '.join(applied)}")


@db_app.command("checksum")
def db_checksum() -> None:
    """Row counts and content checksums of the data tables (equal checksums, equal data)."""
    table = Table(title="table checksums")
    for column in ("table", "rows", "md5"):
        table.add_column(column)
    for c in db.checksums(db.platform_url(get_settings())):
        table.add_row(c.table, f"{c.rows:,}", c.md5)
    console.print(table)


def _settings() -> Settings:
    return get_settings()


def _unused(_: date | Path | None) -> None:  # keeps imports used until the data commands land
    return None
