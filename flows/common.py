"""Tasks every flow starts with."""

from __future__ import annotations

from prefect import task

from churn_platform import db
from churn_platform.settings import get_settings


@task
def platform_database() -> str:
    """The platform database URL (the embedded server is started when none is configured), schema applied."""
    url = db.platform_url(get_settings())
    db.init_schema(url)
    return url
