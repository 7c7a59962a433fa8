"""The snapshot population at one time: its users' features read through Feast, and their realised labels.

Scoring "every known user as of a day" means the users of that day's snapshot (`Catalog.table` at midnight UTC):
the snapshot computation already decided who belongs to the population then. Their features come from the offline
store through Feast, with the entity rows given as SQL over the snapshot table, as training sets do with labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql

from churn_platform.connections import Connections
from churn_platform.features import feast_repo
from churn_platform.features.catalog import Catalog
from churn_platform.settings import Settings

# The entity rows: every user of the snapshot at one time.
POPULATION_ROWS_SQL = "SELECT user_id, event_timestamp FROM {table} WHERE event_timestamp = {at}"
POPULATION_SIZE_SQL = "SELECT count(*) FROM {table} WHERE event_timestamp = %(at)s"
SNAPSHOT_RANGE_SQL = "SELECT min(event_timestamp), max(event_timestamp) FROM {table}"
TABLE_EXISTS_SQL = "SELECT to_regclass(%(table)s) IS NOT NULL"
# Labels for one snapshot time and horizon; a snapshot whose horizon has not passed yet has no row.
REALISED_LABELS_SQL = (
    "SELECT user_id, churned FROM {table} WHERE event_timestamp = %(at)s AND horizon_days = %(horizon)s"
)


class PopulationError(LookupError):
    """There is no snapshot population at the time asked for (none computed, or the time is outside them)."""


@dataclass(frozen=True)
class SnapshotRange:
    """The first and last snapshot days stored for a catalog."""

    first: date
    last: date

    def __str__(self) -> str:
        return f"{self.first} .. {self.last}"


def snapshot_time(day: date) -> datetime:
    """A snapshot day's time: midnight UTC, the time its features are as of."""
    return datetime.combine(day, time(), tzinfo=UTC)


def _snapshot_table(catalog: Catalog) -> sql.Identifier:
    return sql.Identifier(*catalog.table.split("."))


def _exists(conn: psycopg.Connection, qualified: str) -> bool:
    row = conn.execute(TABLE_EXISTS_SQL, {"table": qualified}).fetchone()
    return bool(row and row[0])


def snapshot_range(database_url: str, catalog: Catalog) -> SnapshotRange | None:
    """The catalog's first and last snapshot days; None when none are computed."""
    with psycopg.connect(database_url) as conn:
        if not _exists(conn, catalog.table):
            return None
        row = conn.execute(sql.SQL(SNAPSHOT_RANGE_SQL).format(table=_snapshot_table(catalog))).fetchone()
    if row is None or row[0] is None:
        return None
    return SnapshotRange(row[0].astimezone(UTC).date(), row[1].astimezone(UTC).date())


def population_size(database_url: str, catalog: Catalog, day: date) -> int:
    """How many users the snapshot of `day` holds; a PopulationError naming the stored range when none."""
    with psycopg.connect(database_url) as conn:
        found = 0
        if _exists(conn, catalog.table):
            row = conn.execute(
                sql.SQL(POPULATION_SIZE_SQL).format(table=_snapshot_table(catalog)), {"at": snapshot_time(day)}
            ).fetchone()
            found = int(row[0]) if row else 0
    if found:
        return found
    stored = snapshot_range(database_url, catalog)
    if stored is None:
        raise PopulationError(f"no snapshots of {catalog.table} yet: run `churn features compute` first")
    if not stored.first <= day <= stored.last:
        raise PopulationError(
            f"{day} is outside the computed snapshot days of {catalog.table} ({stored}):"
            " choose a day in that range, or run `churn features compute` to extend it"
        )
    raise PopulationError(f"the snapshot of {day} in {catalog.table} holds no users")


def population_rows(catalog: Catalog, day: date) -> sql.Composed:
    """The entity rows for Feast: every user of the snapshot of `day`, at its time (values quoted by psycopg)."""
    return sql.SQL(POPULATION_ROWS_SQL).format(table=_snapshot_table(catalog), at=sql.Literal(snapshot_time(day)))


def population_features(
    settings: Settings, connections: Connections, catalog: Catalog, day: date, *, store: Any = None
) -> pd.DataFrame:
    """user_id, event_timestamp and the catalog's features of every user of the snapshot of `day`, joined point in
    time through Feast's offline store with the catalog's feature service; ordered by user_id.

    A PopulationError when the day has no snapshot (naming the stored range) or the service is not applied.
    """
    population_size(connections.database_url, catalog, day)
    with psycopg.connect(connections.database_url) as conn:
        entity_sql = population_rows(catalog, day).as_string(conn)  # Feast takes the entity rows as a string
    store = store or feast_repo.open_store(settings, connections)
    try:
        service = store.get_feature_service(catalog.feature_service_name)
    except Exception as exc:  # Feast raises its own not-found type, or a registry error before the first apply
        raise PopulationError(
            f"Feast does not know the feature service {catalog.feature_service_name}: run `churn features apply`"
        ) from exc
    job = store.get_historical_features(entity_df=entity_sql, features=service)
    frame: pd.DataFrame = job.to_arrow().sort_by([("user_id", "ascending")]).to_pandas()
    return frame


def realised_labels(database_url: str, catalog: Catalog, day: date, horizon_days: int) -> pd.DataFrame:
    """user_id and churned for the users of the snapshot of `day` whose label over `horizon_days` is known (the
    catalog's labels table)."""
    with psycopg.connect(database_url) as conn:
        if not _exists(conn, catalog.labels_table):
            return pd.DataFrame({"user_id": pd.Series(dtype=str), "churned": pd.Series(dtype=bool)})
        cur = conn.execute(
            sql.SQL(REALISED_LABELS_SQL).format(table=sql.Identifier(*catalog.labels_table.split("."))),
            {"at": snapshot_time(day), "horizon": horizon_days},
        )
        rows = cur.fetchall()
    return pd.DataFrame(rows, columns=["user_id", "churned"]).astype({"user_id": str, "churned": bool})
