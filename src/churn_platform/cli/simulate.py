"""`churn simulate`: the closed loop on a synthetic world, day by day through the platform's own deployments, and
the story of what it did."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churn_platform import stack
from churn_platform.cli.flows import api_or_fail, run_deployment_named
from churn_platform.cli.output import console, fail
from churn_platform.data.synthetic import world
from churn_platform.model.aliases import CHAMPION
from churn_platform.settings import Settings, get_settings
from churn_platform.simulation.story import Story, read_story
from churn_platform.training import registry


@dataclass(frozen=True)
class DayRun:
    day: date  # the snapshot day the simulated day's traffic was scored on
    started: datetime
    ended: datetime
    ui_url: str

    def holds(self, at: datetime) -> bool:
        return self.started <= at <= self.ended


def simulate(
    days: Annotated[int, typer.Option(min=1, max=200, help="Simulated days to run the platform's day for.")] = 14,
    drift_at: Annotated[
        int | None,
        typer.Option("--drift-at", min=1, help="The simulated day (1: the first) from which the world drifts."),
    ] = None,
    auto_promote: Annotated[
        bool, typer.Option(help="Promote an A/B winner at once (as CHURN_AB_AUTO_PROMOTE=true would).")
    ] = True,
) -> None:
    """Run the closed loop on the synthetic world through the deployment `simulate`: each simulated day (a
    `platform-day` run) the world advances, its active users ask the prediction service for their scores over
    HTTP, features are refreshed, the champion is monitored, a running A/B experiment is analysed and the
    retraining triggers are evaluated. Then the story: drift and ROC AUC per version over the days, the retraining
    decisions, the A/B verdicts, and where to look at each in Prefect, MLflow and Evidently."""
    settings = get_settings()
    with console.status("starting the stack (PostgreSQL, Redis, MLflow, Prefect, deployments, service)..."):
        try:
            statuses = stack.up(settings)
        except stack.StackError as exc:
            raise fail(str(exc)) from exc
    down = [f"{s.name} ({s.detail})" for s in statuses if not s.healthy]
    if down:
        raise fail(f"the stack is not healthy: {', '.join(down)} (`churn status`)")
    url, mlflow = stack.database_url(settings), stack.mlflow_tracking_uri(settings)
    stored = world.load_world(url)
    if stored is None:
        raise fail("this database holds no synthetic world: run `churn generate` first")
    if registry.alias_version(mlflow, settings.model_name, CHAMPION) is None:
        raise fail(f"model {settings.model_name!r} has no champion to serve: run `churn train` first")
    config, state = stored
    if drift_at is not None and config.drift_at is not None and config.drift_at < state.day:
        raise fail(f"--drift-at: this world drifts already (since day {config.drift_at})")
    begun = state.day
    first = config.start_date + timedelta(days=begun + 1)  # the first simulated day's traffic's snapshot
    api = api_or_fail()
    since = datetime.now(UTC)
    parameters = {"days": days, "drift_at": drift_at, "auto_promote": auto_promote}
    run = run_deployment_named(api, "simulate", parameters, wait=False)
    console.print(f"flow run: {run.ui_url}")
    if drift_at is not None:
        drifts = config.start_date + timedelta(days=begun + drift_at - 1)
        console.print(f"the world drifts from {drifts} (simulated day {drift_at}): an app launch and a price rise")
    columns = (TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("days"))
    printed, told = 0, set[str]()
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("days", total=days)
        while True:
            state_type, state_name, message = flow_run_state(api, run.id)
            done = (world.days_simulated(url) or begun) - begun
            finished = state_type in FINAL_STATES
            complete = done if finished else max(0, done - 1)  # the newest day is still running
            while printed < complete:
                day = first + timedelta(days=printed)
                story = read_story(url, settings.model_name, settings.label_horizon_days, day, day, since)
                progress.console.print(_day_line(story, told))
                printed += 1
            progress.update(task, completed=done)
            if finished:
                break
            time.sleep(2.0)
    if state_type != "COMPLETED":
        raise fail(f"flow run {run.ui_url} is {state_name}: {message or 'see its logs in the Prefect UI'}")
    runs = day_runs(api, run.id, first)
    story = read_story(url, settings.model_name, settings.label_horizon_days, first, first + timedelta(days=days - 1),
                       since)  # fmt: skip
    print_story(story, runs, settings, mlflow, api)


FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def flow_run_state(api: str, run_id: str) -> tuple[str, str, str | None]:
    """The flow run's state type, state name and message."""
    found = stack.prefect_post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 1})
    state = found[0]["state"] or {}
    return str(found[0]["state_type"]), str(state.get("name") or found[0]["state_name"]), state.get("message")


def day_runs(api: str, parent_id: str, first: date) -> list[DayRun]:
    """The `platform-day` child runs of a simulate run, in order, each with the snapshot day of its traffic."""
    children = stack.prefect_post(api, "/flow_runs/filter", {
        "flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}, "sort": "START_TIME_ASC", "limit": 200,
    })  # fmt: skip
    flows = {f["id"]: f["name"] for f in stack.prefect_post(api, "/flows/filter", {"limit": 200})}
    days = [c for c in children if flows.get(c["flow_id"]) == "platform-day" and c["start_time"]]
    return [
        DayRun(first + timedelta(days=index), datetime.fromisoformat(c["start_time"]),
               datetime.fromisoformat(c["end_time"] or datetime.now(UTC).isoformat()),
               f"{api.removesuffix('/api')}/runs/flow-run/{c['id']}")
        for index, c in enumerate(days)
    ]  # fmt: skip


def _day_line(story: Story, told: set[str]) -> str:
    """A finished day in one line: who served, the drift share, and what the retraining and the A/B analysis did
    that the lines before did not tell."""
    (day,) = story.days
    served = ", ".join(f"v{version} {count:,}" for version, count in day.served.items()) or "nothing served"
    drift = "-" if day.drift_share is None else f"{day.drift_share:.0%}{' drift' if day.drift_flagged else ''}"
    said = [(f"e{e['id']}", e["action"] or e["reason"]) for e in story.evaluations]
    said += [(f"d{d['id']}", f"A/B {d['name']}: {d['action']} v{d['winner_version']}") for d in story.decisions]
    new = [text for key, text in said if key not in told]
    told.update(key for key, _ in said)
    return f"{day.day}  served {served}  drift share {drift}  {' | '.join(_short(text) for text in new)}"


def _streaks(evaluations: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive evaluations that came to the same thing (calm, waiting, an experiment running) as one group;
    a retraining that trained is a group of its own."""
    groups: list[list[dict[str, Any]]] = []
    for evaluation in evaluations:
        kind = (evaluation["fired"], (evaluation["action"] or "").split(":")[0])
        if groups and not kind[1].startswith("trained") and kind == groups[-1][0]["kind"]:
            groups[-1].append({**evaluation, "kind": kind})
        else:
            groups.append([{**evaluation, "kind": kind}])
    return groups


def _run_at(runs: list[DayRun], at: datetime) -> DayRun | None:
    """The day run that was running at `at` (None: outside every one)."""
    return next((run for run in runs if run.holds(at)), None)


def _day_of(runs: list[DayRun], at: datetime) -> date | str:
    run = _run_at(runs, at)
    return run.day if run is not None else f"{at:%Y-%m-%d %H:%M}"


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _auc_cell(value: float | None, realised: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if realised else f"[dim]~{value:.3f}[/]"


def print_story(story: Story, runs: list[DayRun], settings: Settings, mlflow: str, prefect_api: str) -> None:
    """The timeline, the retraining decisions, the A/B verdicts and the links behind each step."""
    by_day = {run.day: run for run in runs}
    marks: dict[date, list[str]] = {}
    for evaluation in story.evaluations:
        run = _run_at(runs, evaluation["evaluated_at"])
        action = evaluation["action"] or ""
        if run is not None and action.startswith(("trained", "waiting")):
            mark = "retrain trained" if action.startswith("trained") else "retrain waits for outcomes"
            marks.setdefault(run.day, []).append(mark)
    for decided in story.decisions:
        run = _run_at(runs, decided["decided_at"])
        if run is not None:
            marks.setdefault(run.day, []).append(f"{decided['action']} v{decided['winner_version']}")

    timeline = Table(title=f"the platform's days: ROC AUC realised (~ estimated) over a {story.horizon_days}-day"
                           " horizon, drift share of the week's served features")  # fmt: skip
    timeline.add_column("snapshot")
    timeline.add_column("served")
    timeline.add_column("drift", justify="right")
    for version in story.versions:
        timeline.add_column(f"AUC v{version}", justify="right")
    timeline.add_column("what happened")
    for day in story.days:
        served = " ".join(f"v{v}:{n:,}" for v, n in day.served.items()) or "-"
        drift = "-" if day.drift_share is None else f"{day.drift_share:.0%}"
        if day.drift_flagged:
            drift = f"[red]{drift}[/]"
        aucs = [_auc_cell(*day.auc(version)) for version in story.versions]
        timeline.add_row(str(day.day), served, drift, *aucs, ", ".join(marks.get(day.day, [])))
    console.print(timeline)

    fired = sum(1 for e in story.evaluations if e["fired"])
    console.print(f"\n[bold]retraining[/]: {len(story.evaluations)} evaluations, {fired} fired")
    for group in _streaks(story.evaluations):
        first, last = (_day_of(runs, e["evaluated_at"]) for e in (group[0], group[-1]))
        when = str(first) if len(group) == 1 else f"{first} .. {last} ({len(group)} days)"
        newest = group[-1]
        console.print(f"  {when}, champion v{newest['champion_version']}: {newest['reason']}", soft_wrap=True)
        if newest["action"]:
            console.print(f"      -> {newest['action']}", soft_wrap=True)

    console.print("\n[bold]A/B experiments[/]" + ("" if story.experiments else ": none"))
    analyses = {a["name"]: a for a in story.analyses}
    for experiment in story.experiments:
        state = "running" if experiment["stopped_at"] is None else f"stopped {experiment['stopped_at']:%Y-%m-%d %H:%M}"
        console.print(f"  {experiment['name']}: v{experiment['variant']} at {experiment['variant_share']:.0%}"
                      f" against the champion, {state}", soft_wrap=True)  # fmt: skip
        analysis = analyses.get(experiment["name"])
        if analysis is not None:
            console.print(f"      verdict ({analysis['decisive_test']} test): {analysis['reason']}", soft_wrap=True)
    for decided in story.decisions:
        console.print(f"  decision on {decided['name']}: {decided['action']} v{decided['winner_version']}"
                      f" (champion v{decided['champion_before']} -> v{decided['champion_after']}): {decided['reason']}",
                      soft_wrap=True)  # fmt: skip

    console.print("\n[bold]where to look[/]")
    prefect_ui = prefect_api.removesuffix("/api")
    shown = [*runs[:1], *[by_day[d] for d in sorted(marks) if d in by_day], *runs[-1:]]
    for run in dict.fromkeys(shown):
        console.print(f"  Prefect, the day of {run.day}: {run.ui_url}", soft_wrap=True)
    console.print(f"  Prefect, every flow run: {prefect_ui}/runs", soft_wrap=True)
    for version in story.versions:
        console.print(f"  MLflow, version {version}: {mlflow.rstrip('/')}/#/models/{settings.model_name}/versions/"
                      f"{version}", soft_wrap=True)  # fmt: skip
    reports = [d for d in story.days if d.drift_report and (d.day in marks or d is story.days[-1])]
    for day in reports:
        console.print(f"  Evidently drift report, {day.day}: {day.drift_report}", soft_wrap=True)
