"""What every command shares: the consoles, the one way to fail, the servers it needs, and common options."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import date
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from churn_platform import stack
from churn_platform.connections import Connections
from churn_platform.settings import Settings

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """A red line on stderr; raise what it returns to exit with code 1."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line, whatever the width
    return typer.Exit(code=1)


@contextlib.contextmanager
def stepped(total: int) -> Iterator[Callable[[str], None]]:
    """A transient progress bar over `total` steps; each call of the step function names the step starting (the
    one before it is done)."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=total)
        done = [0]

        def step(description: str) -> None:
            progress.update(task, description=description, completed=done[0])
            done[0] += 1

        yield step
        progress.update(task, completed=total)


def connect(settings: Settings, *, redis: bool = False, mlflow: bool = False, service: bool = False) -> Connections:
    """The servers a command needs, resolved once (embedded ones started if needed, and said so: they keep running
    after the command); one red line if one fails."""
    try:
        resolved = stack.resolve(settings, redis=redis, mlflow=mlflow, service=service)
    except stack.StackError as exc:
        raise fail(str(exc)) from exc
    if resolved.started:
        err_console.print(
            f"[dim]started the embedded {', '.join(resolved.started_names)} (data in {settings.data_dir});"
            " they keep running: `churn down` stops them[/]",
            soft_wrap=True,
        )
    return resolved.connections


FirstDay = Annotated[str | None, typer.Option(help="First snapshot day (YYYY-MM-DD); default: all.")]
EndDay = Annotated[str | None, typer.Option(help="Snapshot days before this one (YYYY-MM-DD); default: all.")]


def day_range(start: str | None, end: str | None) -> tuple[date | None, date | None]:
    """--start / --end as dates; a malformed one fails naming the options."""
    try:
        return (date.fromisoformat(start) if start else None), (date.fromisoformat(end) if end else None)
    except ValueError as exc:
        raise fail(f"--start/--end: {exc}") from exc
