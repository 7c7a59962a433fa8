"""The `churn` command line: each command wires settings to one library call and prints the result with rich."""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churn_platform import db, stack
from churn_platform.cli.output import console
from churn_platform.cli.output import fail as _fail
from churn_platform.cli.serving import ab_app, explain, predict
from churn_platform.data.ingest import loads
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import feast_repo, feature_batch, online, snapshots, training_sets
from churn_platform.features.catalog import catalog_from_settings, catalog_markdown
from churn_platform.settings import get_settings

app = typer.Typer(help="churn-platform: predict customer churn and keep the models honest.", no_args_is_help=True)
db_app = typer.Typer(help="The platform database.", no_args_is_help=True)
world_app = typer.Typer(help="The synthetic world.", no_args_is_help=True)
ingest_app = typer.Typer(help="Load your own users and events (CSV or Parquet).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(world_app, name="world")
app.add_typer(ingest_app, name="ingest")
features_app = typer.Typer(help="Point-in-time-correct feature snapshots.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(ab_app, name="ab")
app.command("predict")(predict)
app.command("explain")(explain)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """Configure logging once, for the command about to run."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _status_table(statuses: list[stack.ComponentStatus]) -> Table:
    table = Table(title="churn-platform stack")
    for column in ("component", "mode", "url", "health", "detail"):
        table.add_column(column, overflow="fold")
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
            statuses = stack.up(settings)
            db.init_schema(stack.database_url(settings))
        except stack.StackError as exc:
            raise _fail(str(exc)) from exc
    console.print(_status_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(code=1)


@app.command()
def down() -> None:
    """Stop the servers this platform started (configured servers are left alone)."""
    stopped = stack.down(get_settings())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status() -> None:
    """Each component, its URL and its health; exits 1 if one is down."""
    statuses = stack.status(get_settings())
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


# --- the synthetic world -------------------------------------------------------------------------------------------


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


@app.command()
def generate(
    users: Annotated[int, typer.Option(min=1, help="Users at the start of the world.")] = 1_000,
    days: Annotated[int, typer.Option(min=1, help="Days to simulate.")] = 365,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same world.")] = 7,
    start: Annotated[str, typer.Option(help="First day of the world (YYYY-MM-DD).")] = "2025-01-01",
    horizon: Annotated[
        int | None,
        typer.Option(
            min=1, help="Days ahead the oracle's churn probability covers [default: CHURN_LABEL_HORIZON_DAYS]"
        ),
    ] = None,
    drift_at: Annotated[
        int | None, typer.Option("--drift-at", min=1, help="Day index from which the world drifts.")
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Discard the world or data already loaded.")] = False,
) -> None:
    """Simulate a subscription product and load its users and events into PostgreSQL."""
    settings = get_settings()
    try:
        start_date = date.fromisoformat(start)
    except ValueError as exc:
        raise _fail(f"--start: {exc}") from exc
    config = WorldConfig(
        users=users, days=days, seed=seed, start_date=start_date,
        horizon_days=horizon or settings.label_horizon_days, drift_at=drift_at,
    )  # fmt: skip
    url = db.platform_url(settings)
    db.init_schema(url)
    try:
        world.check_can_generate(url, replace=replace)
    except world.WorldExistsError as exc:
        raise _fail(str(exc)) from exc
    with _days_bar(days, "simulating") as advance:
        try:
            summary = world.generate_world(url, config, replace=replace, progress=advance)
        except world.WorldExistsError as exc:
            raise _fail(str(exc)) from exc
    console.print(_world_table(summary))


@world_app.command("advance")
def world_advance(days: Annotated[int, typer.Option(min=1, help="Days to add to the world.")] = 7) -> None:
    """Continue the stored world by N days: new events, new users, realised churn."""
    url = db.platform_url(get_settings())
    with _days_bar(days, "advancing") as advance:
        try:
            summary = world.advance_world(url, days, progress=advance)
        except (world.NoWorldError, ValueError) as exc:  # no world, or one stored by an older simulator
            raise _fail(str(exc)) from exc
    console.print(_world_table(summary))


@world_app.command("show")
def world_show() -> None:
    """Summarise the stored world."""
    url = db.platform_url(get_settings())
    stored = world.load_world(url)
    if stored is None:
        raise _fail("this database holds no synthetic world: run `churn generate` first")
    console.print(_world_table(world.summarise(url, *stored)))


# --- your own data -------------------------------------------------------------------------------------------------

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
    url = db.platform_url(settings)
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
            raise _fail(escape(str(exc))) from exc  # messages quote Arrow types such as timestamp[us]
        progress.update(task, total=summary.rows_read, completed=summary.rows_read)
    console.print(_load_table(summary))
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


# --- features ------------------------------------------------------------------------------------------------------


@features_app.command("compute")
def features_compute(
    until: Annotated[
        str | None,
        typer.Option(help="Last snapshot day (YYYY-MM-DD), inclusive [default: the day after the last event]."),
    ] = None,
) -> None:
    """Compute daily snapshots after the last stored one up to --until, then label those whose horizon passed."""
    settings = get_settings()
    url = db.platform_url(settings)
    try:
        last_day = date.fromisoformat(until) if until else snapshots.day_after_last_event(url)
    except ValueError as exc:
        raise _fail(f"--until: {exc}") from exc
    if last_day is None:
        raise _fail("there are no events yet: run `churn generate` or `churn ingest events` first")
    with console.status("computing snapshots and labels in PostgreSQL..."):
        run, labelled = snapshots.refresh(url, settings, last_day)
    if run.first_day is None:
        console.print(f"{run.table}: already up to date until {run.last_day}")
    else:
        console.print(
            f"{run.table}: {run.rows_written:,} snapshots for {run.first_day} .. {run.last_day} in {run.seconds:.1f} s"
        )
    console.print(f"features.churn_labels: {labelled:,} new labels (horizon {settings.label_horizon_days} days)")


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
        applied = feast_repo.apply(get_settings())
    for name in applied:
        console.print(f"applied {name}")


@features_app.command("env")
def features_env() -> None:
    """Print the CHURN_FEAST_* variables, to run the `feast` CLI in feature_repo/ by hand."""
    for name, value in feast_repo.configure(get_settings()).items():
        print(f"export {name}={shlex.quote(value)}")


FirstDay = Annotated[str | None, typer.Option(help="First snapshot day (YYYY-MM-DD); default: all.")]
EndDay = Annotated[str | None, typer.Option(help="Snapshot days before this one (YYYY-MM-DD); default: all.")]


def _day_range(start: str | None, end: str | None) -> tuple[date | None, date | None]:
    """--start / --end as dates; a malformed one fails naming the options."""
    try:
        return (date.fromisoformat(start) if start else None), (date.fromisoformat(end) if end else None)
    except ValueError as exc:
        raise _fail(f"--start/--end: {exc}") from exc


@features_app.command("training-set")
def features_training_set(
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
    start: FirstDay = None,
    end: EndDay = None,
) -> None:
    """Labelled snapshots joined point-in-time with the catalog's features through Feast, to a Parquet file."""
    first, stop = _day_range(start, end)
    with console.status("reading the training set through Feast..."):
        result = training_sets.training_set(get_settings(), start=first, end=stop)
    if result.frame.empty:
        raise _fail("no labelled snapshots in that range: run `churn features compute` first")
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
    with console.status("materializing into Redis through Feast..."):
        run = online.materialize(get_settings(), full=full)
    if run.end is None:
        console.print("online store already up to date: nothing to materialize")
    else:
        console.print(f"materialized snapshots up to {run.end:%Y-%m-%d %H:%M} UTC in {run.seconds:.1f} s")


@features_app.command("clear-online")
def features_clear_online() -> None:
    """Delete every user's features from the online store; `materialize --full` loads them again."""
    online.clear_online(get_settings())
    console.print("online store cleared: run `churn features materialize --full` to load it again")


@features_app.command("show")
def features_show(
    user_ids: Annotated[list[str] | None, typer.Argument(help="Users to show; default: a sample.")] = None,
    sample: Annotated[int, typer.Option(min=1, max=20, help="How many users of the latest snapshot.")] = 4,
) -> None:
    """Print users' online feature vectors, as the prediction service reads them from Redis."""
    settings = get_settings()
    catalog = catalog_from_settings(settings)
    users = user_ids or online.sample_of_latest_users(db.platform_url(settings), catalog, sample)
    if not users:
        raise _fail("no snapshots yet: run `churn features compute` and `churn features materialize` first")
    latest = online.latest_snapshot_time(db.platform_url(settings), catalog)
    # A synthetic world keeps its own calendar: judge staleness at its latest snapshot, not at the wall clock.
    vectors = online.OnlineFeatures(settings).read(users, now=latest)
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


models_app = typer.Typer(help="Registered model versions and their roles (MLflow aliases).", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.command("train")
def train(
    start: FirstDay = None,
    end: EndDay = None,
) -> None:
    """Train the candidates on a Feast training set, track the run in MLflow, register the best as a version."""
    from mlflow.exceptions import MlflowException

    from churn_platform.training import pipeline, registry, report

    first, stop = _day_range(start, end)
    settings = get_settings()
    with console.status("training: reading the training set through Feast, fitting the candidates..."):
        try:
            result = pipeline.train(settings, start=first, end=stop)
        except (ValueError, registry.RegistryError) as exc:
            raise _fail(str(exc)) from exc
        except MlflowException as exc:
            raise _fail(f"MLflow at {stack.mlflow_tracking_uri(settings)}: {exc}") from exc
    trained, registered = result.trained, result.registered
    table = Table(title=f"{trained.candidate} on the test window {trained.split.test}")
    for column in ("metric", "model", "baseline", "oracle"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in report.metric_rows(result):
        table.add_row(*row)
    console.print(table)
    if registered is not None:
        roles = ", ".join(registered.aliases) or "no alias"
        console.print(f"registered {registered.name} version {registered.version} ({roles})")


@models_app.command("list")
def models_list() -> None:
    """Every version of the model, newest first, with its aliases and test metrics."""
    from churn_platform.training import registry

    settings = get_settings()
    versions = registry.list_versions(stack.mlflow_tracking_uri(settings), settings.model_name)
    if not versions:
        raise _fail(f"no versions of {settings.model_name} yet: run `churn train` first")
    table = Table(title=f"model {settings.model_name}")
    for column in ("version", "aliases", "candidate", "test AUC", "/ oracle", "snapshots", "created (UTC)"):
        table.add_column(column, no_wrap=column in ("version", "test AUC", "/ oracle"), overflow="fold")
    for v in versions:
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            v.tags.get("candidate", ""),
            _metric(v.metrics, "test_roc_auc"),
            _metric(v.metrics, "auc_to_oracle"),
            v.tags.get("training_range", "").replace("..", " .. "),
            f"{v.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even if the policy check refuses.")] = False,
) -> None:
    """Make VERSION the champion; the current champion becomes `previous` (for `churn models rollback`)."""
    from churn_platform.training import registry

    settings = get_settings()
    try:
        promoted = registry.promote(
            stack.mlflow_tracking_uri(settings),
            settings.model_name,
            version,
            margin=settings.promotion_auc_margin,
            force=force,
        )
    except (registry.PromotionRefusedError, registry.RegistryError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"{promoted.name} version {promoted.version} is now champion")


@models_app.command("rollback")
def models_rollback() -> None:
    """Make the previous champion the champion again."""
    from churn_platform.training import registry

    settings = get_settings()
    try:
        restored = registry.rollback(stack.mlflow_tracking_uri(settings), settings.model_name)
    except registry.RegistryError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"rolled back: {restored.name} version {restored.version} is champion again")


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "-"
