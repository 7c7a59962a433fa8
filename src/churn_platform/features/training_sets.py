"""Training sets from Feast: the labelled snapshots as the entity rows, the catalog's feature service as features.

The labels already live in PostgreSQL, so the entity rows go to Feast as SQL (no pandas entity frame uploaded row
by row). The result carries the feature service's name and a hash of the catalog's and the churn rule's
definitions, so a model can record exactly what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from churn_platform.connections import Connections
from churn_platform.data.labels import ChurnDefinition
from churn_platform.features import feast_repo, snapshots
from churn_platform.features.catalog import Catalog, catalog_from_settings
from churn_platform.features.definitions import definitions_hash
from churn_platform.settings import Settings

# `every` keeps one snapshot day in n (counted in UTC days since the epoch, the same days for every user).
LABEL_ROWS_SQL = """
SELECT user_id, event_timestamp, churned FROM {labels}
WHERE horizon_days = {horizon} AND event_timestamp >= {start} AND event_timestamp < {end}
  AND (floor(extract(epoch FROM event_timestamp) / 86400)::bigint % {every}) = 0
"""


@dataclass(frozen=True)
class TrainingSet:
    """Labelled feature rows, and what produced them."""

    frame: pd.DataFrame
    feature_service: str
    definitions_hash: str
    horizon_days: int

    def write_parquet(self, path: Path) -> None:
        """Parquet, with the feature service, definitions hash and horizon in the file's metadata."""
        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        metadata = {
            **(table.schema.metadata or {}),
            b"churn.feature_service": self.feature_service.encode(),
            b"churn.definitions_hash": self.definitions_hash.encode(),
            b"churn.horizon_days": str(self.horizon_days).encode(),
        }
        pq.write_table(table.replace_schema_metadata(metadata), path)


def label_rows(
    catalog: Catalog, horizon_days: int, start: date | None, end: date | None, every_days: int = 1
) -> sql.Composed:
    """The entity rows for Feast: the catalog's labelled snapshots of one horizon in [start, end), one day in
    `every_days`, values quoted by psycopg."""
    if every_days < 1:
        raise ValueError(f"every_days must be at least 1, got {every_days}")
    return sql.SQL(LABEL_ROWS_SQL).format(
        labels=snapshots.labels_table_name(catalog),
        horizon=sql.Literal(horizon_days),
        start=sql.Literal(start or date.min),
        end=sql.Literal(end or date.max),
        every=sql.Literal(every_days),
    )


def training_set(
    settings: Settings,
    connections: Connections,
    *,
    start: date | None = None,
    end: date | None = None,
    every_days: int = 1,
    store: Any = None,
) -> TrainingSet:
    """Labelled snapshots in [start, end), one day in `every_days`, joined point-in-time with the catalog's
    features through Feast (`store`: the repository's store unless given, e.g. `feast_repo.open_stock_store`)."""
    catalog = catalog_from_settings(settings)
    hashed = definitions_hash(catalog, ChurnDefinition.from_settings(settings))
    rows = label_rows(catalog, settings.label_horizon_days, start, end, every_days)
    with psycopg.connect(connections.database_url) as conn:
        labelled = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS rows").format(rows)).fetchone()
        entity_sql = rows.as_string(conn)  # Feast takes the entity rows as a string
    if not labelled or labelled[0] == 0:
        # Feast cannot take an empty entity set; an empty training set has the same columns.
        frame = pd.DataFrame(columns=["user_id", "event_timestamp", "churned", *catalog.names])
        return TrainingSet(frame, catalog.name, hashed, settings.label_horizon_days)
    store = store or feast_repo.open_store(settings, connections)
    job = store.get_historical_features(entity_df=entity_sql, features=store.get_feature_service(catalog.name))
    # Sorted in Arrow (multi-threaded), then converted: a third of the time of sorting the pandas frame.
    table = job.to_arrow().sort_by([("user_id", "ascending"), ("event_timestamp", "ascending")])
    frame = table.to_pandas()
    return TrainingSet(frame, catalog.name, hashed, settings.label_horizon_days)
