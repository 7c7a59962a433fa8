"""`churn flows`: the platform's Prefect deployments (served by the process `churn up` starts), listed and run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.table import Table

from churn_platform import stack
from churn_platform.cli.output import console, fail
from churn_platform.settings import get_settings
from churn_platform.stack import flow_server

flows_app = typer.Typer(help="The platform's Prefect deployments: list them, run one.", no_args_is_help=True)

DEPLOYMENTS = {name: f"{flow}/{deployment}" for name, (flow, deployment, _) in flow_server.DEPLOYMENTS.items()}


def api_or_fail() -> str:
    api = stack.running_prefect_api(get_settings())
    if api is None:
        raise fail("no Prefect API: start the stack (`churn up`) or set PREFECT_API_URL")
    return api


@flows_app.command("list")
def flows_list() -> None:
    """The deployments `churn up` serves, and the API they are registered with."""
    api = api_or_fail()
    served = set(stack.served_deployments(api))
    table = Table(title=f"deployments at {api}")
    for column in ("name", "deployment", "what it does", "served"):
        table.add_column(column)
    for name, (flow, deployment, what) in flow_server.DEPLOYMENTS.items():
        table.add_row(name, f"{flow}/{deployment}", what, "yes" if deployment in served else "[red]no[/]")
    console.print(table)


@flows_app.command("run")
def flows_run(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(DEPLOYMENTS)}.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="A parameter as NAME=VALUE (VALUE read as JSON if it parses).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish and exit 1 if it did not complete.")] = True,
) -> None:
    """Run a deployment through the Prefect API, as the UI's Run button does; the served process runs it."""
    if name not in DEPLOYMENTS:
        raise fail(f"no deployment named {name!r}: one of {', '.join(DEPLOYMENTS)}")
    parameters = dict(_parameter(text) for text in param or [])
    with console.status(f"running {DEPLOYMENTS[name]}"):
        run = run_deployment_named(api_or_fail(), name, parameters, wait=wait)
    if wait and not run.completed:
        raise fail(run.message)
    console.print(run.message)


@dataclass(frozen=True)
class DeploymentRun:
    id: str
    ui_url: str  # the flow run's page in the Prefect UI
    completed: bool
    message: str  # deployment, run name, state, UI page and the state's message


def run_deployment_named(api: str, name: str, parameters: dict[str, Any], *, wait: bool = True) -> DeploymentRun:
    """Run one of the platform's deployments through the API (waiting for it to finish unless not `wait`)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        run = run_deployment(DEPLOYMENTS[name], parameters=parameters, timeout=None if wait else 0)
    assert isinstance(run, FlowRun)  # the synchronous call: not a coroutine outside an event loop
    state = run.state
    ui = api.removesuffix("/api") + f"/runs/flow-run/{run.id}"
    message = f"{DEPLOYMENTS[name]}: flow run {run.name} is {state.name if state else 'unknown'} ({ui})"
    if state is not None and state.message:
        message += f": {state.message}"
    return DeploymentRun(str(run.id), ui, state is not None and state.is_completed(), message)


def _parameter(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise fail(f"--param {text!r}: expected NAME=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
