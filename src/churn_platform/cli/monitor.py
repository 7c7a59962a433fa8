"""`churn monitor`: is the live model still looking at the world it was trained on?"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated

import typer
from rich.table import Table

from churn_platform.cli.output import connect, console, fail, stepped
from churn_platform.settings import get_settings

monitor_app = typer.Typer(
    help="Monitoring: drift of the served features against the training data.", no_args_is_help=True
)
DRIFT_STEPS = 6  # the steps `run_drift` reports
PERFORMANCE_STEPS = 6  # the steps `run_performance` reports


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
    """Compare the features served in the window with the model's training data: tests, PSI, an Evidently report."""
    from churn_platform.monitoring import drift_runs

    ends = None
    if end is not None:
        try:
            ends = datetime.combine(date.fromisoformat(end), time.max, tzinfo=UTC)
        except ValueError as exc:
            raise fail(f"--end: {exc}") from exc
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
    console.print(f"report: {run.report}")
    console.print(f"stored as monitoring run {run.run_id}; MLflow run {run.mlflow_run_id}")


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

    last = None
    if last_day is not None:
        try:
            last = date.fromisoformat(last_day)
        except ValueError as exc:
            raise fail(f"--end: {exc}") from exc
    settings = get_settings()
    connections = connect(settings, mlflow=True)
    with stepped(PERFORMANCE_STEPS) as step:
        try:
            run = performance_runs.run_performance(
                settings, connections, days=days, last_day=last, version=version, on_step=step
            )
        except drift_runs.MonitoringError as exc:
            raise fail(str(exc)) from exc

    table = Table(
        title=f"realised performance, {run.horizon_days}-day outcomes of snapshots {run.first_day}..{run.last_day}"
    )
    for name in ("version", "day", "rows", "churn rate", "mean score", "ROC AUC", "PR AUC", "log loss", "Brier", "ECE"):
        table.add_column(name, justify="left" if name in ("version", "day") else "right")
    for (version_, day), f in sorted(run.by_day.items()):
        table.add_row(
            version_, day.isoformat(), f"{f.rows:,}", f"{f.positive_rate:.3f}", f"{f.mean_score:.3f}",
            _figure(f.roc_auc), _figure(f.pr_auc), f"{f.log_loss:.3f}", f"{f.brier:.3f}", f"{f.calibration_error:.3f}",
        )  # fmt: skip
    console.print(table)
    if run.overall is not None:
        f = run.overall
        console.print(
            f"v{run.model_version} over the range: ROC AUC {_figure(f.roc_auc)}, Brier {f.brier:.3f},"
            f" calibration error {f.calibration_error:.3f} on {f.rows:,} predictions"
        )
        console.print(f"report: {run.report}; MLflow run {run.mlflow_run_id}")
    else:
        console.print(f"v{run.model_version} served no prediction with a known outcome in the range")
