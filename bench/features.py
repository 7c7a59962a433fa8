"""Feature-store figures, each next to its peer measured in the same run.

For each world size: snapshot computation time; training-set retrieval through Feast for 8 snapshots per user
against a hand-written DISTINCT ON point-in-time query over the same tables; materialization rows/s; online read
latency p50/p99 for 1 and 100 users through our read function and through plain `get_online_features`, against
a raw pipelined HGETALL of the same Redis keys.

    uv run python -m bench.features [--users 1000 100000] [--days 90] [--reads 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import psycopg
import redis

from bench._databases import fresh_database
from churn_platform import local_stack
from churn_platform.data import world
from churn_platform.data.labels import ChurnDefinition
from churn_platform.data.world_model import WorldConfig
from churn_platform.features import feast_repo, online, snapshots, training
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import Settings, get_settings

ONLINE_DB = 10  # flushed by this benchmark
SNAPSHOTS_PER_USER = 8

# The peer a SQL-literate user would write: for each label row, the latest snapshot at or before it.
HAND_WRITTEN_PIT_SQL = """
SELECT l.user_id, l.event_timestamp, l.churned, s.*
FROM features.churn_labels l
JOIN LATERAL (
    SELECT * FROM features.{table} f
    WHERE f.user_id = l.user_id AND f.event_timestamp <= l.event_timestamp
    ORDER BY f.event_timestamp DESC LIMIT 1
) s ON true
WHERE l.horizon_days = %(horizon)s
"""
KEEP_EIGHT_LABELS_SQL = """
DELETE FROM features.churn_labels l USING (
    SELECT user_id, event_timestamp,
           row_number() OVER (PARTITION BY user_id ORDER BY md5(user_id || event_timestamp::text)) AS pick
    FROM features.churn_labels
) r
WHERE r.user_id = l.user_id AND r.event_timestamp = l.event_timestamp AND r.pick > %(keep)s
"""


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples), q))


def timed(repeats: int, action: Callable[[], object]) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def timed_each(inputs: list[list[Any]], action: Callable[[list[Any]], object]) -> list[float]:
    samples = []
    for item in inputs:
        started = time.perf_counter()
        action(item)
        samples.append(time.perf_counter() - started)
    return samples


def raw_read(client: redis.Redis, keys: list[Any]) -> None:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    pipe.execute()


def latency_line(name: str, samples: list[float], peer: list[float] | None = None) -> str:
    p50, p99 = percentile(samples, 50) * 1e3, percentile(samples, 99) * 1e3
    line = f"  {name:<52} p50 {p50:8.2f} ms  p99 {p99:8.2f} ms"
    if peer:
        line += f"  ({p50 / (percentile(peer, 50) * 1e3):.1f}x the raw read at p50)"
    return line


def run(users: int, days: int, reads: int) -> None:
    print(f"\n{users:,} users x {days} days")
    with fresh_database() as url:
        server_redis = local_stack.redis_url(Settings())
        redis_url = server_redis.rsplit("/", 1)[0] + f"/{ONLINE_DB}"
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
            conn.execute(KEEP_EIGHT_LABELS_SQL, {"keep": SNAPSHOTS_PER_USER})
        feast_repo.apply(settings)

        feast_s = statistics.median(timed(3, lambda: training.training_set(settings)))
        rows = len(training.training_set(settings).frame)

        def hand_written() -> None:
            with psycopg.connect(url) as conn:
                conn.execute(
                    HAND_WRITTEN_PIT_SQL.format(table=catalog.name), {"horizon": settings.label_horizon_days}
                ).fetchall()

        peer_s = statistics.median(timed(3, hand_written))
        print(f"  training set ({rows:,} rows): Feast {feast_s:.2f} s, hand-written PIT query {peer_s:.2f} s:"
              f" {feast_s / peer_s:.1f}x (target 1.5x)")  # fmt: skip

        # Materialization of a whole week of snapshots, from scratch.
        store = feast_repo.open_store(settings)
        latest = online.latest_snapshot_time(url, catalog)
        assert latest is not None
        start, end = latest - timedelta(days=7), latest + timedelta(microseconds=1)
        with psycopg.connect(url) as conn:
            count = conn.execute(
                f"SELECT count(*) FROM features.{catalog.name} WHERE event_timestamp > %s AND event_timestamp < %s",
                (start, end),
            ).fetchone()
        started = time.perf_counter()
        store.materialize(start_date=start, end_date=end, feature_views=[online.feature_view_name(catalog)])
        seconds = time.perf_counter() - started
        materialized = int(count[0]) if count else 0
        print(f"  materialization: {materialized:,} rows in {seconds:.1f} s = {materialized / seconds:,.0f} rows/s"
              " (target 50,000 rows/s)")  # fmt: skip

        ids = [f"u{i:07d}" for i in range(min(users, 5_000))]
        rng = np.random.default_rng(1)
        keys = list(client.scan_iter(count=1000))[:100]
        service = store.get_feature_service(catalog.name)
        reader = online.OnlineFeatures(settings)
        for batch in (1, 100):
            sample = [[str(u) for u in rng.choice(ids, batch)] for _ in range(reads)]
            ours = timed_each(sample, lambda users: reader.read(users, now=latest))
            plain = timed_each(
                sample,
                lambda users: store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in users]),
            )
            raw_reads = timed_each([keys[:batch]] * reads, lambda batch_keys: raw_read(client, batch_keys))
            print(f"  online read, {batch} user(s):")
            print(latency_line("our read function", ours, raw_reads))
            print(latency_line("plain FeatureStore.get_online_features", plain, raw_reads))
            print(latency_line("raw pipelined HGETALL of the same number of keys", raw_reads))
        client.flushdb()
    get_settings.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    for users in args.users:
        run(users, args.days, args.reads)


if __name__ == "__main__":
    main()
