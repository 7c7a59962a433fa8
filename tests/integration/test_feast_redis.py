"""Our materialization engine leaves Redis byte for byte as Feast's stock local engine does, run for run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
import yaml
from feast import FeatureStore, FeatureView, Field
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.protos.feast.types.Value_pb2 import Value
from feast.repo_config import RepoConfig
from feast.types import Float32, String
from tests.integration.feature_worlds import connections, platform_settings, redis_db_url, small_world_with_snapshots

from churn_platform.features import feast_repo, online
from churn_platform.features.catalog import Catalog, catalog_from_settings
from churn_platform.features.feast_redis import ENGINE_TYPE, ChurnRedisMaterializationEngine
from churn_platform.settings import Settings

ONLINE_DB = 11  # a Redis database of its own: flushed by these tests
# Values the conversions disagree on most easily, per feature type: nulls, empty strings, signed zeros, NaN
# (Feast writes it as a null), infinities, negative and large integers, non-ASCII text.
EDGE_TEXT = [None, "", "ünïcødé ✓", None, "", "x"]
EDGE_INT = [None, -5, 2_147_483_647, 0, None, 1]
EDGE_FLOAT = [None, "NaN", "-0", "Infinity", "0", "1e-300"]


def _column(catalog: Catalog, dtype: str) -> str:
    return next(f.name for f in catalog.features if f.dtype == dtype)


def _edge_users(settings: Settings) -> list[str]:
    """The first users with a snapshot at the latest time and two days before: those get the edge values."""
    catalog = catalog_from_settings(settings)
    latest = online.latest_snapshot_time(settings.database_url or "", catalog)
    assert latest is not None
    with psycopg.connect(settings.database_url or "") as conn:
        rows = conn.execute(
            f"SELECT user_id FROM features.{catalog.name} WHERE event_timestamp IN (%s, %s)"
            " GROUP BY user_id HAVING count(*) = 2 ORDER BY user_id LIMIT %s",
            (latest, latest - timedelta(days=2), len(EDGE_TEXT)),
        ).fetchall()
    assert len(rows) == len(EDGE_TEXT)
    return [user for (user,) in rows]


def _write_edge_values(settings: Settings) -> None:
    catalog = catalog_from_settings(settings)
    latest = online.latest_snapshot_time(settings.database_url or "", catalog)
    assert latest is not None
    text, integer, real = _column(catalog, "text"), _column(catalog, "int"), _column(catalog, "float")
    statement = (
        f"UPDATE features.{catalog.name} SET {text} = %s, {integer} = %s, {real} = %s::double precision"
        " WHERE user_id = %s AND event_timestamp IN (%s, %s)"
    )
    with psycopg.connect(settings.database_url or "") as conn:
        for user, *values in zip(_edge_users(settings), EDGE_TEXT, EDGE_INT, EDGE_FLOAT, strict=True):
            assert conn.execute(statement, (*values, user, latest, latest - timedelta(days=2))).rowcount == 2


@pytest.fixture(scope="module")
def world_settings(make_database: Callable[[], str], stack_settings: Settings) -> Iterator[Settings]:
    """A small world with snapshots (edge values in two of them), the Feast repo applied, an empty Redis db."""
    url = make_database()
    with platform_settings(url, redis_db_url(stack_settings, ONLINE_DB)) as current:
        small_world_with_snapshots(current, url)
        _write_edge_values(current)
        feast_repo.apply(current, connections(current))
        yield current


def _store(settings: Settings, batch_engine: Any, **online_store: Any) -> Any:
    """The repo's store with another batch engine (or online-store options); "local" gets Feast's stock stores."""
    feast_repo.configure(connections(settings))
    repo = settings.feature_repo.resolve()
    raw = yaml.safe_load(os.path.expandvars((repo / "feature_store.yaml").read_text()))
    if batch_engine == "local":
        raw["offline_store"]["type"] = "postgres"  # Feast's own offline store too: the whole stock path
    raw["batch_engine"] = batch_engine
    raw["online_store"].update(online_store)
    config = RepoConfig(**raw)
    config.repo_path = repo
    return FeatureStore(config=config)


def _client(settings: Settings) -> Any:
    """A client of the test's Redis db (Any: redis-py types every reply as maybe awaitable)."""
    return redis.Redis.from_url(settings.redis_url or "")


def _dump(client: Any) -> dict[bytes, bytes]:
    return {key: client.dump(key) for key in client.scan_iter(count=1000)}


def _intervals(settings: Settings) -> list[tuple[datetime, datetime]]:
    latest = online.latest_snapshot_time(settings.database_url or "", catalog_from_settings(settings))
    assert latest is not None
    day = timedelta(days=1)
    return [
        (latest - 400 * day, latest - 399 * day),  # no snapshots at all
        (latest - 3 * day, latest - 2 * day),  # an older interval
        (latest - day, latest),  # then the newest snapshots
        (latest - day, latest),  # the same interval again: nothing newer
        (latest - 7 * day, latest - 4 * day),  # an older interval after a newer one: never overwrites
    ]


def _materialize_each(store: Any, settings: Settings, client: Any) -> tuple[list[dict[bytes, bytes]], list[Any]]:
    """Redis after each materialization of `_intervals` from an empty database, and our engine's report of each."""
    client.flushdb()
    view = catalog_from_settings(settings).feature_view_name
    states, runs = [], []
    for start, end in _intervals(settings):
        store.materialize(start_date=start, end_date=end, feature_views=[view])
        states.append(_dump(client))
        runs.append(getattr(store._get_provider().batch_engine, "last_run", None))
    return states, runs


@pytest.mark.parametrize("chunk_rows", [None, 7], ids=["repo-config", "7-row-chunks"])
def test_redis_holds_the_same_bytes_as_after_feasts_local_engine(
    world_settings: Settings, chunk_rows: int | None
) -> None:
    # Given the same snapshots materialized interval by interval with Feast's stock engine and with ours
    client = _client(world_settings)
    expected, _ = _materialize_each(_store(world_settings, "local"), world_settings, client)
    ours = (
        feast_repo.open_store(world_settings, connections(world_settings))
        if chunk_rows is None
        else _store(world_settings, {"type": ENGINE_TYPE, "chunk_rows": chunk_rows})
    )
    engine = ours._get_provider().batch_engine
    assert isinstance(engine, ChurnRedisMaterializationEngine)

    states, runs = _materialize_each(ours, world_settings, client)

    # Then every key, field and value is the same after every run
    for step, (state, reference) in enumerate(zip(states, expected, strict=True)):
        assert state.keys() == reference.keys(), step
        assert state == reference, step
    # And the runs behaved as the stock store's timestamp check says: the newest rows replaced the older ones,
    # the same interval again and an older interval changed nothing already stored
    nothing, older, newest, again, oldest = states
    assert nothing == {} and runs[0].rows_pulled == 0
    assert any(newest[key] != value for key, value in older.items())
    assert runs[2].rows_written == runs[2].rows_pulled > 0
    assert again == newest and runs[3].rows_written == 0
    assert {key: oldest[key] for key in newest} == newest
    # And the edge values are there to compare
    values = {value for key in newest for value in client.hvals(key)}
    for proto in (Value(), Value(string_val=""), Value(int64_val=-5), Value(double_val=-0.0)):
        assert proto.SerializeToString() in values


def test_feast_reads_back_what_the_engine_wrote_including_nulls(world_settings: Settings) -> None:
    client = _client(world_settings)
    store = feast_repo.open_store(world_settings, connections(world_settings))
    catalog = catalog_from_settings(world_settings)
    view = catalog.feature_view_name
    start, end = _intervals(world_settings)[2]  # the newest snapshots
    client.flushdb()
    store.materialize(start_date=start, end_date=end, feature_views=[view])

    names = [_column(catalog, "text"), _column(catalog, "int"), _column(catalog, "float")]
    read = store.get_online_features(
        features=[f"{view}:{name}" for name in names], entity_rows=[{"user_id": u} for u in _edge_users(world_settings)]
    ).to_dict()

    assert read[names[0]] == EDGE_TEXT
    assert read[names[1]] == EDGE_INT
    assert [str(v) for v in read[names[2]]] == ["None", "None", "-0.0", "inf", "0.0", "1e-300"]


def test_a_view_it_does_not_support_goes_to_feasts_local_engine(world_settings: Settings) -> None:
    # Given a view with a Float32 feature, which this engine leaves to Feast's local engine
    client = _client(world_settings)
    ours = feast_repo.open_store(world_settings, connections(world_settings))
    engine = ours._get_provider().batch_engine
    stored = ours.get_feature_view(catalog_from_settings(world_settings).feature_view_name)
    view = FeatureView(
        name=stored.name,
        entities=[ours.get_entity("user")],
        ttl=stored.ttl,
        schema=[Field(name="user_id", dtype=String), Field(name="tenure_days", dtype=Float32)],
        source=stored.batch_source,
    )
    start, end = _intervals(world_settings)[2]  # the newest snapshots

    def materialize(store: Any) -> dict[bytes, bytes]:
        client.flushdb()
        task = MaterializationTask(project=store.project, feature_view=view, start_time=start, end_time=end)
        [job] = store._get_provider().batch_engine.materialize(store.registry, task)
        assert job.status() == MaterializationJobStatus.SUCCEEDED, job.error()
        return _dump(client)

    task = MaterializationTask(project=ours.project, feature_view=view, start_time=start, end_time=end)
    assert "Int64, Float64, String" in (engine.unsupported(task) or "")
    before = engine.last_run

    # When our engine materializes it, then Redis holds what the stock engine writes, and our path did not run
    assert materialize(ours) == materialize(_store(world_settings, "local"))
    assert engine.last_run is before


@pytest.mark.parametrize(
    "options", [{"key_ttl_seconds": 3600}, {"key_ttl_seconds": 3600, "skip_dedup": True}], ids=["ttl", "ttl-no-dedup"]
)
def test_the_online_store_options_act_as_in_the_stock_store(world_settings: Settings, options: dict[str, Any]) -> None:
    # Given the newest snapshots then older ones, materialized with each engine under the same online-store options
    client = _client(world_settings)
    view = catalog_from_settings(world_settings).feature_view_name
    intervals = [_intervals(world_settings)[i] for i in (2, 4)]
    states = []
    for engine in ("local", {"type": ENGINE_TYPE, "chunk_rows": 50}):
        client.flushdb()
        store = _store(world_settings, engine, **options)
        newest: dict[bytes, bytes] = {}
        for start, end in intervals:
            store.materialize(start_date=start, end_date=end, feature_views=[view])
            newest = newest or _dump(client)
        # Then every key expires in an hour, and the same bytes are stored; without the timestamp check the older
        # rows replaced the newer ones
        ttls = {client.ttl(key) for key in client.scan_iter(count=1000)}
        assert ttls and all(3500 < t <= 3600 for t in ttls)
        states.append(_dump(client))
        kept = {key: states[-1][key] for key in newest} == newest
        assert kept != options.get("skip_dedup", False)
    assert states[0] == states[1]
