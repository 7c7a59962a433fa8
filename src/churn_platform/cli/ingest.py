"""`churn ingest`: load a user's own users and events files (CSV or Parquet)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churn_platform import db
from churn_platform.cli.output import connect, console, fail
from churn_platform.data.ingest import loads
from churn_platform.settings import get_settings

ingest_app = typer.Typer(help="Load your own users and events (CSV or Parquet).", no_args_is_help=True)

DataFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A .csv or .parquet file.")]
TimezoneOption = Annotated[
    str | None, typer.Option("--timezone", help="IANA zone of timestamps without a UTC offset, e.g. Europe/Berlin.")
]


def _load_table(summary: loads.LoadSummary) -> Table:
    table = Table(title=f"{summary.kind} load {summary.load_id}: {summary.source}")
    for column in ("rows read", "loaded", "duplicates", "quarantined", "seconds", "rows/s"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{summary.rows_read:,}", f"{summary.rows_loaded:,}", f"{summary.rows_duplicate:,}",
        f"{summary.rows_quarantined:,}", f"{summary.seconds:.2f}", f"{summary.rows_per_second:,.0f}",
    )  # fmt: skip
    return table


def _ingest(load: Callable[..., loads.LoadSummary], file: Path, timezone: str | None) -> None:
    """Run one load with a progress bar; a contract error is one red line and exit code 1."""
    settings = get_settings()
    url = connect(settings).database_url
    db.init_schema(url)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        try:
            task = progress.add_task(f"loading {file.name}", total=loads.estimate_rows(file))
            summary = load(
                url, file, timezone=timezone, chunk_rows=settings.ingest_chunk_rows,
                progress=lambda rows: progress.advance(task, rows),
            )  # fmt: skip
        except ValueError as exc:  # ContractError, or an unknown time zone
            raise fail(escape(str(exc))) from exc  # messages quote Arrow types such as timestamp[us]
        progress.update(task, total=summary.rows_read, completed=summary.rows_read)
    console.print(_load_table(summary))
    if summary.kind == "events":  # both within the counts above: repeats are loaded or duplicates
        console.print(
            f"in-file repeats: {summary.rows_repeated:,} (rows identical to an earlier row of the file, each its own"
            f" event); new users from events: {summary.users_added:,}"
        )
    if summary.rows_quarantined:
        console.print(f"[yellow]quarantined rows:[/] SELECT * FROM raw.quarantine WHERE load_id = {summary.load_id}")


@ingest_app.command("events")
def ingest_events(file: DataFile, timezone: TimezoneOption = None) -> None:
    """Load an events file (user_id, event_type, event_timestamp[, value, event_id]); bad rows are quarantined."""
    _ingest(loads.ingest_events, file, timezone)


@ingest_app.command("users")
def ingest_users(file: DataFile, timezone: TimezoneOption = None) -> None:
    """Upsert a users file (user_id[, signup_at, plan, plan_price, channel, region]) on user_id."""
    _ingest(loads.ingest_users, file, timezone)
