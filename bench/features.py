"""Feature-store figures, each next to its peer measured in the same run.

For each world size:
- snapshot computation time;
- training-set retrieval for 8 labelled snapshots per user: through Feast with our offline store, against a
  hand-written LATERAL point-in-time query over the same tables fetched into a DataFrame (the target: within
  1.5x), and against Feast's stock PostgreSQL offline store;
- materialization rows/s (rows = users written to Redis): our engine against raw pipelined HSETs of the same
  hashes and against Feast's stock local engine (target: at least 50,000 rows/s);
- online read latency p50/p99 for 1 and 100 users: our read function and plain `get_online_features`, each
  against a raw pipelined HGETALL of the same keys (target for 100 users: within 2x of raw).
Times are medians over repeated runs.

    uv run python -m bench.features [--users 1000 100000] [--days 90] [--reads 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import numpy as np
import pandas as pd
import psycopg
import redis

from bench._databases import fresh_database
from churn_platform import stack
from churn_platform.connections import Connections
from churn_platform.data.labels import ChurnDefinition
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import feast_repo, online, snapshots, training_sets
from churn_platform.features.catalog import Catalog, catalog_from_settings
from churn_platform.settings import Settings, get_settings

ONLINE_DB = 10  # flushed by this benchmark
SNAPSHOTS_PER_USER = 8

# The peer a SQL-literate user would write: for each label row, the latest snapshot at or before it within the
# feature view's TTL (Feast's point-in-time rule), fetched into a DataFrame.
HAND_WRITTEN_PIT_SQL = """
SELECT l.user_id, l.event_timestamp, l.churned, s.*
FROM {labels} l
LEFT JOIN LATERAL (
    SELECT {columns} FROM features.{table} f
    WHERE f.user_id = l.user_id AND f.event_timestamp <= l.event_timestamp
      AND f.event_timestamp > l.event_timestamp - %(ttl)s
    ORDER BY f.event_timestamp DESC LIMIT 1
) s ON true
WHERE l.horizon_days = %(horizon)s
"""
KEEP_EIGHT_LABELS_SQL = """
DELETE FROM {labels} l USING (
    SELECT user_id, event_timestamp,
           row_number() OVER (PARTITION BY user_id ORDER BY md5(user_id || event_timestamp::text)) AS pick
    FROM {labels}
) r
WHERE r.user_id = l.user_id AND r.event_timestamp = l.event_timestamp AND r.pick > %(keep)s
"""
LATEST_USERS_SQL = "SELECT user_id FROM features.{table} WHERE event_timestamp = %s ORDER BY user_id"


def percentile(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.array(samples), q))


def timed(repeats: int, action: Callable[[], object], before: Callable[[], object] | None = None) -> list[float]:
    """Wall times of `repeats` runs of `action`, each after an untimed `before`."""
    samples = []
    for _ in range(repeats):
        if before is not None:
            before()
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def timed_each(inputs: Sequence[Any], action: Callable[[Any], object]) -> list[float]:
    samples = []
    for item in inputs:
        started = time.perf_counter()
        action(item)
        samples.append(time.perf_counter() - started)
    return samples


def ratio_line(name: str, seconds: float, peer: str, peer_seconds: float, target: str = "") -> str:
    return f"    {name:<44} {seconds:8.2f} s  = {seconds / peer_seconds:5.2f}x {peer}{target}"


def latency_line(name: str, samples: list[float], raw: list[float] | None = None, target: str = "") -> str:
    p50, p99 = percentile(samples, 50) * 1e3, percentile(samples, 99) * 1e3
    line = f"    {name:<44} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms"
    if raw:
        line += f"  = {p50 / (percentile(raw, 50) * 1e3):5.2f}x raw at p50{target}"
    return line


def hand_written_training_set(url: str, catalog: Catalog, settings: Settings, ttl: timedelta) -> pd.DataFrame:
    columns = ", ".join(f"f.{name}" for name in catalog.names)
    query = HAND_WRITTEN_PIT_SQL.format(table=catalog.name, labels=catalog.labels_table, columns=columns)
    with psycopg.connect(url) as conn:
        cur = conn.execute(query, {"horizon": settings.label_horizon_days, "ttl": ttl})
        names = [c.name for c in cur.description or []]
        return pd.DataFrame(cur.fetchall(), columns=names)


def bench_training_set(url: str, settings: Settings, catalog: Catalog, repeats: int) -> None:
    connections = stack.connect(settings, redis=True)
    store = feast_repo.open_store(settings, connections)
    ttl = store.get_feature_view(catalog.feature_view_name).ttl
    ours = statistics.median(timed(repeats, lambda: training_sets.training_set(settings, connections)))
    peer = statistics.median(timed(repeats, lambda: hand_written_training_set(url, catalog, settings, ttl)))
    stock = statistics.median(
        timed(
            repeats,
            lambda: training_sets.training_set(
                settings, connections, store=feast_repo.open_stock_store(settings, connections)
            ),
        )
    )
    rows = len(training_sets.training_set(settings, connections).frame)
    print(f"  training set, {rows:,} labelled rows ({SNAPSHOTS_PER_USER} per user):")
    print(ratio_line("hand-written LATERAL query", peer, "hand-written", peer))
    print(ratio_line("Feast, our offline store", ours, "hand-written", peer, " (target 1.5x)"))
    print(ratio_line("Feast, stock PostgreSQL offline store", stock, "hand-written", peer))


def stored_hashes(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    keys = list(client.scan_iter(count=10_000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return dict(zip(keys, pipe.execute(), strict=True))


def raw_write(client: redis.Redis, hashes: dict[bytes, dict[bytes, bytes]], chunk: int = 5_000) -> None:
    items = list(hashes.items())
    for begin in range(0, len(items), chunk):
        pipe = client.pipeline(transaction=False)
        for key, mapping in items[begin : begin + chunk]:
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.execute()


def bench_materialization(settings: Settings, catalog: Catalog, client: redis.Redis, repeats: int) -> datetime:
    """Materialize the TTL window before the latest snapshot into an empty Redis (a first run); return its end."""
    latest = online.latest_snapshot_time(settings.database_url or "", catalog)
    assert latest is not None
    view_name = catalog.feature_view_name
    connections = stack.connect(settings, redis=True)
    store, stock_store = (
        feast_repo.open_store(settings, connections),
        feast_repo.open_stock_store(settings, connections),
    )
    end = latest + timedelta(microseconds=1)
    start = end - store.get_feature_view(view_name).ttl

    def materialize(with_store: Any) -> Callable[[], None]:
        return lambda: with_store.materialize(start_date=start, end_date=end, feature_views=[view_name])

    ours = statistics.median(timed(repeats, materialize(store), before=client.flushdb))
    rows = int(cast(int, client.dbsize()))
    hashes = stored_hashes(client)
    raw = statistics.median(timed(repeats, lambda: raw_write(client, hashes), before=client.flushdb))
    stock = statistics.median(timed(repeats, materialize(stock_store), before=client.flushdb))
    assert stored_hashes(client) == hashes, "the stock engine and ours wrote different Redis states"
    print(f"  materialization of {rows:,} users (the TTL window before the latest snapshot, into an empty Redis):")
    print(f"    {'raw pipelined HSET of the same hashes':<44} {rows / raw:10,.0f} rows/s")
    print(f"    {'our engine':<44} {rows / ours:10,.0f} rows/s = {raw / ours:4.2f}x raw (target 50,000 rows/s)")
    print(f"    {'stock Feast local engine':<44} {rows / stock:10,.0f} rows/s = {raw / stock:4.2f}x raw")
    return latest


def bench_online_reads(settings: Settings, catalog: Catalog, client: redis.Redis, latest: datetime, reads: int) -> None:
    with psycopg.connect(settings.database_url or "") as conn:
        current = [r[0] for r in conn.execute(LATEST_USERS_SQL.format(table=catalog.name), (latest,)).fetchall()]
    connections = stack.connect(settings, redis=True)
    store = feast_repo.open_store(settings, connections)
    service = store.get_feature_service(catalog.name)
    reader = online.OnlineFeatures(settings, connections)
    rng = np.random.default_rng(1)
    for batch in (1, 100):
        samples = [[str(u) for u in rng.choice(current, batch, replace=False)] for _ in range(reads)]
        keys = [[reader.redis_key(u) for u in users] for users in samples]

        def raw_read(batch_keys: list[bytes]) -> None:
            pipe = client.pipeline(transaction=False)
            for key in batch_keys:
                pipe.hgetall(key)  # type: ignore[arg-type]  # redis-py accepts bytes keys
            pipe.execute()

        def plain(users: list[str]) -> None:
            store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in users])

        raw = timed_each(keys, raw_read)
        ours = timed_each(samples, lambda users: reader.read(users, now=latest))
        stock = timed_each(samples, plain)
        target = " (target 2x)" if batch == 100 else ""
        print(f"  online read, {batch} user(s), {reads} reads of users in the latest snapshot:")
        print(latency_line("raw pipelined HGETALL of the same keys", raw))
        print(latency_line("our read function (OnlineFeatures.read)", ours, raw, target))
        print(latency_line("plain FeatureStore.get_online_features", stock, raw))


def run(servers: Connections, users: int, days: int, reads: int, repeats: int) -> None:
    print(f"\n{users:,} users x {days} days")
    with fresh_database(servers.database_url) as url:
        redis_url = servers.redis.rsplit("/", 1)[0] + f"/{ONLINE_DB}"
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        os.environ.update(CHURN_DATABASE_URL=url, CHURN_REDIS_URL=redis_url)
        get_settings.cache_clear()
        settings = get_settings()
        catalog = catalog_from_settings(settings)
        definition = ChurnDefinition.from_settings(settings)
        world.generate_world(url, WorldConfig(users=users, days=days))
        until = snapshots.day_after_last_event(url)
        assert until is not None

        started = time.perf_counter()
        run_ = snapshots.compute_snapshots(url, catalog, definition, until)
        print(f"  snapshot computation: {run_.rows_written:,} rows in {time.perf_counter() - started:.1f} s")
        snapshots.compute_labels(url, catalog, definition, settings.label_horizon_days)
        with psycopg.connect(url) as conn:
            conn.execute(KEEP_EIGHT_LABELS_SQL.format(labels=catalog.labels_table), {"keep": SNAPSHOTS_PER_USER})
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"VACUUM ANALYZE {catalog.labels_table}")  # fresh statistics for both plans
        feast_repo.apply(settings, stack.connect(settings, redis=True))

        bench_training_set(url, settings, catalog, repeats)
        latest = bench_materialization(settings, catalog, client, repeats)
        bench_online_reads(settings, catalog, client, latest, reads)
        client.flushdb()
    get_settings.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # Embedded PostgreSQL and Redis it had to start are stopped at the end.
    with stack.running(Settings(), redis=True) as servers:
        for users in args.users:
            run(servers, users, args.days, args.reads, args.repeats)


if __name__ == "__main__":
    main()
