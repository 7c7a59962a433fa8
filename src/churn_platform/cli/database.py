"""`churn db`: the platform database's schema and the content checksums of its tables."""

from __future__ import annotations

import typer
from rich.table import Table

from churn_platform import db
from churn_platform.cli.output import connect, console
from churn_platform.settings import get_settings

db_app = typer.Typer(help="The platform database.", no_args_is_help=True)


@db_app.command("init")
def db_init() -> None:
    """Create the database if needed and apply the schema under infra/postgres/ (idempotent)."""
    url = connect(get_settings()).database_url
    applied = db.init_schema(url)
    console.print(f"schema applied: {', '.join(applied)}")


@db_app.command("checksum")
def db_checksum() -> None:
    """Row counts and content checksums of the data tables (equal checksums, equal data)."""
    table = Table(title="table checksums")
    for column in ("table", "rows", "md5"):
        table.add_column(column)
    for c in db.checksums(connect(get_settings()).database_url):
        table.add_row(c.table, f"{c.rows:,}", c.md5)
    console.print(table)
