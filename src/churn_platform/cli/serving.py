"""`churn predict` and `churn explain`: the prediction service through its HTTP API, as any client would use it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from churn_platform import stack
from churn_platform.cli.output import connect, console, fail
from churn_platform.features import online
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import Settings, get_settings


def _post(url: str, route: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{url.rstrip('/')}{route}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _ready_service(settings: Settings, wait_s: float) -> str:
    """The service's URL once `/readyz` answers (it polls the registry: a new champion takes one interval)."""
    url = connect(settings, service=True).service
    deadline = time.monotonic() + wait_s
    with console.status(f"waiting for the prediction service at {url} to be ready..."):
        while True:
            ready, detail = stack.service_health(url)
            if ready and detail == "ready":
                return url
            if time.monotonic() > deadline:
                raise fail(f"the prediction service at {url} is not ready after {wait_s:.0f} s: {detail}")
            time.sleep(0.5)


def _users(settings: Settings, user_ids: list[str] | None, sample: int) -> list[str]:
    if user_ids:
        return user_ids
    users = online.sample_of_latest_users(connect(settings).database_url, catalog_from_settings(settings), sample)
    if not users:
        raise fail("no snapshots yet: run `churn features compute` and `churn features materialize` first")
    return users


def predict(
    user_ids: Annotated[list[str] | None, typer.Argument(help="Users to score; default: a sample.")] = None,
    sample: Annotated[int, typer.Option(min=1, max=100, help="How many users of the latest snapshot.")] = 8,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for the service to be ready.")] = 60.0,
) -> None:
    """Score users through the prediction service's HTTP API (`POST /predict`, one request per user)."""
    settings = get_settings()
    users = _users(settings, user_ids, sample)
    url = _ready_service(settings, wait)
    table = Table(title=f"churn predictions from {url}/predict")
    for column in ("user", "P(churn)", "risk", "model", "experiment / arm", "features", "ms"):
        table.add_column(column, justify="right" if column in ("P(churn)", "ms") else "left")
    for user_id in users:
        began = time.perf_counter()
        status, body = _post(url, "/predict", {"user_id": user_id})
        elapsed = f"{(time.perf_counter() - began) * 1000:.1f}"
        if status != 200:
            table.add_row(
                escape(user_id), "-", "-", "-", "-", f"[red]{status}: {escape(str(body.get('error')))}[/]", elapsed
            )
            continue
        probability = body["churn_probability"]
        states = [feature["status"] for feature in (body.get("features") or {}).values()]
        summary = ", ".join(f"{states.count(s)} {s}" for s in ("present", "stale", "missing") if states.count(s))
        table.add_row(
            escape(user_id),
            "-" if probability is None else f"{probability:.3f}",
            _band(body["risk_band"]),
            f"v{body['model_version']} {body['model_alias']}",
            f"{body['experiment']} / {body['arm']}" if body["experiment"] else body["arm"],
            summary,
            elapsed,
        )
    console.print(table)


def explain(
    user_id: Annotated[str, typer.Argument(help="The user whose score to explain.")],
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for the service to be ready.")] = 60.0,
    top: Annotated[int, typer.Option(min=1, help="How many features to show.")] = 10,
) -> None:
    """Each feature's contribution to one user's score (`POST /explain`), largest first."""
    url = _ready_service(get_settings(), wait)
    status, body = _post(url, "/explain", {"user_id": user_id})
    if status != 200:
        raise fail(f"{status}: {body.get('error')}")
    if body["method"] is None:
        raise fail(body["message"])
    contributions = body["contributions"][:top]
    widest = max((abs(c["contribution"]) for c in contributions), default=1.0) or 1.0
    table = Table(
        title=f"{user_id}: P(churn) {body['churn_probability']:.3f}, model v{body['model_version']}"
        f" ({body['model_alias']}); {body['method']}; base {body['base_value']:+.3f} log-odds"
    )
    for column in ("feature", "value", "log-odds", ""):
        table.add_column(column, justify="right" if column in ("value", "log-odds") else "left")
    for c in contributions:
        bar = "█" * max(1, round(20 * abs(c["contribution"]) / widest))
        colour = "red" if c["contribution"] > 0 else "green"
        value = f"{c['value']:.4g}" if isinstance(c["value"], float) else escape(str(c["value"]))
        table.add_row(c["feature"], value, f"{c['contribution']:+.3f}", f"[{colour}]{bar}[/]")
    console.print(table)


def _band(band: str) -> str:
    colour = {"high": "red", "medium": "yellow", "low": "green"}.get(band, "dim")
    return f"[{colour}]{band}[/]"
