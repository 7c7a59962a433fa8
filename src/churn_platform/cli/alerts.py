"""`churn alerts`: every alert of the platform (monitoring's and the service's) in one list; resolve them by id."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer
from rich.table import Table

from churn_platform.cli.output import connect, console, fail
from churn_platform.settings import get_settings

alerts_app = typer.Typer(
    help="Alerts: drift, performance, data quality and the service's own failures.", invoke_without_command=True
)
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


@alerts_app.callback()
def list_alerts(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Resolved alerts too (the history).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Most alerts shown, newest first.")] = 50,
) -> None:
    """The open alerts (with --all, the history too), newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from churn_platform.monitoring import alerts

    found = alerts.list_alerts(connect(get_settings()).database_url, include_resolved=all_, limit=limit)
    if not found:
        console.print("no alert" if all_ else "[green]no open alert[/]")
        return
    table = Table(title="alerts" if all_ else "open alerts")
    for name in ("id", "severity", "source", "kind", "subject", "message", "first seen", "last seen", "times"):
        table.add_column(name, justify="right" if name in ("id", "times") else "left", overflow="fold")
    if all_:
        table.add_column("resolved", overflow="fold")
    for a in found:
        row = [
            str(a.id), f"[{SEVERITY_STYLE.get(a.severity, '')}]{a.severity}[/]", a.source, a.kind, a.subject,
            a.message, f"{a.first_seen:%Y-%m-%d %H:%M}", f"{a.last_seen:%Y-%m-%d %H:%M}", str(a.occurrences),
        ]  # fmt: skip
        if all_:
            row.append("-" if a.resolved_at is None else f"{a.resolved_at:%Y-%m-%d %H:%M} by {a.resolved_by}")
        table.add_row(*row)
    console.print(table)


@alerts_app.command("resolve")
def resolve(
    alert_id: Annotated[int, typer.Argument(help="The alert's id (`churn alerts`).")],
    by: Annotated[str | None, typer.Option(help="Who resolves it; default: the user running the command.")] = None,
) -> None:
    """Mark an open alert resolved: it leaves the open list and stays in the history (`churn alerts --all`)."""
    from churn_platform.monitoring import alerts

    try:
        done = alerts.resolve(connect(get_settings()).database_url, alert_id, by or getpass.getuser())
    except alerts.AlertError as exc:
        raise fail(str(exc)) from exc
    console.print(f"alert {done.id} resolved ({done.source}/{done.kind}: {done.subject})")
