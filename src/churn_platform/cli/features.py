"""`churn features`: snapshots and labels, the Feast repository, training sets, the online store."""

from __future__ import annotations

import shlex
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from churn_platform.cli.output import EndDay, FirstDay, connect, console, day_range, fail
from churn_platform.data.labels import ChurnDefinition
from churn_platform.features import definitions, feast_repo, feature_batch, online, snapshots, training_sets
from churn_platform.features.catalog import catalog_from_settings, catalog_markdown
from churn_platform.settings import get_settings

features_app = typer.Typer(help="Point-in-time-correct feature snapshots.", no_args_is_help=True)


@features_app.command("compute")
def features_compute(
    until: Annotated[
        str | None,
        typer.Option(help="Last snapshot day (YYYY-MM-DD), inclusive [default: the day after the last event]."),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Drop the catalog's snapshots and labels and compute them again (after a change)."
        ),
    ] = False,
) -> None:
    """Compute daily snapshots after the last stored one up to --until, then label those whose horizon passed."""
    settings = get_settings()
    url = connect(settings).database_url
    try:
        last_day = date.fromisoformat(until) if until else snapshots.day_after_last_event(url)
    except ValueError as exc:
        raise fail(f"--until: {exc}") from exc
    if last_day is None:
        raise fail("there are no events yet: run `churn generate` or `churn ingest events` first")
    catalog, definition = catalog_from_settings(settings), ChurnDefinition.from_settings(settings)
    with console.status("computing snapshots and labels in PostgreSQL..."):
        try:
            run, labelled = snapshots.refresh(url, settings, last_day, replace=replace)
        except definitions.DefinitionChangedError as exc:
            raise fail(str(exc)) from exc
    if run.first_day is None:
        console.print(f"{run.table}: already up to date until {run.last_day}")
    else:
        console.print(
            f"{run.table}: {run.rows_written:,} snapshots for {run.first_day} .. {run.last_day} in {run.seconds:.1f} s"
        )
    horizon = settings.label_horizon_days
    console.print(f"{catalog.labels_table}: {labelled:,} new labels, churned = {definition.describe(horizon)}")


@features_app.command("docs")
def features_docs(
    out: Annotated[Path, typer.Option(help="Where to write the catalog's documentation.")] = Path("docs/features.md"),
) -> None:
    """Write the feature catalog's documentation (docs/features.md)."""
    out.write_text(catalog_markdown(catalog_from_settings(get_settings())))
    console.print(f"wrote {out}")


@features_app.command("apply")
def features_apply() -> None:
    """Register the feature repo's definitions in Feast's SQL registry (the equivalent of `feast apply`)."""
    with console.status("applying the Feast repository..."):
        settings = get_settings()
        applied = feast_repo.apply(settings, connect(settings, redis=True))
    for name in applied:
        console.print(f"applied {name}")


@features_app.command("env")
def features_env() -> None:
    """Print the CHURN_FEAST_* variables, to run the `feast` CLI in feature_repo/ by hand."""
    for name, value in feast_repo.configure(connect(get_settings(), redis=True)).items():
        print(f"export {name}={shlex.quote(value)}")


@features_app.command("training-set")
def features_training_set(
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
    start: FirstDay = None,
    end: EndDay = None,
) -> None:
    """Labelled snapshots joined point-in-time with the catalog's features through Feast, to a Parquet file."""
    first, stop = day_range(start, end)
    settings = get_settings()
    connections = connect(settings, redis=True)
    with console.status("reading the training set through Feast..."):
        result = training_sets.training_set(settings, connections, start=first, end=stop)
    if result.frame.empty:
        raise fail("no labelled snapshots in that range: run `churn features compute` first")
    result.write_parquet(out)
    rate = float(result.frame["churned"].mean())
    console.print(
        f"{out}: {len(result.frame):,} rows x {result.frame.shape[1] - 3} features, {rate:.1%} churned;"
        f" feature service {result.feature_service}, definitions {result.definitions_hash[:12]}"
    )


@features_app.command("materialize")
def features_materialize(
    full: Annotated[
        bool, typer.Option("--full", help="Rewrite the latest snapshots even if recorded as done.")
    ] = False,
) -> None:
    """Load snapshots newer than the last materialization into the Redis online store (incremental)."""
    settings = get_settings()
    connections = connect(settings, redis=True)
    with console.status("materializing into Redis through Feast..."):
        run = online.materialize(settings, connections, full=full)
    if run.end is None:
        console.print("online store already up to date: nothing to materialize")
    else:
        console.print(f"materialized snapshots up to {run.end:%Y-%m-%d %H:%M} UTC in {run.seconds:.1f} s")


@features_app.command("clear-online")
def features_clear_online() -> None:
    """Delete every user's features from the online store; `materialize --full` loads them again."""
    settings = get_settings()
    online.clear_online(settings, connect(settings, redis=True))
    console.print("online store cleared: run `churn features materialize --full` to load it again")


@features_app.command("show")
def features_show(
    user_ids: Annotated[list[str] | None, typer.Argument(help="Users to show; default: a sample.")] = None,
    sample: Annotated[int, typer.Option(min=1, max=20, help="How many users of the latest snapshot.")] = 4,
) -> None:
    """Print users' online feature vectors, as the prediction service reads them from Redis."""
    settings = get_settings()
    catalog = catalog_from_settings(settings)
    connections = connect(settings, redis=True)
    users = user_ids or online.sample_of_latest_users(connections.database_url, catalog, sample)
    if not users:
        raise fail("no snapshots yet: run `churn features compute` and `churn features materialize` first")
    latest = online.latest_snapshot_time(connections.database_url, catalog)
    # A synthetic world keeps its own calendar: judge staleness at its latest snapshot, not at the wall clock.
    vectors = online.OnlineFeatures(settings, connections).read(users, now=latest)
    table = Table(title=f"online features ({catalog.name}, from Redis)")
    table.add_column("feature", no_wrap=True)
    for vector in vectors:
        when = f"{vector.snapshot_at:%Y-%m-%d}" if vector.snapshot_at else "not materialized"
        table.add_column(f"{escape(vector.user_id)}\n{when}", justify="right")
    for name in catalog.names:
        table.add_row(name, *(_feature_cell(v.values[name], v.status[name]) for v in vectors))
    console.print(table)


def _feature_cell(value: object, status: feature_batch.Status) -> str:
    if status == "missing":
        return "[dim]missing[/]"
    shown = f"{value:,.2f}" if isinstance(value, float) else escape(str(value))
    return shown if status == "present" else f"[yellow]{shown} (stale)[/]"
