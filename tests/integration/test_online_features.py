"""Materialization into Redis through Feast, and online reads against the latest offline snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
import redis
import uvloop
from tests.integration.feature_worlds import connections, platform_settings, redis_db_url, small_world_with_snapshots

from churn_platform.data.labels import ChurnDefinition
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import feast_repo, online, snapshots
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.feature_batch import FeatureVector
from churn_platform.settings import Settings

ONLINE_DB = 12  # a Redis database of its own: flushed by these tests
REPLACED_DB = 14  # another, for the replaced-world test


@pytest.fixture(scope="module")
def world_settings(make_database: Callable[[], str], stack_settings: Settings) -> Iterator[Settings]:
    """A small world with snapshots, the Feast repo applied, and an empty Redis database for the online store."""
    url = make_database()
    with platform_settings(url, redis_db_url(stack_settings, ONLINE_DB)) as current:
        small_world_with_snapshots(current, url)
        feast_repo.apply(current, connections(current))
        yield current


def _dump(url: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(url)
    return {key: client.dump(key) or b"" for key in client.scan_iter(count=1000)}


def test_materializing_twice_gives_an_identical_redis_state(world_settings: Settings) -> None:
    url = world_settings.redis_url or ""
    first = online.materialize(world_settings, connections(world_settings))
    state = _dump(url)
    assert state, "materialization wrote keys"

    # A second incremental run has nothing new to write
    assert online.materialize(world_settings, connections(world_settings)).end is None
    assert _dump(url) == state

    # And writing the same interval again from scratch gives the same bytes
    redis.Redis.from_url(url).flushdb()
    store = feast_repo.open_store(world_settings, connections(world_settings))
    assert first.end is not None
    store.materialize(
        start_date=first.end - timedelta(days=2),
        end_date=first.end,
        feature_views=[catalog_from_settings(world_settings).feature_view_name],
    )
    assert _dump(url) == state


def test_online_reads_equal_the_latest_offline_snapshot(world_settings: Settings) -> None:
    online.materialize(world_settings, connections(world_settings))
    catalog = catalog_from_settings(world_settings)
    with psycopg.connect(world_settings.database_url or "") as conn:
        cur = conn.execute(
            f"SELECT DISTINCT ON (user_id) * FROM features.{catalog.name} ORDER BY user_id, event_timestamp DESC"
        )
        names = [c.name for c in cur.description or []]
        latest = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    latest_time = max(row["event_timestamp"] for row in latest.values())
    current = {u: row for u, row in latest.items() if row["event_timestamp"] == latest_time}
    sample = sorted(current)[:25]

    vectors = online.read_features(
        world_settings, connections(world_settings), [*sample, "nobody"], now=latest_time + timedelta(hours=1)
    )

    for vector in vectors[:-1]:
        expected = current[vector.user_id]
        assert vector.snapshot_at == latest_time.astimezone(UTC)
        assert set(vector.status.values()) == {"present"}
        for name in catalog.names:
            if isinstance(expected[name], float):
                assert vector.values[name] == pytest.approx(expected[name], rel=1e-12), name
            else:
                assert vector.values[name] == expected[name], name
    unknown = vectors[-1]
    assert set(unknown.status.values()) == {"missing"}
    # The same values read a week later are stale by our own age check
    later = online.read_features(
        world_settings, connections(world_settings), sample[:1], now=latest_time + timedelta(days=7)
    )
    assert set(later[0].status.values()) == {"stale"}
    assert isinstance(later[0].snapshot_at, datetime)


def test_clear_online_then_a_full_materialization_restores_the_same_state(world_settings: Settings) -> None:
    url = world_settings.redis_url or ""
    online.materialize(world_settings, connections(world_settings), full=True)
    state = _dump(url)
    assert state

    online.clear_online(world_settings, connections(world_settings))
    assert _dump(url) == {}
    assert (
        online.materialize(world_settings, connections(world_settings)).end is None
    )  # recorded as done: incremental writes nothing
    assert online.materialize(world_settings, connections(world_settings), full=True).end is not None
    assert _dump(url) == state


def test_our_reader_returns_what_get_online_features_returns(world_settings: Settings) -> None:
    online.materialize(world_settings, connections(world_settings))
    store = feast_repo.open_store(world_settings, connections(world_settings))
    catalog = catalog_from_settings(world_settings)
    users = [f"u{i:07d}" for i in range(150)] + ["nobody"]

    latest = online.latest_snapshot_time(world_settings.database_url or "", catalog)
    reader = online.OnlineFeatures(world_settings, connections(world_settings))
    # The second read comes from the decode caches; the world's own calendar decides what is stale.
    first, again = reader.read(users, now=latest), reader.read(users, now=latest)
    expected = store.get_online_features(
        features=store.get_feature_service(catalog.name), entity_rows=[{"user_id": u} for u in users]
    ).to_dict()

    assert reader.feature_names == catalog.names
    for i, (vector, repeated) in enumerate(zip(first, again, strict=True)):
        assert vector == repeated
        assert vector.values == {name: expected[name][i] for name in catalog.names}, vector.user_id
    assert any(set(v.status.values()) == {"present"} for v in first)
    assert set(first[-1].status.values()) == {"missing"} and first[-1].snapshot_at is None


def test_a_replaced_world_replaces_the_online_values(
    make_database: Callable[[], str], stack_settings: Settings
) -> None:
    """A new world on the same calendar: the first materialization of its snapshots must not keep the old values."""
    url = make_database()
    with platform_settings(url, redis_db_url(stack_settings, REPLACED_DB)) as current:
        catalog = catalog_from_settings(current)
        definition = ChurnDefinition("contractual", ("cancel",))
        feast_repo.apply(current, connections(current))
        readings = []
        for seed in (5, 6):
            world.generate_world(url, WorldConfig(users=80, days=40, seed=seed), replace=True)
            snapshots.compute_snapshots(url, catalog, definition, date(2025, 2, 10))
            assert online.materialize(current, connections(current)).end is not None
            latest = online.latest_snapshot_time(url, catalog)
            users = online.sample_of_latest_users(url, catalog, 10)
            with psycopg.connect(url) as conn:
                offline = dict(
                    conn.execute(
                        f"SELECT user_id, tenure_days FROM features.{catalog.name} WHERE event_timestamp = %s",
                        (latest,),
                    ).fetchall()
                )
            vectors = online.OnlineFeatures(current, connections(current)).read(users, now=latest)
            assert [v.values["tenure_days"] for v in vectors] == pytest.approx([offline[u] for u in users])
            readings.append([v.values["tenure_days"] for v in vectors])
        assert readings[0] != readings[1], "the two worlds differ"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "thread"])
def test_the_event_loop_read_equals_the_blocking_read(world_settings: Settings, loop: str) -> None:
    # Given a materialized world, and users with and without features
    online.materialize(world_settings, connections(world_settings))
    catalog = catalog_from_settings(world_settings)
    latest = online.latest_snapshot_time(world_settings.database_url or "", catalog)
    users = [f"u{i:07d}" for i in range(150)] + ["nobody"]
    reader = online.OnlineFeatures(world_settings, connections(world_settings))
    assert reader._async_reader is not None, "a plain Redis URL is read on the event loop, not on a thread"
    if loop == "thread":
        reader._async_reader = None  # as for a store it cannot open itself (TLS, Sentinel, a cluster)

    # When the service's path reads them on an event loop, twice (the second on a pooled connection)
    async def read_twice() -> list[list[FeatureVector]]:
        batches = [await reader.read_batch_async(users, now=latest) for _ in range(2)]
        return [batch.vectors() for batch in batches]

    first, again = uvloop.run(read_twice()) if loop == "uvloop" else asyncio.run(read_twice())

    # Then it gives what the blocking read gives
    assert first == again == reader.read(users, now=latest)
    assert set(first[-1].status.values()) == {"missing"}
