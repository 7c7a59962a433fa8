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
from churn_platform.data.labels import (
    DAY_BUCKETS_SQL,
    END_EVENT,
    ENDED,
    LABEL,
    ChurnDefinition,
)
from churn_platform.features import definitions
from churn_platform.features.catalog import (
    FEATURES_SCHEMA,
    ActiveDays,
    ActivityTrend,
    Catalog,
    DaysSinceLastEvent,
    EventCount,
    EventValueMean,
    EventValueSum,
    Feature,
    GapRatio,
    GapSpread,
    LastEventValue,
    MeanGapDays,
    RecentGapRatio,
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


def _type_columns(catalog: Catalog) -> tuple[list[sql.Composable], list[sql.Composable], dict[str, Any]]:
    """Per event type i of the catalog: the day buckets' `c<i>` (count), `s<i>` (value sum), `v<i>` (values
    counted) and `l<i>` (the day's last value), and the same aggregated over the events before the grid."""
    buckets: list[sql.Composable] = []
    prior: list[sql.Composable] = []
    params: dict[str, Any] = {}
    for i, event_type in enumerate(catalog.event_types):
        params[f"type_{i}"] = event_type
        of_type = sql.SQL("event_type = {}").format(sql.Placeholder(f"type_{i}"))
        for target in (buckets, prior):
            name = (lambda column: column) if target is buckets else (lambda column: f"prior_{column}")
            target += [
                sql.SQL("count(*) FILTER (WHERE {}) AS {}").format(of_type, sql.Identifier(name(f"c{i}"))),
                # numeric, not double precision: a sliding window's sum of numeric drops the leaving row (an inverse
                # transition), while a float sum re-adds the whole frame at every row (measured 22 of 38 s).
                sql.SQL("CAST(sum(value) FILTER (WHERE {}) AS numeric) AS {}").format(
                    of_type, sql.Identifier(name(f"s{i}"))
                ),
                sql.SQL("count(value) FILTER (WHERE {}) AS {}").format(of_type, sql.Identifier(name(f"v{i}"))),
                sql.SQL(
                    "(array_agg(value ORDER BY event_timestamp DESC) FILTER (WHERE {} AND value IS NOT NULL))[1] AS {}"
                ).format(of_type, sql.Identifier(name(f"l{i}"))),
            ]
    return buckets, prior, params


def _over(column: str, days: int | None, aggregate: str = "sum") -> sql.Composed:
    """An aggregate of a grid column over the `days` day buckets ending with the current row's day (None: every
    bucket of the grid so far)."""
    frame = sql.SQL("UNBOUNDED") if days is None else sql.Literal(days - 1)
    return sql.SQL(
        "{agg}({col}) OVER (PARTITION BY user_id ORDER BY day ROWS BETWEEN {n} PRECEDING AND CURRENT ROW)"
    ).format(agg=sql.SQL(aggregate), col=sql.Identifier(column), n=frame)


def _with_prior(column: str, days: int | None) -> sql.Composable:
    """A windowed sum of a grid column; over the whole history, plus the user's total before the grid."""
    if days is not None:
        return sql.SQL("coalesce({}, 0)").format(_over(column, days))
    return sql.SQL("coalesce({prior}, 0) + coalesce({running}, 0)").format(
        prior=sql.Identifier(f"prior_{column}"), running=_over(column, None)
    )


def _history_columns(catalog: Catalog) -> list[sql.Composable]:
    """Window columns over the (user, day) grid the features are built from: counts, sums and activity per window,
    the running last event (all, ending, other), and for last values the number of valued days so far."""
    index = {event_type: i for i, event_type in enumerate(catalog.event_types)}
    columns: dict[str, sql.Composable] = {
        name: sql.SQL("coalesce({}, {})").format(_over(f"day_{name}", None, "max"), sql.Identifier(f"prior_{name}"))
        for name in ("last_at", "last_end_at", "last_other_at")
    }
    for f in catalog.features:
        if isinstance(f, EventCount | EventValueSum | EventValueMean):
            i, w, suffix = index[f.event_type], f.window_days, "all" if f.window_days is None else f.window_days
            columns[f"c{i}_{suffix}"] = _with_prior(f"c{i}", w)
            if isinstance(f, EventValueSum | EventValueMean):
                columns[f"s{i}_{suffix}"] = _with_prior(f"s{i}", w)
                columns[f"v{i}_{suffix}"] = _with_prior(f"v{i}", w)
        elif isinstance(f, LastEventValue):
            i = index[f.event_type]
            columns[f"g{i}"] = _over(f"l{i}", None, "count")
        elif isinstance(f, ActiveDays):
            columns[f"active_{f.window_days or 'all'}"] = _with_prior("active", f.window_days)
        elif isinstance(f, ActivityTrend):
            columns[f"events_{f.short_days}"] = _over("n_events", f.short_days)
            columns[f"events_{f.long_days}"] = _over("n_events", f.long_days)
        elif isinstance(f, MeanGapDays | GapRatio):
            columns["active_all"] = _with_prior("active", None)
        elif isinstance(f, GapSpread | RecentGapRatio):
            columns["active_all"] = _with_prior("active", None)
            # Both only grow with time, so the latest active day's value is the running maximum.
            for name in ("two_before", "gap_squares"):
                columns[name] = sql.SQL("coalesce({}, {})").format(
                    _over(f"day_{name}", None, "max"), sql.Identifier(f"prior_{name}")
                )
    return [sql.SQL("{} AS {}").format(expression, sql.Identifier(name)) for name, expression in columns.items()]


def _carried_columns(catalog: Catalog) -> list[sql.Composable]:
    """The last value of each type a LastEventValue feature names, carried forward over the grid: the day that
    last set a value opens a run of rows with equal `g<i>`, so its value is the run's first."""
    index = {event_type: i for i, event_type in enumerate(catalog.event_types)}
    columns: list[sql.Composable] = []
    for f in catalog.features:
        if isinstance(f, LastEventValue):
            i = index[f.event_type]
            columns.append(
                sql.SQL(
                    "CASE WHEN {g} = 0 THEN {prior} ELSE first_value({l}) OVER (PARTITION BY user_id, {g} ORDER BY day)"
                    " END AS {name}"
                ).format(
                    g=sql.Identifier(f"g{i}"),
                    l=sql.Identifier(f"l{i}"),
                    prior=sql.Identifier(f"prior_l{i}"),
                    name=sql.Identifier(f"last_value_{i}"),
                )
            )
    return columns


DAYS_SINCE_LAST = "extract(epoch FROM (t - last_at)) / 86400"
# The mean gap: days from the first to the last active day, over the gaps between active days.
LAST_DAY = "CAST(last_at AT TIME ZONE 'UTC' AS date)"
GAP_SPAN = f"({LAST_DAY} - CAST(first_at AT TIME ZONE 'UTC' AS date))"
MEAN_GAP = f"CAST({GAP_SPAN} AS double precision) / NULLIF(active_all - 1, 0)"
# The shape of the gaps between active days, in integers so a clockwork rhythm has a spread of exactly 0: with
# n = active_all - 1 gaps spanning S = GAP_SPAN days and Q the sum of their squares, the gaps' standard
# deviation over their mean is sqrt(n Q - S^2) / S; the last two gaps (last day - the active day two before it)
# over the mean gap are (last - two_before) n / (2 S).


GAP_SPREAD = (
    f"CASE WHEN active_all >= 3 THEN sqrt(CAST((active_all - 1) * gap_squares - CAST({GAP_SPAN} AS bigint) * {GAP_SPAN}"
    f" AS double precision)) / NULLIF({GAP_SPAN}, 0) END"
)
RECENT_GAPS = (
    f"CASE WHEN active_all >= 3 THEN CAST(({LAST_DAY} - two_before) * (active_all - 1) AS double precision)"
    f" / NULLIF(2 * {GAP_SPAN}, 0) END"
)


def _feature_expression(feature: Feature, catalog: Catalog) -> sql.Composable:
    """A feature over the history columns of one (user, day) row."""
    index = {event_type: i for i, event_type in enumerate(catalog.event_types)}
    if isinstance(feature, EventCount | EventValueSum | EventValueMean):
        i = index[feature.event_type]
        suffix = "all" if feature.window_days is None else feature.window_days
        if isinstance(feature, EventCount):
            return sql.Identifier(f"c{i}_{suffix}")
        if isinstance(feature, EventValueSum):
            return sql.Identifier(f"s{i}_{suffix}")
        return sql.SQL("{} / NULLIF({}, 0)").format(sql.Identifier(f"s{i}_{suffix}"), sql.Identifier(f"v{i}_{suffix}"))
    if isinstance(feature, LastEventValue):
        return sql.Identifier(f"last_value_{index[feature.event_type]}")
    if isinstance(feature, ActiveDays):
        return sql.Identifier(f"active_{feature.window_days or 'all'}")
    if isinstance(feature, ActivityTrend):
        return sql.SQL(
            "CAST({short} AS double precision) / {s} / NULLIF(CAST({long} AS double precision) / {l}, 0)"
        ).format(
            short=sql.Identifier(f"events_{feature.short_days}"),
            long=sql.Identifier(f"events_{feature.long_days}"),
            s=sql.Literal(feature.short_days),
            l=sql.Literal(feature.long_days),
        )
    if isinstance(feature, DaysSinceLastEvent):
        return sql.SQL(DAYS_SINCE_LAST)
    if isinstance(feature, TenureDays):
        return sql.SQL("extract(epoch FROM (t - since)) / 86400")
    if isinstance(feature, MeanGapDays):
        return sql.SQL(MEAN_GAP)
    if isinstance(feature, GapRatio):
        return sql.SQL("({}) / NULLIF({}, 0)").format(sql.SQL(DAYS_SINCE_LAST), sql.SQL(MEAN_GAP))
    if isinstance(feature, GapSpread):
        return sql.SQL(GAP_SPREAD)
    if isinstance(feature, RecentGapRatio):
        return sql.SQL(RECENT_GAPS)
    if isinstance(feature, UserAttribute):
        return sql.Identifier(feature.column)
    raise TypeError(f"no SQL for feature {feature!r}")


# The grid starts early enough for the longest window of the first snapshot day; events older than the grid
# come in as each user's totals before the grid (whole-history features, the last event of each kind).
# The population at t: signed up (or first seen) before t, and not ended by a churn event that no later event
# of another type reopened (see data/labels.py).
# User attributes are read as of t: the version of `raw.user_attributes` with the latest valid_from < t (none
# before the first). The snapshot of day d has t = midnight after d, so a version holds for the days from its
# valid_from's UTC day up to, not including, the next version's (a version superseded on its own day holds for
# none): a range join of the grid on those days, which hashes on user_id instead of a lookup per row.
SNAPSHOT_SQL = """
WITH first_seen AS (SELECT user_id, min(event_timestamp) AS first_at FROM raw.events GROUP BY user_id),
members AS (
    SELECT f.user_id, f.first_at, coalesce(u.signup_at, f.first_at) AS since
    FROM first_seen f
    LEFT JOIN raw.users u ON u.user_id = f.user_id
),
attribute_days AS (
    SELECT user_id, plan, channel, region, CAST(valid_from AT TIME ZONE 'UTC' AS date) AS first_day,
           CAST(lead(valid_from) OVER (PARTITION BY user_id ORDER BY valid_from) AT TIME ZONE 'UTC' AS date)
               AS end_day
    FROM raw.user_attributes
),
{gap_shape_ctes}prior AS (
    SELECT user_id, max(event_timestamp) AS prior_last_at,
           max(event_timestamp) FILTER (WHERE {end_event}) AS prior_last_end_at,
           max(event_timestamp) FILTER (WHERE NOT {end_event}) AS prior_last_other_at,
           count(DISTINCT CAST(event_timestamp AT TIME ZONE 'UTC' AS date)) AS prior_active,
           {prior_columns}
    FROM raw.events
    WHERE event_timestamp < CAST(%(grid_from)s AS date) AT TIME ZONE 'UTC' GROUP BY user_id
),
buckets AS (
    SELECT user_id, CAST(event_timestamp AT TIME ZONE 'UTC' AS date) AS day, count(*) AS n_events,
           max(event_timestamp) AS last_at,
           max(event_timestamp) FILTER (WHERE {end_event}) AS last_end_at,
           max(event_timestamp) FILTER (WHERE NOT {end_event}) AS last_other_at,
           {bucket_columns}
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
    SELECT m.user_id, d.day, CAST(d.day + 1 AS timestamp) AT TIME ZONE 'UTC' AS t, m.since, m.first_at,
           a.plan, a.channel, a.region, p.prior_last_at, p.prior_last_end_at, p.prior_last_other_at,
           coalesce(p.prior_active, 0) AS prior_active, {prior_names},
           b.last_at AS day_last_at, b.last_end_at AS day_last_end_at, b.last_other_at AS day_last_other_at,
           coalesce(b.n_events, 0) AS n_events, CASE WHEN b.n_events > 0 THEN 1 ELSE 0 END AS active,
           {grid_columns}{gap_shape_columns}
    FROM members m
    CROSS JOIN days d
    LEFT JOIN buckets b ON b.user_id = m.user_id AND b.day = d.day
    LEFT JOIN prior p ON p.user_id = m.user_id{gap_shape_joins}
    LEFT JOIN attribute_days a ON a.user_id = m.user_id AND d.day >= a.first_day
                               AND (a.end_day IS NULL OR d.day < a.end_day)
),
history AS (
    SELECT grid.*, {history_columns}
    FROM grid
),
carried AS (
    SELECT history.*, {carried_columns}
    FROM history
),
snapshots AS (
    SELECT user_id, t, since, {features}
    FROM carried
    WHERE t >= CAST(%(from_day)s AS date) AT TIME ZONE 'UTC'
      AND since < t
      AND NOT {ended}
)
INSERT INTO {table} (user_id, event_timestamp, {names})
SELECT user_id, t, {names}
FROM snapshots
ORDER BY t, user_id
ON CONFLICT (user_id, event_timestamp) DO NOTHING
"""

# For GapSpread and RecentGapRatio: per active day (any event, UTC days), the active day two before it and the
# running sum of squared gaps, from the user's whole history; the grid joins them on its active days and takes
# the last ones before the grid as the prior.
GAP_SHAPE_CTES = """event_days AS (
    SELECT DISTINCT user_id, CAST(event_timestamp AT TIME ZONE 'UTC' AS date) AS day
    FROM raw.events
    WHERE event_timestamp < CAST(%(until)s AS date) AT TIME ZONE 'UTC'
),
gaps AS (
    SELECT user_id, day, day - lag(day) OVER w AS gap, lag(day, 2) OVER w AS two_before
    FROM event_days
    WINDOW w AS (PARTITION BY user_id ORDER BY day)
),
gap_shape AS (
    SELECT user_id, day, two_before, sum(CAST(gap AS bigint) * gap) OVER (PARTITION BY user_id ORDER BY day)
        AS gap_squares
    FROM gaps
),
prior_gap_shape AS (
    SELECT user_id, max(two_before) AS prior_two_before, max(gap_squares) AS prior_gap_squares
    FROM gap_shape
    WHERE day < CAST(%(grid_from)s AS date)
    GROUP BY user_id
),
"""
GAP_SHAPE_COLUMNS = """,
           gs.two_before AS day_two_before, gs.gap_squares AS day_gap_squares, pg.prior_two_before,
           pg.prior_gap_squares"""
GAP_SHAPE_JOINS = """
    LEFT JOIN gap_shape gs ON gs.user_id = m.user_id AND gs.day = d.day
    LEFT JOIN prior_gap_shape pg ON pg.user_id = m.user_id"""

LAST_SNAPSHOT_SQL = "SELECT max(event_timestamp) FROM {table}"
FIRST_EVENT_SQL = "SELECT min(event_timestamp) FROM raw.events"


def snapshot_statement(catalog: Catalog) -> tuple[sql.Composed, dict[str, Any]]:
    """The INSERT ... SELECT that computes the catalog's snapshots for days [from_day, until]; the churn
    definition's parameters (`ChurnDefinition.sql_params`) complete its bind parameters."""
    bucket_columns, prior_columns, params = _type_columns(catalog)
    prior_names = [
        sql.SQL("p.{}").format(sql.Identifier(f"prior_{kind}{i}"))
        for i, _ in enumerate(catalog.event_types)
        for kind in ("c", "s", "v", "l")
    ]
    grid_columns = []
    for i, _ in enumerate(catalog.event_types):
        grid_columns += [
            sql.SQL("coalesce(b.{c}, 0) AS {c}").format(c=sql.Identifier(f"c{i}")),
            *(sql.SQL("b.{c} AS {c}").format(c=sql.Identifier(f"{kind}{i}")) for kind in ("s", "v", "l")),
        ]
    features = [
        sql.SQL("{} AS {}").format(_feature_expression(f, catalog), sql.Identifier(f.name)) for f in catalog.features
    ]
    names = sql.SQL(", ").join(sql.Identifier(n) for n in catalog.names)
    gap_shape = any(isinstance(f, GapSpread | RecentGapRatio) for f in catalog.features)
    statement = sql.SQL(SNAPSHOT_SQL).format(
        gap_shape_ctes=sql.SQL(GAP_SHAPE_CTES if gap_shape else ""),
        gap_shape_columns=sql.SQL(GAP_SHAPE_COLUMNS if gap_shape else ""),
        gap_shape_joins=sql.SQL(GAP_SHAPE_JOINS if gap_shape else ""),
        end_event=sql.SQL(END_EVENT),
        ended=sql.SQL(ENDED),
        prior_columns=sql.SQL(", ").join(prior_columns) if prior_columns else sql.SQL("0 AS no_types"),
        bucket_columns=sql.SQL(", ").join(bucket_columns) if bucket_columns else sql.SQL("0 AS no_types"),
        grid_columns=sql.SQL(", ").join(grid_columns) if grid_columns else sql.SQL("0 AS no_types"),
        history_columns=sql.SQL(", ").join(_history_columns(catalog)),
        carried_columns=sql.SQL(", ").join(_carried_columns(catalog) or [sql.SQL("0 AS nothing_carried")]),
        prior_names=sql.SQL(", ").join(prior_names) if prior_names else sql.SQL("0 AS no_types"),
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


def compute_snapshots(
    url: str, catalog: Catalog, definition: ChurnDefinition, until: date, *, replace: bool = False
) -> SnapshotRun:
    """Compute snapshots for every day after the last one stored, up to and including `until`; idempotent.

    The catalog's tables record the definitions they were computed under; a changed catalog or churn definition
    raises `definitions.DefinitionChangedError` unless `replace`, which drops them and starts again.
    """
    started = time.perf_counter()
    with db.connect(url) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('churn_platform.snapshots'))")
        definitions.claim(conn, catalog, definition, replace=replace)
        conn.execute(create_table_sql(catalog))
        conn.execute(create_time_index_sql(catalog))
        from_day = _next_snapshot_day(conn, catalog)
        if from_day is None or from_day > until:
            return SnapshotRun(catalog.table, None, until, 0, time.perf_counter() - started)
        statement, params = snapshot_statement(catalog)
        grid_from = from_day - timedelta(days=catalog.longest_window_days)
        cur = conn.execute(
            statement,
            {**params, **definition.sql_params(), "grid_from": grid_from, "from_day": from_day, "until": until},
        )
        rows = cur.rowcount
        # Rows inserted after the BRIN index was built are in unsummarized ranges, which every scan reads; fresh
        # statistics let the planner see that a few days are a small part of the table.
        conn.execute(sql.SQL(SUMMARIZE_TIME_INDEX_SQL).format(index=sql.Literal(time_index_name(catalog))))
        conn.execute(sql.SQL("ANALYZE {}").format(table_name(catalog)))
    seconds = time.perf_counter() - started
    log.info("snapshots %s .. %s: %d rows in %.1f s", from_day, until, rows, seconds)
    return SnapshotRun(catalog.table, from_day, until, rows, seconds)


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
CREATE TABLE IF NOT EXISTS {table} (
    user_id         text COLLATE "C" NOT NULL,
    event_timestamp timestamptz      NOT NULL,
    horizon_days    integer          NOT NULL,
    churned         boolean          NOT NULL,
    PRIMARY KEY (user_id, event_timestamp, horizon_days)
)"""

# The snapshot days still to label: after the last labelled one, up to the last whose horizon has passed in the
# data (t + H <= the last event).
LABEL_DAYS_SQL = """
SELECT (SELECT CAST(max(event_timestamp) AT TIME ZONE 'UTC' AS date) + 1 FROM {labels}
        WHERE horizon_days = %(horizon)s),
       (SELECT CAST(min(event_timestamp) AT TIME ZONE 'UTC' AS date) FROM {snapshots}),
       (SELECT CAST((max(event_timestamp) - make_interval(days => %(horizon)s)) AT TIME ZONE 'UTC' AS date)
        FROM raw.events)
"""

# Labels of the snapshots of days [first_day, last_day]: a dense (user, day) grid over those days and the horizon
# after them carries each day's end and qualifying events; a window of H buckets from the snapshot's own day
# counts the events in [t, t + H). Rows labelled before keep their label.
LABELS_SQL = f"""
WITH labelled AS (
    SELECT user_id, event_timestamp, CAST(event_timestamp AT TIME ZONE 'UTC' AS date) AS day FROM {{snapshots}}
    WHERE event_timestamp >= CAST(%(first_day)s AS timestamp) AT TIME ZONE 'UTC'
      AND event_timestamp < CAST(%(last_day)s AS timestamp) AT TIME ZONE 'UTC' + interval '1 day'
),
buckets AS (
    {DAY_BUCKETS_SQL}
    WHERE event_timestamp >= CAST(%(first_day)s AS timestamp) AT TIME ZONE 'UTC'
      AND event_timestamp < CAST(%(last_day)s AS timestamp) AT TIME ZONE 'UTC' + make_interval(days => %(horizon)s)
    GROUP BY 1, 2
),
days AS (
    SELECT CAST(d AS date) AS day
    FROM generate_series(
        CAST(%(first_day)s AS date), CAST(%(last_day)s AS date) + %(horizon)s - 1, interval '1 day'
    ) AS d
),
ahead AS (
    SELECT u.user_id, d.day,
           sum(coalesce(b.ends, 0)) OVER w AS ends_ahead, sum(coalesce(b.qualifying, 0)) OVER w AS qualifying_ahead
    FROM (SELECT DISTINCT user_id FROM labelled) AS u
    CROSS JOIN days d
    LEFT JOIN buckets b ON b.user_id = u.user_id AND b.day = d.day
    WINDOW w AS (PARTITION BY u.user_id ORDER BY d.day ROWS BETWEEN CURRENT ROW AND {{ahead}} FOLLOWING)
)
INSERT INTO {{labels}} (user_id, event_timestamp, horizon_days, churned)
SELECT l.user_id, l.event_timestamp, %(horizon)s, {LABEL}
FROM labelled l JOIN ahead a ON a.user_id = l.user_id AND a.day = l.day
ORDER BY l.event_timestamp, l.user_id
ON CONFLICT (user_id, event_timestamp, horizon_days) DO NOTHING
"""


def labels_table_name(catalog: Catalog) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(FEATURES_SCHEMA), sql.Identifier(f"{catalog.name}_labels"))


def compute_labels(url: str, catalog: Catalog, definition: ChurnDefinition, horizon_days: int) -> int:
    """Label every stored snapshot whose horizon has passed and is not labelled yet; return the rows added.

    Refuses (DefinitionChangedError) when the snapshots were computed under other definitions.
    """
    with db.connect(url) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('churn_platform.snapshots'))")
        definitions.check(conn, catalog, definition)
        conn.execute(create_table_sql(catalog))
        labels, snapshots = labels_table_name(catalog), table_name(catalog)
        conn.execute(sql.SQL(CREATE_LABELS_SQL).format(table=labels))
        after_last, first_snapshot, last_day = conn.execute(
            sql.SQL(LABEL_DAYS_SQL).format(labels=labels, snapshots=snapshots), {"horizon": horizon_days}
        ).fetchone() or (None, None, None)
        first_day = after_last or first_snapshot
        if first_day is None or last_day is None or first_day > last_day:
            return 0
        statement = sql.SQL(LABELS_SQL).format(snapshots=snapshots, labels=labels, ahead=sql.Literal(horizon_days - 1))
        params = {**definition.sql_params(), "horizon": horizon_days, "first_day": first_day, "last_day": last_day}
        return conn.execute(statement, params).rowcount


def refresh(url: str, settings: Settings, until: date, *, replace: bool = False) -> tuple[SnapshotRun, int]:
    """The configured catalog's snapshots up to `until`, then labels under the configured churn definition."""
    catalog, definition = catalog_from_settings(settings), ChurnDefinition.from_settings(settings)
    run = compute_snapshots(url, catalog, definition, until, replace=replace)
    return run, compute_labels(url, catalog, definition, settings.label_horizon_days)
