"""The online side of the feature store: materializing the latest snapshots into Redis, and reading them back.

Reads go through Feast's online store and key format, and report per feature whether the value is present,
missing (the user was never materialized) or stale: Feast's online path ignores a feature view's TTL, so the age
check is ours.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from psycopg import sql

from churn_platform import db
from churn_platform.features import feast_repo
from churn_platform.features.catalog import Catalog, catalog_from_settings
from churn_platform.features.snapshots import table_name
from churn_platform.settings import Settings

Status = Literal["present", "missing", "stale"]
LATEST_SNAPSHOT_SQL = "SELECT max(event_timestamp) FROM {table}"


@dataclass(frozen=True)
class MaterializeRun:
    """What one materialization covered."""

    end: datetime | None
    seconds: float


def latest_snapshot_time(url: str, catalog: Catalog) -> datetime | None:
    with db.connect(url) as conn:
        row = conn.execute(sql.SQL(LATEST_SNAPSHOT_SQL).format(table=table_name(catalog))).fetchone()
    return None if row is None else row[0]


def materialize(settings: Settings, *, full: bool = False) -> MaterializeRun:
    """Load snapshots newer than the last materialization into Redis, up to the latest one (incremental).

    The end is the data's own latest snapshot, not the wall clock: a synthetic world has its own calendar. A first
    run covers the view's TTL before it; a second run with nothing new writes nothing (and returns end None).
    """
    started = time.perf_counter()
    catalog = catalog_from_settings(settings)
    latest = latest_snapshot_time(db.platform_url(settings), catalog)
    if latest is None:
        return MaterializeRun(None, time.perf_counter() - started)
    store = feast_repo.open_store(settings)
    view = store.get_feature_view(feature_view_name(catalog))
    end = latest + timedelta(microseconds=1)  # Feast's interval excludes its end
    # Not materialize_incremental: for a view never materialized it starts at the wall clock minus the TTL,
    # which misses every snapshot of a world with its own calendar. The registry's intervals still record runs.
    # `full` rewrites the view's TTL before the latest snapshot whatever was recorded (after clear_online).
    start = end - view.ttl if full else (view.most_recent_end_time or end - view.ttl)
    if start >= end:
        return MaterializeRun(None, time.perf_counter() - started)
    store.materialize(start_date=start, end_date=end, feature_views=[view.name])
    return MaterializeRun(end, time.perf_counter() - started)


def clear_online(settings: Settings) -> None:
    """Delete every user's features of this Feast project from the online store (Redis)."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    store = feast_repo.open_store(settings)
    RedisOnlineStore().delete_entity_values(store.config, ["user_id"])


def feature_view_name(catalog: Catalog) -> str:
    return f"{catalog.name}_user_features"


@dataclass(frozen=True)
class FeatureVector:
    """One user's online features, with each feature's status and the snapshot time they come from."""

    user_id: str
    values: dict[str, Any]
    status: dict[str, Status]
    snapshot_at: datetime | None


class OnlineFeatures:
    """Reads feature vectors from the online store; resolve once, read many times (the serving path).

    The store, its feature service and the proto helpers are looked up once here, not per request.
    """

    def __init__(self, settings: Settings, *, max_age: timedelta = timedelta(days=2)) -> None:
        from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
        from feast.type_map import feast_value_type_to_python_type

        catalog = catalog_from_settings(settings)
        self.store = feast_repo.open_store(settings)
        self.service = self.store.get_feature_service(catalog.name)
        self.max_age = max_age
        self._not_found = FieldStatus.NOT_FOUND
        self._to_python = feast_value_type_to_python_type

    def read(self, user_ids: Sequence[str], *, now: datetime | None = None) -> list[FeatureVector]:
        """The feature vectors of `user_ids`, in order; older than `max_age` at `now` (default: now) is stale."""
        response = self.store.get_online_features(features=self.service, entity_rows=[{"user_id": u} for u in user_ids])
        now = now or datetime.now(UTC)
        names = list(response.proto.metadata.feature_names.val)
        vectors = []
        for i, user_id in enumerate(user_ids):
            values: dict[str, Any] = {}
            status: dict[str, Status] = {}
            snapshot_at: datetime | None = None
            for name, result in zip(names, response.proto.results, strict=True):
                if name == "user_id":
                    continue
                values[name] = self._to_python(result.values[i])
                # A user never materialized comes back NOT_FOUND, or (Redis store) as a null with no timestamp.
                if result.statuses[i] == self._not_found or result.event_timestamps[i].seconds == 0:
                    status[name] = "missing"
                    continue
                at = datetime.fromtimestamp(result.event_timestamps[i].seconds, tz=UTC)
                snapshot_at = at if snapshot_at is None else max(snapshot_at, at)
                status[name] = "stale" if now - at > self.max_age else "present"
            vectors.append(FeatureVector(user_id, values, status, snapshot_at))
        return vectors


def read_features(
    settings: Settings, user_ids: Sequence[str], *, now: datetime | None = None, max_age: timedelta | None = None
) -> list[FeatureVector]:
    """One-off read (resolves the store each call; a long-lived caller keeps an OnlineFeatures)."""
    return OnlineFeatures(settings, max_age=max_age or timedelta(days=2)).read(user_ids, now=now)
