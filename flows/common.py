"""Tasks every flow starts with."""

from __future__ import annotations

from prefect import get_run_logger, task

from churn_platform import db, stack
from churn_platform.connections import Connections
from churn_platform.settings import get_settings


@task
def platform_connections(*, redis: bool = False, mlflow: bool = False) -> Connections:
    """The servers the flow needs, resolved once (embedded ones started when none is configured), the schema
    applied to the platform database."""
    settings = get_settings()
    resolved = stack.resolve(settings, redis=redis, mlflow=mlflow)
    if resolved.started:
        get_run_logger().info(
            "started the embedded %s (data in %s); they keep running: `churn down` stops them",
            ", ".join(resolved.started_names),
            settings.data_dir,
        )
    db.init_schema(resolved.connections.database_url)
    return resolved.connections
