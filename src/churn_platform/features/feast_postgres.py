"""Feast's PostgreSQL offline store, with results read by COPY into Arrow and a LATERAL point-in-time join.

Stock Feast 0.67 fetches every result with `cur.fetchall()` and transposes it value by value in Python, and
joins point in time with a chain of CTEs that materialises every candidate feature row of every entity row.
This store returns the same Arrow tables (column names, order and types as stock Feast maps them, timestamps as
naive UTC) but streams them out of PostgreSQL with `COPY (query) TO STDOUT` as CSV, parsed by pyarrow's
multi-threaded reader; and for training sets it answers each entity row with one index probe per feature view:
`LEFT JOIN LATERAL (... ORDER BY ts DESC FETCH FIRST 1 ROWS WITH TIES)`.

Configure it in `feature_store.yaml` as `offline_store: type: <STORE_TYPE>`, with the stock store's other keys.
"""

from __future__ import annotations

import functools
import io
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, ParamSpec

import pandas as pd
import pyarrow as pa
from feast.feature_view import DUMMY_ENTITY_ID, FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
    PostgreSQLRetrievalJob,
    _get_entity_df_event_timestamp_range,
)
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.type_map import arrow_to_pg_type
from psycopg import sql

from churn_platform.data.arrow_copy import HEADER, TRAILER, encode_rows
from churn_platform.features.arrow_reads import Connection, connection, describe, parseable, read_arrow

log = logging.getLogger(__name__)

STORE_TYPE = "churn_platform.features.feast_postgres.ChurnPostgreSQLOfflineStore"
EVENT_TIMESTAMP = offline_utils.DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL

CREATE_ENTITY_TABLE_SQL = "CREATE TEMP TABLE {table} ({columns})"
COPY_ENTITY_ROWS_SQL = "COPY {table} FROM STDIN (FORMAT binary)"
ANALYZE_SQL = "ANALYZE {table}"
POINT_IN_TIME_SQL = "SELECT {columns}\nFROM (\n{entity_rows}\n) AS e{views}"
VIEW_COLUMNS_SQL = "SELECT {features} FROM {source} AS f"
# Per entity row, the view's latest row at or before the entity's time and within the TTL. WITH TIES keeps every
# row tied with it, as Feast's template does (it joins the latest timestamp back to all of its rows).
VIEW_LATERAL_SQL = """
LEFT JOIN LATERAL (
    SELECT {features}
    FROM {source} AS f
    WHERE {conditions}
    ORDER BY {order}
    FETCH FIRST 1 ROWS WITH TIES
) AS {alias} ON true"""

P = ParamSpec("P")

_ANY_RANGE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC))


def _read_with_copy(pull: Callable[P, RetrievalJob]) -> Callable[P, RetrievalJob]:
    """A stock store's pull, with the same signature, whose job runs the stock SQL and reads it with COPY."""

    @functools.wraps(pull)
    def pull_with_copy(*args: P.args, **kwargs: P.kwargs) -> RetrievalJob:
        return CopyRetrievalJob.reading(pull(*args, **kwargs))

    return pull_with_copy


class ChurnPostgreSQLOfflineStoreConfig(PostgreSQLOfflineStoreConfig):
    """The stock store's settings; `type` names this store (Feast finds this class as `<store class>Config`)."""

    type: Literal["churn_platform.features.feast_postgres.ChurnPostgreSQLOfflineStore"] = STORE_TYPE  # type: ignore[assignment]


class ChurnPostgreSQLOfflineStore(PostgreSQLOfflineStore):
    """The stock PostgreSQL offline store with fast reads: the same rows, columns and Arrow types.

    `pull_latest_from_table_or_query` / `pull_all_from_table_or_query` run the stock SQL, read with COPY.
    `get_historical_features` joins with LATERAL probes in the supported case: an entity DataFrame or SQL query
    with an `event_timestamp` column, feature views with one join key each over PostgreSQLSources, no on-demand
    feature views, no start/end dates, and boolean, integer, float, text or timestamp columns (a DataFrame's
    timestamps in whole microseconds). Anything else (several join keys, on-demand views, other types, ...) goes
    to the stock implementation unchanged.
    """

    pull_latest_from_table_or_query = staticmethod(
        _read_with_copy(PostgreSQLOfflineStore.pull_latest_from_table_or_query)
    )
    pull_all_from_table_or_query = staticmethod(_read_with_copy(PostgreSQLOfflineStore.pull_all_from_table_or_query))

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        request = HistoricalRequest(
            config, feature_views, feature_refs, registry, project, full_feature_names, filter_by_created_timestamp
        )
        if entity_df is not None and not kwargs.get("start_date") and not kwargs.get("end_date"):
            job = request.lateral_job(entity_df)
            if job is not None:
                return job
        log.debug("historical request outside the LATERAL case: answered by the stock PostgreSQL offline store")
        return PostgreSQLOfflineStore.get_historical_features(
            config, feature_views, feature_refs, entity_df, registry, project,
            full_feature_names, filter_by_created_timestamp, **kwargs,
        )  # fmt: skip


@dataclass(frozen=True)
class EntityRows:
    """The entity rows as a relation of the point-in-time query, and how to put them on the server first."""

    relation: sql.Composable
    columns: list[str]
    upload: Callable[[Connection], None] | None = None  # runs on the reading connection, before the query


@dataclass(frozen=True)
class ViewJoin:
    """One feature view's LATERAL join, its output columns, and the query that describes their types."""

    lateral: sql.Composed
    names: list[str]
    columns_query: str


@dataclass(frozen=True)
class HistoricalRequest:
    """The arguments of one `get_historical_features` call."""

    config: RepoConfig
    feature_views: list[FeatureView]
    feature_refs: list[str]
    registry: BaseRegistry
    project: str
    full_feature_names: bool
    filter_by_created_timestamp: bool

    def lateral_job(self, entity_df: pd.DataFrame | str) -> CopyRetrievalJob | None:
        """The LATERAL point-in-time job, or None for a request outside the supported case."""
        if OnDemandFeatureView.get_requested_odfvs(self.feature_refs, self.project, self.registry):
            return None
        if not all(_single_key_postgres_view(view) for view in self.feature_views):
            return None
        with connection(self.config.offline_store) as conn:
            entity = _sql_entity_rows(conn, entity_df) if isinstance(entity_df, str) else _frame_entity_rows(entity_df)
            if entity is None or EVENT_TIMESTAMP not in entity.columns:
                return None
            # The contexts' min/max timestamps only feed Feast's own templates: any range gives the same views.
            contexts = offline_utils.get_feature_view_query_context(
                self.feature_refs, self.feature_views, self.registry, self.project, _ANY_RANGE
            )
            views = [self._view_join(context, i) for i, context in enumerate(contexts)]
            outputs = [name for view in views for name in view.names]
            if len(set(outputs)) < len(outputs) or set(outputs) & set(entity.columns):
                return None
            if not all(parseable([oid for _, oid in describe(conn, view.columns_query)]) for view in views):
                return None
        columns = [sql.SQL("e.{}").format(sql.Identifier(c)) for c in entity.columns]
        for i, view in enumerate(views):
            columns += [sql.SQL("{}.{}").format(sql.Identifier(f"v{i}"), sql.Identifier(n)) for n in view.names]
        query = sql.SQL(POINT_IN_TIME_SQL).format(
            columns=sql.SQL(", ").join(columns),
            entity_rows=entity.relation,
            views=sql.Composed([view.lateral for view in views]),
        )
        return CopyRetrievalJob(
            query.as_string(),
            self.config,
            self.full_feature_names,
            upload=entity.upload,
            metadata=lambda: self._metadata(entity_df, entity.columns),
        )

    def _view_join(self, context: offline_utils.FeatureViewQueryContext, index: int) -> ViewJoin:
        view = next(v for v in self.feature_views if v.projection.name_to_use() == context.name)  # type: ignore[no-untyped-call]
        names = [context.field_mapping.get(f, f) for f in context.features]
        if self.full_feature_names:
            names = [f"{context.name}__{n}" for n in names]
        ts, entity_ts = sql.Identifier(context.timestamp_field), sql.Identifier(EVENT_TIMESTAMP)
        conditions = [
            sql.SQL("f.{} = e.{}").format(sql.Identifier(_key_column(view)), sql.Identifier(context.entities[0])),
            sql.SQL("f.{} <= e.{}").format(ts, entity_ts),
        ]
        if context.ttl:  # whole seconds, as Feast rounds it; the bound is inclusive, as in Feast's template
            ttl = sql.Literal(context.ttl)
            conditions.append(sql.SQL("f.{} >= e.{} - {} * interval '1' second").format(ts, entity_ts, ttl))
        order = [sql.SQL("f.{} DESC").format(ts)]
        if context.created_timestamp_column:
            # Feast keeps the greatest created timestamp of the latest event timestamp; rows without one never
            # match (its dedup joins on the created timestamp, and NULL joins nothing).
            created = sql.Identifier(context.created_timestamp_column)
            conditions.append(sql.SQL("f.{} IS NOT NULL").format(created))
            if self.filter_by_created_timestamp:
                conditions.append(sql.SQL("f.{} <= e.{}").format(created, entity_ts))
            order.append(sql.SQL("f.{} DESC").format(created))
        features = sql.SQL(", ").join(
            sql.SQL("f.{} AS {}").format(sql.Identifier(f), sql.Identifier(n))
            for f, n in zip(context.features, names, strict=True)
        )
        source = sql.SQL(context.table_subquery)
        lateral = sql.SQL(VIEW_LATERAL_SQL).format(
            features=features,
            source=source,
            conditions=sql.SQL("\n      AND ").join(conditions),
            order=sql.SQL(", ").join(order),
            alias=sql.Identifier(f"v{index}"),
        )
        columns_query = sql.SQL(VIEW_COLUMNS_SQL).format(features=features, source=source).as_string()
        return ViewJoin(lateral, names, columns_query)

    def _metadata(self, entity_df: pd.DataFrame | str, columns: Sequence[str]) -> RetrievalMetadata:
        """What stock Feast records about the request; computed when asked (a SQL entity costs a full scan)."""
        low, high = _get_entity_df_event_timestamp_range(entity_df, EVENT_TIMESTAMP, self.config)
        keys = list(set(columns) - {EVENT_TIMESTAMP})
        return RetrievalMetadata(self.feature_refs, keys, min_event_timestamp=low, max_event_timestamp=high)


def _single_key_postgres_view(view: FeatureView) -> bool:
    if not isinstance(view.batch_source, PostgreSQLSource) or len(view.entity_columns) != 1:
        return False
    name = view.entity_columns[0].name
    return view.projection.join_key_map.get(name, name) != DUMMY_ENTITY_ID


def _key_column(view: FeatureView) -> str:
    """The source column of the view's join key (through the source's field mapping, as Feast resolves it)."""
    assert view.batch_source is not None
    name = view.entity_columns[0].name
    return {v: k for k, v in view.batch_source.field_mapping.items()}.get(name, name)


def _sql_entity_rows(conn: Connection, entity_sql: str) -> EntityRows | None:
    """A SQL entity query as it is: joined in place, never materialised through pandas."""
    described = describe(conn, entity_sql)
    names = [name for name, _ in described]
    if len(set(names)) < len(names) or not parseable([oid for _, oid in described]):
        return None
    return EntityRows(sql.SQL(entity_sql), names)


def _frame_entity_rows(frame: pd.DataFrame) -> EntityRows | None:
    """An entity DataFrame, COPYed in binary into a temp table with the column types stock Feast would create.

    The binary encoder writes 64-bit integers and floats, text and timestamps; booleans travel as integers.
    The relation casts each column to the type Feast's own upload gives it (`arrow_to_pg_type`), so the result's
    entity columns have the same types as with the stock store.
    """
    names = list(frame.columns)
    if not all(isinstance(n, str) for n in names) or len(set(names)) < len(names):
        return None
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    staged = [_staged_column(column.combine_chunks()) for column in table.columns]
    if any(s is None for s in staged):
        return None
    arrays, staging_types, selects = zip(*(s for s in staged if s is not None), strict=True)
    table_name = sql.Identifier(f"feast_entity_rows_{uuid.uuid4().hex}")
    relation = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(
            sql.SQL(select).format(sql.Identifier(n)) + sql.SQL(" AS {}").format(sql.Identifier(n))
            for select, n in zip(selects, names, strict=True)
        ),
        table_name,
    )

    def upload(conn: Connection) -> None:
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in zip(names, staging_types, strict=True)
        )
        payload = b"".join([HEADER, memoryview(encode_rows(list(arrays))), TRAILER])
        with conn.cursor() as cur:
            cur.execute(sql.SQL(CREATE_ENTITY_TABLE_SQL).format(table=table_name, columns=columns).as_string())
            cur.copy_expert(sql.SQL(COPY_ENTITY_ROWS_SQL).format(table=table_name).as_string(), io.BytesIO(payload))
            cur.execute(sql.SQL(ANALYZE_SQL).format(table=table_name).as_string())  # a temp table has no statistics

    return EntityRows(relation, names, upload)


def _staged_column(array: Any) -> tuple[Any, str, str] | None:
    """For one entity column: the array to encode, its staging column type, and the cast to stock Feast's type."""
    kind = array.type
    try:
        stock_type = arrow_to_pg_type(str(kind))  # the column type stock Feast creates its entity table with
    except ValueError:
        return None
    try:
        if pa.types.is_timestamp(kind):
            array.cast(pa.timestamp("us", tz=kind.tz))  # a safe cast: refuses sub-microsecond parts
            return array, stock_type, "{}"
        if pa.types.is_string(kind):
            return array, "text", "{}"
        if pa.types.is_boolean(kind):
            return array.cast(pa.int64()), "bigint", "CAST(CAST({} AS integer) AS boolean)"
        if pa.types.is_integer(kind) and stock_type in ("smallint", "int", "bigint"):
            return array.cast(pa.int64()), "bigint", f"CAST({{}} AS {stock_type})"
        if pa.types.is_float32(kind) or pa.types.is_float64(kind):
            return array.cast(pa.float64()), "double precision", f"CAST({{}} AS {stock_type})"
    except pa.ArrowInvalid:
        return None
    return None


class CopyRetrievalJob(PostgreSQLRetrievalJob):
    """A PostgreSQL retrieval job whose result is read with COPY into the Arrow table stock Feast would build."""

    def __init__(
        self,
        query: str,
        config: RepoConfig,
        full_feature_names: bool,
        *,
        upload: Callable[[Connection], None] | None = None,
        on_demand_feature_views: list[OnDemandFeatureView] | None = None,
        metadata: RetrievalMetadata | Callable[[], RetrievalMetadata] | None = None,
    ) -> None:
        super().__init__(query, config, full_feature_names, on_demand_feature_views)
        self._query = query
        self._upload = upload
        self._metadata_of = metadata if callable(metadata) else None
        self._metadata = None if callable(metadata) else metadata

    @classmethod
    def reading(cls, job: RetrievalJob) -> CopyRetrievalJob:
        """The same query as a stock job, read with COPY."""
        assert isinstance(job, PostgreSQLRetrievalJob)
        return cls(job.to_sql(), job.config, job.full_feature_names, metadata=job.metadata)

    @property
    def metadata(self) -> RetrievalMetadata | None:
        if self._metadata is None and self._metadata_of is not None:
            self._metadata = self._metadata_of()
        return self._metadata

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        with connection(self.config.offline_store) as conn:
            if self._upload is not None:
                self._upload(conn)
            table = read_arrow(conn, self._query)
        if table is not None:
            return table
        if self._upload is not None:  # planned with parseable types only; the tables changed under us
            raise TypeError("a column's type changed since the request was planned; retry the request")
        return super()._to_arrow_internal(timeout)
