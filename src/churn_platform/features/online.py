"""The online side of the feature store: materializing the latest snapshots into Redis, and reading them back.

Reads go through Feast's online store and key format, and report per feature whether the value is present,
missing (the user was never materialized) or stale: Feast's online path ignores a feature view's TTL, so the age
check is ours.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from psycopg import sql

from churn_platform import db
from churn_platform.connections import Connections
from churn_platform.features import feast_repo
from churn_platform.features.catalog import JOIN_KEY, SNAPSHOT_TTL, Catalog, catalog_from_settings
from churn_platform.features.feast_redis import string_key_layout
from churn_platform.features.feature_batch import FeatureBatch, FeatureVector, HashArranger, TimestampCache, ViewFields
from churn_platform.features.redis_async import AsyncHashReader, hgetall_payload
from churn_platform.features.snapshots import table_name
from churn_platform.features.value_codec import ValueDecoder
from churn_platform.settings import Settings

LATEST_SNAPSHOT_SQL = "SELECT max(event_timestamp) FROM {table}"
SAMPLE_LATEST_USERS_SQL = """
SELECT user_id FROM {table} WHERE event_timestamp = (SELECT max(event_timestamp) FROM {table})
ORDER BY md5(user_id), user_id LIMIT %(count)s
"""
# Which snapshots went to the online store. A features table, so replacing the data empties it with the snapshots.
CREATE_LEDGER_SQL = """
CREATE TABLE IF NOT EXISTS features.online_materializations (
    feature_view    text        NOT NULL,
    start_at        timestamptz NOT NULL,
    end_at          timestamptz NOT NULL,
    materialized_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feature_view, end_at)
)"""
LAST_MATERIALIZED_SQL = "SELECT max(end_at) FROM features.online_materializations WHERE feature_view = %(view)s"
RECORD_MATERIALIZATION_SQL = """
INSERT INTO features.online_materializations (feature_view, start_at, end_at) VALUES (%(view)s, %(start)s, %(end)s)
ON CONFLICT (feature_view, end_at) DO UPDATE SET start_at = excluded.start_at, materialized_at = now()
"""


@dataclass(frozen=True)
class MaterializeRun:
    """What one materialization covered."""

    end: datetime | None
    seconds: float


def latest_snapshot_time(url: str, catalog: Catalog) -> datetime | None:
    with db.connect(url) as conn:
        row = conn.execute(sql.SQL(LATEST_SNAPSHOT_SQL).format(table=table_name(catalog))).fetchone()
    return None if row is None else row[0]


def sample_of_latest_users(url: str, catalog: Catalog, count: int) -> list[str]:
    """`count` users of the latest snapshot, the same ones every time (ordered by a hash of the id)."""
    with db.connect(url) as conn:
        rows = conn.execute(
            sql.SQL(SAMPLE_LATEST_USERS_SQL).format(table=table_name(catalog)), {"count": count}
        ).fetchall()
    return [row[0] for row in rows]


def materialize(settings: Settings, connections: Connections, *, full: bool = False) -> MaterializeRun:
    """Load snapshots newer than the last materialization into Redis, up to the latest one (incremental).

    The end is the data's own latest snapshot, not the wall clock: a synthetic world has its own calendar. A first
    run covers the view's TTL before it; a second run with nothing new writes nothing (and returns end None).
    `full` rewrites the TTL window before the latest snapshot whatever was recorded (after `clear_online`).
    """
    started = time.perf_counter()
    catalog = catalog_from_settings(settings)
    url = connections.database_url
    latest = latest_snapshot_time(url, catalog)
    if latest is None:
        return MaterializeRun(None, time.perf_counter() - started)
    store = feast_repo.open_store(settings, connections)
    view = store.get_feature_view(catalog.feature_view_name)
    end = latest + timedelta(microseconds=1)  # Feast's interval excludes its end
    last_end = last_materialized(url, view.name)
    if last_end is None and not full:
        # The first run over these snapshots: values in Redis come from data they replaced (a regenerated world
        # on the same calendar), and Feast's writer never overwrites a value with one of the same timestamp.
        clear_view(settings, connections, view.name)
    # Not materialize_incremental, nor the registry's intervals: for a view never materialized Feast starts at the
    # wall clock minus the TTL, which misses a world with its own calendar, and its intervals outlive the
    # snapshots they covered. Our ledger lives next to the snapshots and is emptied with them.
    start = end - view.ttl if full or last_end is None else last_end
    if start >= end:
        return MaterializeRun(None, time.perf_counter() - started)
    store.materialize(start_date=start, end_date=end, feature_views=[view.name])
    with db.connect(url) as conn:
        conn.execute(RECORD_MATERIALIZATION_SQL, {"view": view.name, "start": start, "end": end})
    return MaterializeRun(end, time.perf_counter() - started)


def last_materialized(url: str, view_name: str) -> datetime | None:
    """The end of the latest materialization of `view_name` over the current snapshots, if any."""
    with db.connect(url) as conn:
        conn.execute(CREATE_LEDGER_SQL)
        row = conn.execute(LAST_MATERIALIZED_SQL, {"view": view_name}).fetchone()
    return None if row is None else row[0]


def clear_view(settings: Settings, connections: Connections, view_name: str) -> None:
    """Delete one feature view's values of every user from the online store."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    store = feast_repo.open_store(settings, connections)
    RedisOnlineStore().delete_table(store.config, store.get_feature_view(view_name))


def clear_online(settings: Settings, connections: Connections) -> None:
    """Delete every user's features of this Feast project from the online store (Redis)."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    store = feast_repo.open_store(settings, connections)
    RedisOnlineStore().delete_entity_values(store.config, [JOIN_KEY])


class OnlineFeatures:
    """Reads feature vectors from Feast's Redis online store; resolve once, read many times (the serving path).

    `FeatureStore.get_online_features` spends most of a read building and converting protobuf responses. This
    reader keeps Feast's store and format (the online store's own Redis client, Feast's entity-key serialization,
    its murmur3 field names and its value protos) but does the per-request work once: hash keys and field names
    are computed when first needed, one pipelined HGETALL reads every user, and each distinct stored value is
    decoded in bulk (`value_codec`). The feature service's views, features and order are resolved here, not per call.
    """

    def __init__(self, settings: Settings, connections: Connections, *, max_age: timedelta = SNAPSHOT_TTL) -> None:
        from feast.infra.online_stores.helpers import _mmh3
        from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
        from feast.types import Float64

        catalog = catalog_from_settings(settings)
        self.store = feast_repo.open_store(settings, connections)
        self.service = self.store.get_feature_service(catalog.name)
        self.max_age = max_age
        config = self.store.config
        online_store = self.store._get_provider().online_store
        if not isinstance(online_store, RedisOnlineStore):
            raise TypeError(f"the online store must be Feast's Redis store, not {type(online_store).__name__}")
        self._client = online_store._get_client(config.online_store)
        self._async_reader = AsyncHashReader.for_client(self._client)
        views = []
        for projection in self.service.feature_view_projections:
            stored_name = _versioned_fv_name(self.store.get_feature_view(projection.name), config)
            fields = tuple((f.name, _mmh3(f"{stored_name}:{f.name}"), f.dtype == Float64) for f in projection.features)
            views.append(ViewFields(f"_ts:{stored_name}".encode(), fields))
        self._views = tuple(views)
        self.feature_names = [name for view in self._views for name, _, _ in view.features]
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"feature service {self.service.name} has two features of the same name")
        self._key_prefix, self._key_suffix = string_key_layout(
            config.project, JOIN_KEY, config.entity_key_serialization_version
        )
        self._decoder = ValueDecoder()
        self._timestamps = TimestampCache()
        self._arranger = HashArranger(
            [view.timestamp_field for view in self._views]
            + [field for view in self._views for _, field, _ in view.features]
        )

    def read(self, user_ids: Sequence[str], *, now: datetime | None = None) -> list[FeatureVector]:
        """The feature vectors of `user_ids`, in order; older than `max_age` at `now` (default: now) is stale."""
        return self.read_batch(user_ids, now=now).vectors()

    def read_batch(self, user_ids: Sequence[str], *, now: datetime | None = None) -> FeatureBatch:
        """The features of `user_ids` as one batch, read in one round trip and decoded only as asked."""
        return self._batch(user_ids, self._fetch(self.redis_keys(user_ids)), now)

    async def read_batch_async(self, user_ids: Sequence[str], *, now: datetime | None = None) -> FeatureBatch:
        """`read_batch` on an event loop: the loop serves other requests while Redis answers."""
        keys = self.redis_keys(user_ids)
        if self._async_reader is None:
            replies = await asyncio.to_thread(self._fetch, keys)
        else:
            replies = await self._async_reader.hgetall(keys)
        return self._batch(user_ids, replies, now)

    def _batch(self, user_ids: Sequence[str], replies: list[Any], now: datetime | None) -> FeatureBatch:
        return FeatureBatch(
            user_ids, self._views, self._arranger.arrange(replies), now=now or datetime.now(UTC),
            max_age=self.max_age, decoder=self._decoder, timestamps=self._timestamps,
        )  # fmt: skip

    def _fetch(self, keys: list[bytes]) -> list[Any]:
        """Every key's HGETALL reply: one write of all the commands, then the replies (hiredis parses them).

        A pipeline object would cost a Python-level command and reply object per key; the commands are written
        here in RESP on one of the online store client's own connections (its auth, database and TLS). A dropped
        connection is retried by the client's own retry policy: the read changes nothing.
        """
        client = self._client
        if not isinstance(client, redis.Redis):  # a Redis Cluster spreads the keys: its own pipeline routes them
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return list(pipe.execute())
        payload = hgetall_payload(keys)
        pool = client.connection_pool
        connection: Any = pool.get_connection()

        def exchange() -> list[Any]:
            connection.send_packed_command([payload], check_health=False)
            read = connection.read_response
            return [read() for _ in keys]

        try:  # the client's own retry policy for a dropped connection (it reconnects on the next send)
            replies: list[Any] = connection.retry.call_with_retry(exchange, lambda _: connection.disconnect())
            return replies
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reuse the connection as it is
            raise
        finally:
            pool.release(connection)

    def ping(self) -> None:
        """Raise if the online store's Redis does not answer."""
        self._client.ping()

    def close(self) -> None:
        """Close the connections of the event-loop reader (the store's client keeps its own pool)."""
        if self._async_reader is not None:
            self._async_reader.close()

    def redis_keys(self, user_ids: Sequence[str]) -> list[bytes]:
        return [self.redis_key(user_id) for user_id in user_ids]

    def redis_key(self, user_id: str) -> bytes:
        """The Redis key of a user's hash: Feast's serialized entity key and project (layout checked at start)."""
        encoded = user_id.encode()
        return self._key_prefix + struct.pack("<I", len(encoded)) + encoded + self._key_suffix


def read_features(
    settings: Settings,
    connections: Connections,
    user_ids: Sequence[str],
    *,
    now: datetime | None = None,
    max_age: timedelta | None = None,
) -> list[FeatureVector]:
    """One-off read (resolves the store each call; a long-lived caller keeps an OnlineFeatures)."""
    return OnlineFeatures(settings, connections, max_age=max_age or SNAPSHOT_TTL).read(user_ids, now=now)
