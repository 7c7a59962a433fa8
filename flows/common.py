"""Tasks every flow starts with."""

from __future__ import annotations

from prefect import task

from churn_platform import db, stack
from churn_platform.connections import Connections
from churn_platform.settings import get_settings


@task
def platform_connections(*, redis: bool = False, mlflow: bool = False) -> Connections:
    """The servers the flow needs, resolved once (embedded ones started when none is configured), the schema
    applied to the platform database."""
    connections = stack.connect(get_settings(), redis=redis, mlflow=mlflow)
    db.init_schema(connections.database_url)
    return connections
