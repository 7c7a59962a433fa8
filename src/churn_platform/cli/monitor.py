"""`churn monitor`: is the live model still looking at the world it was trained on?"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from churn_platform.cli.output import connect, console, fail, stepped
from churn_platform.settings import Settings, get_settings

if TYPE_CHECKING:
    from churn_platform.monitoring.alerts import Changes
    from churn_platform.monitoring.quality import FeatureQuality

monitor_app = typer.Typer(
    help="Monitoring: drift and data quality of the served features, realised and estimated performance.",
    no_args_is_help=True,
)
DRIFT_STEPS = 7  # the steps `run_drift` reports
PERFORMANCE_STEPS = 6  # the steps `run_performance` reports


def _end_day(value: str | None) -> date | None:
    """The --end option as a day; one red line when it is not YYYY-MM-DD."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise fail(f"--end: {exc}") from exc


def _of(figures: object | None, name: str) -> float | None:
    """A figure of a realised or estimated set that may be absent for the day."""
    value = None if figures is None else getattr(figures, name)
    return None if value is None else float(value)


def _figure(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if 0 < abs(value) < 10**-digits else f"{value:.{digits}f}"


@monitor_app.command("drift")
def drift(
    window: Annotated[
        int | None, typer.Option(min=1, help="Days of served snapshots; default: CHURN_MONITOR_WINDOW_DAYS.")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Last snapshot day of the window (YYYY-MM-DD); default: the newest served.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="A version number or an alias; default: the champion.")] = None,
) -> None:
    """Compare the features served in the window with the version's reference: tests, PSI, quality, a report."""
    from churn_platform.monitoring import drift_runs

    last = _end_day(end)
    ends = None if last is None else datetime.combine(last, time.max, tzinfo=UTC)
    settings = get_settings()
    connections = connect(settings, mlflow=True)
    with stepped(DRIFT_STEPS) as step:
        try:
            run = drift_runs.run_drift(
                settings, connections, window_days=window, end=ends, version=version, on_step=step
            )
        except drift_runs.MonitoringError as exc:
            raise fail(str(exc)) from exc

    table = Table(title=f"drift of {run.model_name} v{run.model_version}: snapshots in {run.window}")
    for name, justify in (("feature", "left"), ("test", "left"), ("statistic", "right"), ("p-value", "right"),
                          ("PSI", "right"), ("drifted", "center")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in sorted(run.result.features, key=lambda f: -(f.psi or 0.0)):
        mark = "[bold red]yes[/]" if f.drifted else "no"
        table.add_row(f.feature, f.test, _figure(f.statistic), _figure(f.p_value), _figure(f.psi), mark)
    console.print(table)
    verdict = "[bold red]the data drift[/]" if run.result.drifted else "[green]no data drift[/]"
    console.print(
        f"{verdict}: {len(run.result.drifted_features)} of {len(run.result.features)} features"
        f" ({run.result.share:.0%}; threshold {settings.monitor_drift_share:.0%}),"
        f" {run.current_rows:,} served rows against {run.reference_rows:,} reference rows"
    )
    if run.score is not None:
        console.print(
            f"scores served by v{run.model_version}: KS {run.score.ks:.3f} (p {_figure(run.score.p_value)}),"
            f" PSI {run.score.psi:.3f} over {run.score.served:,} predictions"
        )
    _print_quality(run.quality)
    console.print(f"report: {run.report or 'none this run (CHURN_MONITOR_REPORT_EVERY_DAYS)'}")
    console.print(f"stored as monitoring run {run.run_id}; MLflow run {run.mlflow_run_id}")
    _print_alerts(settings, connections.database_url, run.alerts)


def _print_quality(qualities: list[FeatureQuality]) -> None:
    """Per feature over the window: missing (beside the reference), the worst day's stale and out-of-range shares."""
    from churn_platform.monitoring import quality

    table = Table(title="data quality of the served features (worst day of the window)")
    for name in ("feature", "missing", "in reference", "stale", "outside reference range", "new categories"):
        table.add_column(name, justify="left" if name in ("feature", "new categories") else "right")
    for q in quality.window_summary(qualities):
        new = ", ".join(q.new_categories[:5]) + (" ..." if len(q.new_categories) > 5 else "")
        table.add_row(
            q.feature, f"{q.missing_share:.1%}", f"{q.reference_missing:.1%}",
            "-" if q.worst_stale is None else f"{q.worst_stale:.1%}",
            "-" if q.worst_out_of_range is None else f"{q.worst_out_of_range:.1%}", new,
        )  # fmt: skip
    console.print(table)


def _print_alerts(settings: Settings, database_url: str, changes: Changes) -> None:
    """What the run did to the alerts, and their delivery to the webhook when one is configured."""
    from churn_platform.monitoring import webhook

    for a in changes.opened:
        console.print(f"[bold red]alert {a.id} opened[/] ({a.severity}, {a.source}/{a.kind}): {a.message}")
    for a in changes.repeated:
        console.print(f"[yellow]alert {a.id} still open[/] ({a.occurrences} times): {a.message}")
    for a in changes.resolved:
        console.print(f"[green]alert {a.id} resolved[/]: {a.kind} of {a.subject}")
    hook = webhook.from_settings(settings, database_url)
    if hook is not None:
        hook.send(changes)
        hook.wait()


@monitor_app.command("performance")
def performance(
    days: Annotated[
        int | None, typer.Option(min=1, help="Snapshot days to evaluate; default: CHURN_MONITOR_PERFORMANCE_DAYS.")
    ] = None,
    last_day: Annotated[
        str | None, typer.Option("--end", help="Last snapshot day (YYYY-MM-DD); default: the newest labelled one.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="The version reported on; default: the champion.")] = None,
) -> None:
    """Realised performance of the served predictions whose outcome is known, per version and day."""
    from churn_platform.monitoring import drift_runs, performance_runs

    last = _end_day(last_day)
    settings = get_settings()
    connections = connect(settings, mlflow=True)
    with stepped(PERFORMANCE_STEPS) as step:
        try:
            run = performance_runs.run_performance(
                settings, connections, days=days, last_day=last, version=version, on_step=step
            )
        except drift_runs.MonitoringError as exc:
            raise fail(str(exc)) from exc

    first, last = run.estimated_days
    table = Table(title=f"performance: realised on snapshots {run.first_day}..{run.last_day} ({run.horizon_days}-day"
                  f" outcomes, once known), estimated from the scores on {first}..{last}")  # fmt: skip
    for name in ("version", "day", "rows", "churn rate", "est.", "mean score", "ROC AUC", "est.", "PR AUC",
                 "log loss", "Brier", "est.", "ECE"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("version", "day") else "right")
    for key in sorted(set(run.by_day) | set(run.estimates)):
        f, e = run.by_day.get(key), run.estimates.get(key)
        rows = f.rows if f is not None else e.rows if e is not None else 0
        cells = [_of(f, "positive_rate"), _of(e, "positive_rate"), _of(f, "mean_score"), _of(f, "roc_auc"),
                 _of(e, "roc_auc"), _of(f, "pr_auc"), _of(f, "log_loss"), _of(f, "brier"), _of(e, "brier"),
                 _of(f, "calibration_error")]  # fmt: skip
        table.add_row(key[0], key[1].isoformat(), f"{rows:,}", *(_figure(c) for c in cells))
    console.print(table)
    for sentence in performance_runs.summary_sentences(run):
        console.print(sentence)
    if run.report is not None:
        console.print(f"report: {run.report}; MLflow run {run.mlflow_run_id}")
    _print_alerts(settings, connections.database_url, run.alerts)
