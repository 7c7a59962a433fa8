"""The command line's consoles and its one way to fail: a red line on stderr and exit code 1."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line, whatever the width
    return typer.Exit(code=1)
