"""`churn train`, `churn retrain` and `churn models`: training runs, the retraining triggers, and the registered
versions' roles (MLflow aliases)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from churn_platform.cli.output import EndDay, FirstDay, connect, console, day_range, fail
from churn_platform.settings import get_settings

models_app = typer.Typer(help="Registered model versions and their roles (MLflow aliases).", no_args_is_help=True)


def train(
    start: FirstDay = None,
    end: EndDay = None,
) -> None:
    """Train the candidates on a Feast training set, track the run in MLflow, register the best as a version."""
    from mlflow.exceptions import MlflowException

    from churn_platform.training import pipeline, registry, report

    first, stop = day_range(start, end)
    settings = get_settings()
    connections = connect(settings, redis=True, mlflow=True)
    with console.status("training: reading the training set through Feast, fitting the candidates..."):
        try:
            result = pipeline.train(settings, connections, start=first, end=stop)
        except (ValueError, registry.RegistryError) as exc:
            raise fail(str(exc)) from exc
        except MlflowException as exc:
            raise fail(f"MLflow at {connections.mlflow}: {exc}") from exc
    trained, registered = result.trained, result.registered
    table = Table(title=f"{trained.candidate} on the test window {trained.split.test}")
    for column in report.COLUMNS:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in report.metric_rows(result):
        table.add_row(*row)
    console.print(table)
    folds = f", {trained.folds} user folds" if trained.folds else ""
    console.print(f"split ({trained.split.design} validation{folds}): {trained.split}")
    if registered is not None:
        roles = ", ".join(registered.aliases) or "no alias"
        console.print(f"registered {registered.name} version {registered.version} ({roles})")


def retrain(
    if_needed: Annotated[
        bool, typer.Option("--if-needed", help="Only when a retraining trigger fires (drift, quality, volume).")
    ] = False,
    history: Annotated[bool, typer.Option("--history", help="Also the earlier evaluations of the triggers.")] = False,
) -> None:
    """Evaluate the retraining triggers (recorded, fired or not); retrain when one fires (always without
    --if-needed): the new version becomes `challenger` and its A/B experiment against the champion starts."""
    from mlflow.exceptions import MlflowException

    from churn_platform.monitoring import retraining
    from churn_platform.training import registry

    settings = get_settings()
    connections = connect(settings, redis=True, mlflow=True)
    with console.status("evaluating the retraining triggers (and retraining if one fires)..."):
        try:
            done = retraining.retrain(settings, connections, if_needed=if_needed)
        except (ValueError, registry.RegistryError) as exc:  # MonitoringError is a ValueError
            raise fail(str(exc)) from exc
        except MlflowException as exc:
            raise fail(f"MLflow at {connections.mlflow}: {exc}") from exc
    table = Table(
        title=f"retraining triggers: {settings.model_name} champion version {done.evaluation.champion_version}"
    )
    for column in retraining.TRIGGER_COLUMNS:
        table.add_column(column, overflow="fold")
    for t in done.evaluation.triggers:
        table.add_row(*retraining.trigger_cells(t), style="red" if t.fired else None)
    console.print(table)
    console.print(f"[bold]{done.action}[/]")
    if history:
        earlier = Table(title="earlier evaluations, newest first")
        for column in ("evaluated at", "champion", "fired", "reason", "action"):
            earlier.add_column(column, overflow="fold")
        for row in retraining.history(connections.database_url, settings.model_name):
            earlier.add_row(f"{row['evaluated_at']:%Y-%m-%d %H:%M}", row["champion_version"],
                            "yes" if row["fired"] else "no", row["reason"], row["action"] or "-")  # fmt: skip
        console.print(earlier)


@models_app.command("list")
def models_list() -> None:
    """Every version of the model, newest first, with its aliases and test metrics."""
    from churn_platform.training import registry

    settings = get_settings()
    versions = registry.list_versions(connect(settings, mlflow=True).mlflow, settings.model_name)
    if not versions:
        raise fail(f"no versions of {settings.model_name} yet: run `churn train` first")
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
    """Make VERSION the champion; the current champion becomes `previous` (for `churn models rollback`).

    Refused when, on VERSION's own test rows, its ROC AUC is below the champion's by more than the margin."""
    from churn_platform.training import promotion, registry

    settings = get_settings()
    try:
        promoted = promotion.promote(
            connect(settings, mlflow=True).mlflow,
            settings.model_name,
            version,
            margin=settings.promotion_auc_margin,
            force=force,
        )
    except (promotion.PromotionRefusedError, registry.RegistryError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"{promoted.name} version {promoted.version} is now champion ({promoted.tags['promotion_check']})")


@models_app.command("rollback")
def models_rollback() -> None:
    """Make the previous champion the champion again."""
    from churn_platform.training import registry

    settings = get_settings()
    try:
        restored = registry.rollback(connect(settings, mlflow=True).mlflow, settings.model_name)
    except registry.RegistryError as exc:
        raise fail(str(exc)) from exc
    console.print(f"rolled back: {restored.name} version {restored.version} is champion again")


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "-"
