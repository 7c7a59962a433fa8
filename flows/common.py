"""Tasks every flow starts with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from prefect import get_run_logger, task
from prefect.settings import PREFECT_API_URL, temporary_settings

from churn_platform import db, stack
from churn_platform.connections import Connections, redact
from churn_platform.settings import get_settings


@task(retries=2, retry_delay_seconds=[2.0, 10.0])  # a server restarting is waited for, then named
def platform_connections(*, redis: bool = False, mlflow: bool = False) -> Connections:
    """The servers the flow needs, resolved once (embedded ones started when none is configured), the schema
    applied to the platform database; an unreachable database fails naming it and its setting."""
    settings = get_settings()
    resolved = stack.resolve(settings, redis=redis, mlflow=mlflow)
    if resolved.started:
        get_run_logger().info(
            "started the embedded %s (data in %s); they keep running: `churn down` stops them",
            ", ".join(resolved.started_names),
            settings.data_dir,
        )
    url = resolved.connections.database_url
    try:
        db.init_schema(url)
    except (psycopg.OperationalError, db.DatabaseUnreachableError) as exc:
        where = "(CHURN_DATABASE_URL)" if settings.database_url else "(the embedded server)"
        cause = str(exc.__cause__ or exc).strip().splitlines()[0]
        raise db.DatabaseUnreachableError(f"PostgreSQL at {redact(url)} {where} is unreachable: {cause}") from exc
    return resolved.connections


def retry_unless(*refusals: type[Exception]) -> Callable[[Any, Any, Any], bool]:
    """A task's retry condition: any failure (a server briefly away) is worth a retry, except a refusal of what the
    task was asked (no champion, nothing served, no such experiment): retrying cannot help."""

    def worth_a_retry(_task: Any, _run: Any, state: Any) -> bool:
        try:
            state.result()
        except refusals:
            return False
        except Exception:
            return True
        return True

    return worth_a_retry


def run_on_the_stack(flow: Callable[..., Any], **parameters: Any) -> Any:
    """Run a flow (a flow file run as a script) on the stack's Prefect API: PREFECT_API_URL, or the embedded server
    `churn up` started; only when neither is there does Prefect start a temporary server of its own."""
    api = stack.running_prefect_api(get_settings())
    if api is None:
        return flow(**parameters)
    with temporary_settings(updates={PREFECT_API_URL: api}):
        return flow(**parameters)
