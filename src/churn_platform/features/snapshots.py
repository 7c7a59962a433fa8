"""Feature snapshots computed inside PostgreSQL with set-based SQL generated from the catalog.

One row per active user per snapshot day, at midnight UTC (`event_timestamp` = the snapshot time t), using only
events with `event_timestamp < t`. Events are bucketed by UTC day; a dense grid of (user, day) rows carries each
day's bucket, and window frames over that grid sum the buckets of days t - w .. t - 1. Windows, FILTER and CASE
are standard SQL; only `generate_series` (a row per day) is PostgreSQL's own, and Trino (`sequence`) and Spark
(`sequence` + `explode`) have direct equivalents.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from churn_platform import db
from churn_platform.data.labels import CHURN_TIMES_SQL, ChurnDefinition
from churn_platform.features.catalog import (
    FEATURES_SCHEMA,
    ActiveDays,
    ActivityTrend,
    Catalog,
    DaysSinceLastEvent,
    EventCount,
    EventValueSum,
    Feature,
    TenureDays,
    UserAttribute,
    catalog_from_settings,
)
from churn_platform.settings import Settings

log = logging.getLogger(__name__)

SQL_TYPES = {"int": "integer", "float": "double precision", "text": "text"}


def table_name(catalog: Catalog) -> sql.Composed:
    """`features.<catalog name>`: one table per catalog version, so a model names the features it used."""
    return sql.SQL("{}.{}").format(sql.Identifier(FEATURES_SCHEMA), sql.Identifier(catalog.name))


def create_table_sql(catalog: Catalog) -> sql.Composed:
    columns = [sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(SQL_TYPES[f.dtype])) for f in catalog.features]
    return sql.SQL(
        'CREATE TABLE IF NOT EXISTS {table} (user_id text COLLATE "C" NOT NULL,'
        " event_timestamp timestamptz NOT NULL, {columns}, PRIMARY KEY (user_id, event_timestamp))"
    ).format(table=table_name(catalog), columns=sql.SQL(", ").join(columns))


SUMMARIZE_TIME_INDEX_SQL = "SELECT brin_summarize_new_values({index}::regclass)"


def time_index_name(catalog: Catalog) -> str:
    return f"features.{catalog.name}_event_timestamp_brin"


def create_time_index_sql(catalog: Catalog) -> sql.Composed:
    """A BRIN index on snapshot time: snapshots are written in time order (each run sorts its days), so a time
    range (what materialization reads) is a few block ranges instead of a scan of the whole table."""
    return sql.SQL("CREATE INDEX IF NOT EXISTS {index} ON {table} USING brin (event_timestamp)").format(
        index=sql.Identifier(f"{catalog.name}_event_timestamp_brin"), table=table_name(catalog)
    )


def _bucket_columns(catalog: Catalog) -> tuple[list[sql.Composable], dict[str, Any]]:
    """Per user and UTC day: the event counts and value sums the catalog needs, as `c<i>` / `s<i>` columns."""
    columns: list[sql.Composable] = []
    params: dict[str, Any] = {}
    for i, event_type in enumerate(catalog.event_types):
        params[f"type_{i}"] = event_type
        placeholder = sql.Placeholder(f"type_{i}")
        columns.append(
            sql.SQL("count(*) FILTER (WHERE event_type = {}) AS {}").format(placeholder, sql.Identifier(f"c{i}"))
        )
        columns.append(
            sql.SQL("sum(value) FILTER (WHERE event_type = {}) AS {}").format(placeholder, sql.Identifier(f"s{i}"))
        )
    return columns, params


def _window(column: str, days: int, aggregate: str = "sum") -> sql.Composed:
    """An aggregate of a grid column over the `days` day buckets ending with the current row's day."""
    return sql.SQL(
        "{agg}({col}) OVER (PARTITION BY user_id ORDER BY day ROWS BETWEEN {n} PRECEDING AND CURRENT ROW)"
    ).format(agg=sql.SQL(aggregate), col=sql.Identifier(column), n=sql.Literal(days - 1))


def _feature_expression(feature: Feature, catalog: Catalog) -> sql.Composable:
    index = {event_type: i for i, event_type in enumerate(catalog.event_types)}
    if isinstance(feature, EventCount):
        return _window(f"c{index[feature.event_type]}", feature.window_days)
    if isinstance(feature, EventValueSum):
        return sql.SQL("coalesce({}, 0)").format(_window(f"s{index[feature.event_type]}", feature.window_days))
    if isinstance(feature, ActiveDays):
        return _window("active", feature.window_days)
    if isinstance(feature, ActivityTrend):
        return sql.SQL(
            "CAST({short} AS double precision) / {s} / NULLIF(CAST({long} AS double precision) / {l}, 0)"
        ).format(
            short=_window("n_events", feature.short_days),
            long=_window("n_events", feature.long_days),
            s=sql.Literal(feature.short_days),
            l=sql.Literal(feature.long_days),
        )
    if isinstance(feature, DaysSinceLastEvent):
        return sql.SQL(
            "extract(epoch FROM (t - coalesce(max(last_at) OVER (PARTITION BY user_id ORDER BY day"
            " ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW), prior_last_at))) / 86400"
        )
    if isinstance(feature, TenureDays):
        return sql.SQL("extract(epoch FROM (t - since)) / 86400")
    if isinstance(feature, UserAttribute):
        return sql.Identifier(feature.column)
    raise TypeError(f"no SQL for feature {feature!r}")


# The grid starts early enough for the longest window of the first snapshot day; events older than the grid
# only matter for "days since the last event", carried in as each user's last event before the grid.
SNAPSHOT_SQL = """
WITH churn AS ({churn_times}),
first_seen AS (SELECT user_id, min(event_timestamp) AS first_at FROM raw.events GROUP BY user_id),
members AS (
    SELECT f.user_id, coalesce(u.signup_at, f.first_at) AS since, u.plan, u.channel, u.region, c.churn_at
    FROM first_seen f
    LEFT JOIN raw.users u ON u.user_id = f.user_id
    LEFT JOIN churn c ON c.user_id = f.user_id
),
prior AS (
    SELECT user_id, max(event_timestamp) AS prior_last_at FROM raw.events
    WHERE event_timestamp < CAST(%(grid_from)s AS date) AT TIME ZONE 'UTC' GROUP BY user_id
),
buckets AS (
    SELECT user_id, CAST(event_timestamp AT TIME ZONE 'UTC' AS date) AS day, count(*) AS n_events,
           max(event_timestamp) AS last_at, {bucket_columns}
    FROM raw.events
    WHERE event_timestamp >= CAST(%(grid_from)s AS date) AT TIME ZONE 'UTC'
      AND event_timestamp < CAST(%(until)s AS date) AT TIME ZONE 'UTC'
    GROUP BY 1, 2
),
days AS (
    SELECT CAST(d AS date) AS day
    FROM generate_series(CAST(%(grid_from)s AS date), CAST(%(until)s AS date) - 1, interval '1 day') AS d
),
grid AS (
    SELECT m.user_id, d.day, CAST(d.day + 1 AS timestamp) AT TIME ZONE 'UTC' AS t, m.since, m.churn_at,
           m.plan, m.channel, m.region, p.prior_last_at, b.last_at,
           coalesce(b.n_events, 0) AS n_events, CASE WHEN b.n_events > 0 THEN 1 ELSE 0 END AS active,
           {grid_columns}
    FROM members m
    CROSS JOIN days d
    LEFT JOIN buckets b ON b.user_id = m.user_id AND b.day = d.day
    LEFT JOIN prior p ON p.user_id = m.user_id
),
snapshots AS (
    SELECT user_id, t, since, churn_at, {features}
    FROM grid
)
INSERT INTO {table} (user_id, event_timestamp, {names})
SELECT user_id, t, {names}
FROM snapshots
WHERE t >= CAST(%(from_day)s AS date) AT TIME ZONE 'UTC'
  AND since < t
  AND (churn_at IS NULL OR churn_at > t)
ORDER BY t, user_id
ON CONFLICT (user_id, event_timestamp) DO NOTHING
"""

LAST_SNAPSHOT_SQL = "SELECT max(event_timestamp) FROM {table}"
FIRST_EVENT_SQL = "SELECT min(event_timestamp) FROM raw.events"


def snapshot_statement(catalog: Catalog) -> tuple[sql.Composed, dict[str, Any]]:
    """The INSERT ... SELECT that computes the catalog's snapshots for days [from_day, until]."""
    bucket_columns, params = _bucket_columns(catalog)
    grid_columns = []
    for i, _ in enumerate(catalog.event_types):
        grid_columns.append(sql.SQL("coalesce(b.{c}, 0) AS {c}").format(c=sql.Identifier(f"c{i}")))
        grid_columns.append(sql.SQL("b.{s} AS {s}").format(s=sql.Identifier(f"s{i}")))
    features = [
        sql.SQL("{} AS {}").format(_feature_expression(f, catalog), sql.Identifier(f.name)) for f in catalog.features
    ]
    names = sql.SQL(", ").join(sql.Identifier(n) for n in catalog.names)
    statement = sql.SQL(SNAPSHOT_SQL).format(
        churn_times=sql.SQL(CHURN_TIMES_SQL),
        bucket_columns=sql.SQL(", ").join(bucket_columns) if bucket_columns else sql.SQL("0 AS no_types"),
        grid_columns=sql.SQL(", ").join(grid_columns) if grid_columns else sql.SQL("0 AS no_types"),
        features=sql.SQL(", ").join(features),
        table=table_name(catalog),
        names=names,
    )
    return statement, params


@dataclass(frozen=True)
class SnapshotRun:
    """What one `compute_snapshots` did."""

    table: str
    first_day: date | None
    last_day: date
    rows_written: int
    seconds: float


def compute_snapshots(url: str, catalog: Catalog, definition: ChurnDefinition, until: date) -> SnapshotRun:
    """Compute snapshots for every day after the last one stored, up to and including `until`; idempotent."""
    started = time.perf_counter()
    with db.connect(url) as conn:
        conn.execute(create_table_sql(catalog))
        conn.execute(create_time_index_sql(catalog))
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('churn_platform.snapshots'))")
        from_day = _next_snapshot_day(conn, catalog)
        if from_day is None or from_day > until:
            return SnapshotRun(f"features.{catalog.name}", None, until, 0, time.perf_counter() - started)
        statement, params = snapshot_statement(catalog)
        grid_from = from_day - timedelta(days=catalog.longest_window_days)
        cur = conn.execute(
            statement,
            {
                **params,
                "event_types": list(definition.event_types),
                "inactivity_days": definition.inactivity_days,
                "grid_from": grid_from,
                "from_day": from_day,
                "until": until,
            },
        )
        rows = cur.rowcount
        # Rows inserted after the BRIN index was built are in unsummarized ranges, which every scan reads; fresh
        # statistics let the planner see that a few days are a small part of the table.
        conn.execute(sql.SQL(SUMMARIZE_TIME_INDEX_SQL).format(index=sql.Literal(time_index_name(catalog))))
        conn.execute(sql.SQL("ANALYZE {}").format(table_name(catalog)))
    seconds = time.perf_counter() - started
    log.info("snapshots %s .. %s: %d rows in %.1f s", from_day, until, rows, seconds)
    return SnapshotRun(f"features.{catalog.name}", from_day, until, rows, seconds)


def _next_snapshot_day(conn: psycopg.Connection, catalog: Catalog) -> date | None:
    """The day after the last stored snapshot, or the day after the first event; None without events."""
    last = conn.execute(sql.SQL(LAST_SNAPSHOT_SQL).format(table=table_name(catalog))).fetchone()
    if last and last[0] is not None:
        return _utc_day(last[0]) + timedelta(days=1)
    first = conn.execute(FIRST_EVENT_SQL).fetchone()
    if not first or first[0] is None:
        return None
    return _utc_day(first[0]) + timedelta(days=1)


def day_after_last_event(url: str) -> date | None:
    """The first snapshot day that sees every stored event (None without events)."""
    with db.connect(url) as conn:
        row = conn.execute("SELECT max(event_timestamp) FROM raw.events").fetchone()
    return None if row is None or row[0] is None else _utc_day(row[0]) + timedelta(days=1)


def _utc_day(at: datetime) -> date:
    return at.astimezone(UTC).date()


CREATE_LABELS_SQL = """
CREATE TABLE IF NOT EXISTS features.churn_labels (
    user_id         text COLLATE "C" NOT NULL,
    event_timestamp timestamptz      NOT NULL,
    horizon_days    integer          NOT NULL,
    churned         boolean          NOT NULL,
    PRIMARY KEY (user_id, event_timestamp, horizon_days)
)"""

# A snapshot at t is labelled once t + H has passed in the data (the last event is at or after it): churned if
# the user met the churn definition within (t, t + H]. Rows labelled before keep their label.
LABELS_SQL = f"""
WITH churn AS ({CHURN_TIMES_SQL}),
data_end AS (SELECT max(event_timestamp) AS at FROM raw.events)
INSERT INTO features.churn_labels (user_id, event_timestamp, horizon_days, churned)
SELECT s.user_id, s.event_timestamp, %(horizon)s,
       coalesce(c.churn_at <= s.event_timestamp + %(horizon)s * interval '1 day', false)
FROM {{table}} s
CROSS JOIN data_end
LEFT JOIN churn c ON c.user_id = s.user_id
WHERE s.event_timestamp + %(horizon)s * interval '1 day' <= data_end.at
ON CONFLICT (user_id, event_timestamp, horizon_days) DO NOTHING
"""


def compute_labels(url: str, catalog: Catalog, definition: ChurnDefinition, horizon_days: int) -> int:
    """Label every stored snapshot whose horizon has passed and is not labelled yet; return the rows added."""
    with db.connect(url) as conn:
        conn.execute(CREATE_LABELS_SQL)
        statement = sql.SQL(LABELS_SQL).format(table=table_name(catalog))
        params = {
            "event_types": list(definition.event_types),
            "inactivity_days": definition.inactivity_days,
            "horizon": horizon_days,
        }
        return conn.execute(statement, params).rowcount


def refresh(url: str, settings: Settings, until: date) -> tuple[SnapshotRun, int]:
    """The configured catalog's snapshots up to `until`, then labels under the configured churn definition."""
    catalog, definition = catalog_from_settings(settings), ChurnDefinition.from_settings(settings)
    run = compute_snapshots(url, catalog, definition, until)
    return run, compute_labels(url, catalog, definition, settings.label_horizon_days)
