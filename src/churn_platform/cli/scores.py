"""`churn score`: every user of the snapshot at a day, scored by the champion or a named version, to a file."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from churn_platform.cli.output import connect, console, fail, stepped
from churn_platform.settings import get_settings

STEPS = 6  # the steps `score_as_of` reports, and writing the file


def score(
    as_of: Annotated[str, typer.Option("--as-of", help="The snapshot day to score (YYYY-MM-DD, midnight UTC).")],
    out: Annotated[Path, typer.Option(help="Where to write the scores: .parquet or .csv.")],
    version: Annotated[str | None, typer.Option(help="A version number or an alias; default: the champion.")] = None,
) -> None:
    """Score every user of the snapshot at --as-of from the offline store, with their realised labels where known."""
    from churn_platform.serving import as_of_scores

    try:
        day = date.fromisoformat(as_of)
    except ValueError as exc:
        raise fail(f"--as-of: {exc}") from exc
    try:
        as_of_scores.output_format(out)
    except as_of_scores.ScoringError as exc:
        raise fail(str(exc)) from exc
    settings = get_settings()
    connections = connect(settings, redis=True, mlflow=True)
    with stepped(STEPS) as step:
        try:
            scored = as_of_scores.score_as_of(settings, connections, day, version, on_step=step)
        except as_of_scores.ScoringError as exc:
            raise fail(str(exc)) from exc
        step(f"writing {out}")
        as_of_scores.write_scores(scored, out)
    table = Table(title=f"churn scores as of {day}: {out}")
    table.add_column("")
    table.add_column("", justify="right")
    for what, value in as_of_scores.summary_rows(scored):
        table.add_row(what, value)
    console.print(table)
