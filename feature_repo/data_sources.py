"""Feast data sources: the snapshot table of the configured feature catalog, in PostgreSQL."""

from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import get_settings

CATALOG = catalog_from_settings(get_settings())

user_snapshots = PostgreSQLSource(
    name=CATALOG.source_name,
    query=f"SELECT * FROM {CATALOG.table}",
    timestamp_field="event_timestamp",
    description="Daily point-in-time snapshots computed by `churn features compute`",
)
