"""Our offline store returns exactly what Feast's stock PostgreSQL offline store returns, frame for frame.

Both stores read the same tables through the same registry; `feature_store.yaml` configures ours, and the stock
one is the same repository with `type: postgres`. Every comparison checks the Arrow schema, then the frames
(values and dtypes) with the rows in one canonical order: neither store promises an order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
from feast import Entity, FeatureStore, FeatureView, Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLOfflineStore
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.repo_config import load_repo_config
from feast.types import Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp
from feast.value_type import ValueType
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.integration.feature_worlds import connections

from churn_platform import stack
from churn_platform.features import feast_repo, snapshots
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.feast_postgres import ChurnPostgreSQLOfflineStore, CopyRetrievalJob
from churn_platform.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
ENVIRONMENT = {
    "CHURN_FEATURE_EVENT_TYPES": "login,purchase",
    "CHURN_FEATURE_VALUED_EVENT_TYPES": "purchase",
    "CHURN_FEATURE_WINDOWS_DAYS": "3,7",
    "CHURN_FEATURE_CATALOG": "churn_pg",
    "CHURN_FEATURE_REPO": str(REPO / "feature_repo"),
}
T0 = datetime(2025, 3, 1, tzinfo=UTC)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)

ENTITY_TABLE = """
CREATE TABLE features.pg_entities (
    user_id text, event_timestamp timestamptz, churned boolean, weight double precision, n integer)"""
ENTITY_SQL = "SELECT user_id, event_timestamp, churned, weight, n FROM features.pg_entities"
# Feature rows without a key: ties on the event timestamp, and on the created timestamp, are allowed.
TIES_TABLE = """
CREATE TABLE features.pg_ties (
    user_id text, event_timestamp timestamptz, created timestamptz, score double precision, level integer,
    big bigint, ratio real, flag boolean, label text, seen timestamptz)"""
TIES_COLUMNS = ("user_id", "event_timestamp", "created", "score", "level", "big", "ratio", "flag", "label", "seen")

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
# Latest row per event timestamp by created timestamp, within 6 hours: every type the store parses.
ties_created = FeatureView(
    name="pg_ties_created",
    entities=[user],
    ttl=timedelta(hours=6),
    schema=[
        Field(name="score", dtype=Float64),
        Field(name="level", dtype=Int32),
        Field(name="big", dtype=Int64),
        Field(name="ratio", dtype=Float32),
        Field(name="flag", dtype=Bool),
        Field(name="label", dtype=String),
        Field(name="seen", dtype=UnixTimestamp),
    ],
    source=PostgreSQLSource(
        name="pg_ties_created_source",
        query="SELECT * FROM features.pg_ties",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    ),
)
# No TTL, no created timestamp (ties on the event timestamp fan out), and renamed columns, join key included.
ties_mapped = FeatureView(
    name="pg_ties_mapped",
    entities=[user],
    ttl=None,
    schema=[Field(name="points", dtype=Float64), Field(name="tier", dtype=Int32)],
    source=PostgreSQLSource(
        name="pg_ties_mapped_source",
        query="SELECT user_id AS account, event_timestamp AS at, score, level FROM features.pg_ties",
        timestamp_field="at",
        field_mapping={"account": "user_id", "score": "points", "level": "tier"},
    ),
)


@pytest.fixture(scope="module")
def feast_settings(make_database: Callable[[], str], stack_settings: Settings) -> Iterator[Settings]:
    """A fresh database with the repo applied, plus the tie views, an entity table and a tie table."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENVIRONMENT.items():
            patch.setenv(name, value)
        url = make_database()
        patch.setenv("CHURN_DATABASE_URL", url)
        patch.setenv("CHURN_REDIS_URL", stack.redis_url(stack_settings))
        get_settings.cache_clear()
        current = get_settings()
        with psycopg.connect(url) as conn:
            conn.execute(snapshots.create_table_sql(catalog_from_settings(current)))
            conn.execute(ENTITY_TABLE)
            conn.execute(TIES_TABLE)
        feast_repo.apply(current, connections(current))
        feast_repo.open_store(current, connections(current)).apply([user, ties_created, ties_mapped])
        yield current
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def stock_store(feast_settings: Settings) -> FeatureStore:
    """The same repository, registry and servers, with Feast's stock PostgreSQL offline store."""
    feast_repo.configure(connections(feast_settings))
    repo = feast_settings.feature_repo.resolve()
    config = load_repo_config(repo, repo / "feature_store.yaml")
    config.offline_config = {**config.offline_config, "type": "postgres"}
    return FeatureStore(config=config)


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns), kind="stable", na_position="last").reset_index(drop=True)


def assert_same_result(ours: Any, stock: Any) -> pd.DataFrame:
    """Same Arrow schema, same rows and dtypes; returns our frame in canonical order."""
    got, want = ours.to_arrow(), stock.to_arrow()
    assert got.schema == want.schema
    frame = canonical(got.to_pandas())
    pd.testing.assert_frame_equal(frame, canonical(want.to_pandas()), check_exact=True)
    return frame


def replace_rows(url: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(f"TRUNCATE {table}")
        placeholders = ", ".join(["%s"] * len(columns))
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows)


def entity_frame(rows: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
    """The entity rows as a DataFrame, with the columns and types the entity table has (n as int32)."""
    frame = pd.DataFrame(rows, columns=["user_id", "event_timestamp", "churned", "weight", "n"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame["weight"] = frame["weight"].astype("float64")
    frame["n"] = frame["n"].astype("int32")
    return frame


def snapshot_row(user_id: str, at: datetime, i: int, names: Sequence[str], dtypes: Mapping[str, str]) -> list[Any]:
    """A snapshot whose features say which row it is (user b's are all NULL)."""
    values: list[Any] = [user_id, at]
    for name in names:
        kind = dtypes[name]
        values.append(None if user_id == "b" else i if kind == "int" else i + 0.25 if kind == "float" else f"p{i}")
    return values


# Snapshots of the repo's view (TTL 2 days): a user with daily rows, one with a single row of NULLs, one later.
SNAPSHOTS = [("a", T0), ("a", T0 + DAY), ("a", T0 + 2 * DAY), ("b", T0), ("c", T0 + 5 * DAY)]
ENTITY_ROWS = [
    ("a", T0, True, 1.5, 1),  # exactly at a snapshot
    ("a", T0 + DAY + 12 * HOUR, False, None, 2),  # between snapshots
    ("a", T0 + 4 * DAY, True, 2.0, 3),  # the latest snapshot is exactly the TTL old: Feast still joins it
    ("a", T0 + 4 * DAY + timedelta(microseconds=1), True, 2.0, 4),  # one microsecond older: nothing
    ("b", T0 + 2 * DAY, False, 0.0, 5),  # at the TTL boundary of a row of NULLs
    ("b", T0 - HOUR, False, 0.5, 6),  # before any snapshot
    ("zz", T0 + DAY, True, -1.0, 7),  # unknown user
    ("a", T0 + DAY + 12 * HOUR, False, None, 2),  # a duplicate entity row stays
    ("c", T0 + 5 * DAY, True, 3.25, 9),
]


@pytest.mark.filterwarnings("ignore:pandas only supports SQLAlchemy")
@pytest.mark.parametrize("full_feature_names", [False, True])
@pytest.mark.parametrize("entity_kind", ["sql", "frame"])
def test_training_rows_equal_the_stock_store(
    feast_settings: Settings, stock_store: FeatureStore, entity_kind: str, full_feature_names: bool
) -> None:
    # Given snapshots with TTL boundaries, NULL features, unknown users and duplicate entity rows
    url = feast_settings.database_url or ""
    catalog = catalog_from_settings(feast_settings)
    dtypes = {f.name: f.dtype for f in catalog.features}
    rows = [snapshot_row(u, at, i, catalog.names, dtypes) for i, (u, at) in enumerate(SNAPSHOTS)]
    replace_rows(url, f"features.{catalog.name}", ["user_id", "event_timestamp", *catalog.names], rows)
    replace_rows(url, "features.pg_entities", ["user_id", "event_timestamp", "churned", "weight", "n"], ENTITY_ROWS)
    entity_df: str | pd.DataFrame = ENTITY_SQL if entity_kind == "sql" else entity_frame(ENTITY_ROWS)
    store, stock = feast_repo.open_store(feast_settings, connections(feast_settings)), stock_store

    # When the repo's feature service is read through our store and through the stock one
    ours = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(catalog.name), full_feature_names=full_feature_names
    )
    theirs = stock.get_historical_features(
        entity_df=entity_df, features=stock.get_feature_service(catalog.name), full_feature_names=full_feature_names
    )

    # Then ours took the COPY / LATERAL path and returned the stock frame exactly, dtypes included
    assert isinstance(ours, CopyRetrievalJob)
    frame = assert_same_result(ours, theirs)
    # And the frame says what Feast means: the row exactly a TTL old joins, one microsecond older does not
    plan = f"{catalog.name}_user_features__plan" if full_feature_names else "plan"
    by_n = frame.set_index("n")[plan]
    assert by_n[3] == "p2" and by_n[1] == "p0" and by_n[9] == "p4"
    assert by_n[[4, 6, 7]].isna().all()
    assert len(frame) == len(ENTITY_ROWS) and frame["n"].dtype == np.int32
    assert ours.metadata is not None and theirs.metadata is not None
    assert ours.metadata.min_event_timestamp == theirs.metadata.min_event_timestamp
    assert ours.metadata.max_event_timestamp == theirs.metadata.max_event_timestamp


users = st.sampled_from(["a", "b", "c"])
hours = st.integers(0, 8).map(lambda h: T0 + h * HOUR)  # a coarse grid: ties, and rows exactly 6 hours old
texts = st.one_of(
    st.none(),
    st.sampled_from(["", ",", '"', "a\nb", "x\r\ny", "\\.", "NULL", "é ü"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=4),
)
tie_rows = st.lists(
    st.tuples(
        users,
        hours,
        st.one_of(st.none(), st.integers(0, 3).map(lambda h: T0 + h * HOUR)),
        st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
        st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
        st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        st.one_of(st.none(), st.floats(width=32)),
        st.one_of(st.none(), st.booleans()),
        texts,
        st.one_of(st.none(), st.integers(0, 10**6).map(lambda us: T0 + timedelta(microseconds=us * 997))),
    ),
    max_size=25,
)
entity_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 14 * 2).map(lambda half_hours: T0 + half_hours * HOUR / 2),
        st.booleans(),
        st.one_of(st.none(), st.floats(-10, 10)),
        st.integers(-5, 5),
    ),
    min_size=1,
    max_size=12,
)


# Three rows tie at T0 and two of them on the greatest created timestamp too (both are kept); a row without a
# created timestamp never counts for the view that has one; user b's row is exactly the TTL old.
TIED = [
    ("a", T0, T0, 1.0, 1, 1, 1.0, True, "older", None),
    ("a", T0, T0 + HOUR, 2.0, 2, 2, 2.0, False, "newest", None),
    ("a", T0, T0 + HOUR, 3.0, 3, 3, 3.0, None, "newest twin", None),
    ("a", T0, None, 4.0, 4, 4, 4.0, True, "no created", None),
    ("a", T0 + HOUR, None, 5.0, 5, 5, 5.0, True, "later, no created", None),
    ("b", T0 + 2 * HOUR, T0, 6.0, 6, 6, 6.0, False, "b", T0),
]
TIED_ENTITIES = [("a", T0 + 6 * HOUR, True, None, 1), ("b", T0 + 8 * HOUR, False, 1.0, 2), ("d", T0, True, 2.0, 3)]


@pytest.mark.filterwarnings("ignore:pandas only supports SQLAlchemy")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(features=tie_rows, entities=entity_rows, full_feature_names=st.booleans(), as_frame=st.booleans())
@example(features=TIED, entities=TIED_ENTITIES, full_feature_names=False, as_frame=False)
@example(features=TIED, entities=TIED_ENTITIES, full_feature_names=True, as_frame=True)
def test_ties_ttl_and_created_timestamps_match_the_stock_store(
    feast_settings: Settings,
    stock_store: FeatureStore,
    features: list[tuple[Any, ...]],
    entities: list[tuple[Any, ...]],
    full_feature_names: bool,
    as_frame: bool,
) -> None:
    # Given feature rows with ties on both timestamps, NULLs, special floats and text, and any entity rows
    url = feast_settings.database_url or ""
    replace_rows(url, "features.pg_ties", TIES_COLUMNS, features)
    replace_rows(url, "features.pg_entities", ["user_id", "event_timestamp", "churned", "weight", "n"], entities)
    refs = [f"{view.name}:{f.name}" for view in (ties_created, ties_mapped) for f in view.features]
    entity_df: str | pd.DataFrame = entity_frame(entities) if as_frame else ENTITY_SQL

    # When both stores join them
    ours = feast_repo.open_store(feast_settings, connections(feast_settings)).get_historical_features(
        entity_df=entity_df, features=refs, full_feature_names=full_feature_names
    )
    theirs = stock_store.get_historical_features(
        entity_df=entity_df, features=refs, full_feature_names=full_feature_names
    )

    # Then the frames are identical, fanned-out ties included
    assert isinstance(ours, CopyRetrievalJob)
    assert_same_result(ours, theirs)


TIE_ROWS = [
    ("a", T0, T0, 1.5, 1, 2**40, 0.1, True, "", T0),
    ("a", T0, T0 + HOUR, float("nan"), None, -1, None, False, 'q"uo,te', None),
    ("a", T0, T0 + HOUR, float("inf"), 3, None, float("-inf"), None, "line\nbreak", T0 + timedelta(microseconds=1)),
    ("a", T0 + HOUR, None, -0.0, -(2**31), 2**63 - 1, 3.4e38, True, None, T0 - DAY),
    ("b", T0 + 2 * HOUR, T0, 1e-310, 7, 0, -1.5, False, "é", T0 + 2 * HOUR),
]


@pytest.mark.parametrize("pull", ["pull_latest_from_table_or_query", "pull_all_from_table_or_query"])
def test_materialization_reads_equal_the_stock_store(feast_settings: Settings, pull: str) -> None:
    # Given feature rows with every parsed type, NULLs, special floats and text, and ties
    url = feast_settings.database_url or ""
    replace_rows(url, "features.pg_ties", TIES_COLUMNS, TIE_ROWS)
    config = feast_repo.open_store(feast_settings, connections(feast_settings)).config
    source = ties_created.batch_source
    arguments = (config, source, ["user_id"], [f.name for f in ties_created.features], "event_timestamp", "created")
    window = (T0 - DAY, T0 + DAY)

    # When the materialization engine's reads run through our store and through the stock one
    ours = getattr(ChurnPostgreSQLOfflineStore, pull)(*arguments, *window)
    theirs = getattr(PostgreSQLOfflineStore, pull)(*arguments, *window)

    # Then they return the same Arrow table (the latest read keeps one row per user)
    assert isinstance(ours, CopyRetrievalJob)
    frame = assert_same_result(ours, theirs)
    assert len(frame) == (2 if pull.startswith("pull_latest") else len(TIE_ROWS))


@pytest.mark.filterwarnings("ignore:pandas only supports SQLAlchemy")
def test_requests_outside_the_lateral_case_go_to_the_stock_store(
    feast_settings: Settings, stock_store: FeatureStore
) -> None:
    # Given entity rows whose timestamp column is not called event_timestamp (Feast infers it from the dtype)
    url = feast_settings.database_url or ""
    replace_rows(url, "features.pg_ties", TIES_COLUMNS, TIE_ROWS)
    frame = pd.DataFrame({"user_id": ["a", "b"], "seen_at": pd.to_datetime([T0 + HOUR, T0 + 3 * HOUR], utc=True)})
    refs = [f"{ties_created.name}:score"]

    # When they are joined through our store
    ours = feast_repo.open_store(feast_settings, connections(feast_settings)).get_historical_features(
        entity_df=frame, features=refs
    )

    # Then the stock implementation answered, with the stock result
    assert not isinstance(ours, CopyRetrievalJob)
    theirs = stock_store.get_historical_features(entity_df=frame, features=refs)
    assert_same_result(ours, theirs)
