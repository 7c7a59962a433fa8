"""The churn definition, and churn labels derived from it.

Two definitions, both standard:

- **contractual** (a subscription): a snapshot at t is positive when a churn event (default `cancel`) falls in the
  H days from t;
- **non-contractual** (a shop, an app: churn is going quiet): a snapshot at t is positive when the user has no
  qualifying event (e.g. `purchase`) in the H days from t. Churn is not a final state: a customer who buys again
  is a customer again, and is scored again.

"The H days from t" is the half-open period [t, t + H): features see only events strictly before t, so an event
stamped exactly at t (a day-resolution export stamps every event at midnight) belongs to the label, and every
event counts on exactly one side. A snapshot is labelled once t + H has passed in the data.

The snapshot population is the same under both: every user who signed up (or, without a signup time, was first
seen) before t, unless a churn event ended the relationship and no later event of another type reopened it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from churn_platform.settings import Settings

ChurnKind = Literal["contractual", "non_contractual"]


@dataclass(frozen=True)
class ChurnDefinition:
    """Which events end a relationship, which events count as activity, and which of the two a label asks about."""

    kind: ChurnKind = "contractual"
    end_event_types: tuple[str, ...] = ("cancel",)
    activity_event_types: tuple[str, ...] = ()  # empty: every event type that is not an end event type

    def __post_init__(self) -> None:
        if self.kind == "contractual" and not self.end_event_types:
            raise ValueError("a contractual churn definition needs at least one churn event type (e.g. cancel)")

    @classmethod
    def from_settings(cls, settings: Settings) -> ChurnDefinition:
        return cls(settings.churn_definition, settings.churn_event_types, settings.activity_event_types)

    def describe(self, horizon_days: int | None = None) -> str:
        """One line a person reads: what makes a snapshot positive."""
        within = "the label horizon" if horizon_days is None else f"{horizon_days} days"
        if self.kind == "contractual":
            return f"a {_names(self.end_event_types)} event within {within}"
        activity = _names(self.activity_event_types) if self.activity_event_types else "qualifying"
        ended = f"; {_names(self.end_event_types)} ends a relationship" if self.end_event_types else ""
        return f"no {activity} event within {within}{ended}"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "end_event_types": list(self.end_event_types),
            "activity_event_types": list(self.activity_event_types),
        }

    def sql_params(self) -> dict[str, Any]:
        """The bind parameters of `END_EVENT`, `QUALIFYING_EVENT` and `CONTRACTUAL`."""
        return {
            "end_types": list(self.end_event_types),
            "activity_types": list(self.activity_event_types),
            "contractual": self.kind == "contractual",
        }


def _names(event_types: tuple[str, ...]) -> str:
    return " or ".join(f"`{t}`" for t in event_types)


# Predicates over a raw.events row, bound with `ChurnDefinition.sql_params()`.
END_EVENT = "event_type = ANY(CAST(%(end_types)s AS text[]))"
QUALIFYING_EVENT = (
    "(event_type = ANY(CAST(%(activity_types)s AS text[])) OR (cardinality(CAST(%(activity_types)s AS text[])) = 0"
    " AND event_type <> ALL(CAST(%(end_types)s AS text[]))))"
)
# Whether a user's relationship stands ended at t, from the last end event and the last other event before t.
ENDED = "(last_end_at IS NOT NULL AND (last_other_at IS NULL OR last_other_at < last_end_at))"
# A label from the counts of end and qualifying events in [t, t + H).
LABEL = "CASE WHEN %(contractual)s THEN ends_ahead > 0 ELSE qualifying_ahead = 0 END"

# Per user and UTC day: the events that end a relationship, the qualifying events, and the last of each kind.
DAY_BUCKETS_SQL = f"""
SELECT user_id, CAST(event_timestamp AT TIME ZONE 'UTC' AS date) AS day,
       count(*) FILTER (WHERE {END_EVENT}) AS ends,
       count(*) FILTER (WHERE {QUALIFYING_EVENT}) AS qualifying,
       max(event_timestamp) FILTER (WHERE {END_EVENT}) AS last_end_at,
       max(event_timestamp) FILTER (WHERE NOT {END_EVENT}) AS last_other_at
FROM raw.events
"""

# The share of positive labels over every labelled daily snapshot of the population (a world's summary). A dense
# grid of (user, day) rows carries each day's bucket; windows over it give both the population rule (running
# last end / other event) and the label (events in the H day buckets from t).
POSITIVE_LABEL_RATE_SQL = f"""
WITH bounds AS (
    SELECT CAST(min(event_timestamp) AT TIME ZONE 'UTC' AS date) + 1 AS first_day,
           CAST((max(event_timestamp) - make_interval(days => %(horizon)s)) AT TIME ZONE 'UTC' AS date) AS last_day
    FROM raw.events
),
members AS (
    SELECT f.user_id, coalesce(u.signup_at, f.first_at) AS since
    FROM (SELECT user_id, min(event_timestamp) AS first_at FROM raw.events GROUP BY user_id) AS f
    LEFT JOIN raw.users u USING (user_id)
    WHERE abs(hashtext(f.user_id)) %% %(one_in)s = 0
),
buckets AS ({DAY_BUCKETS_SQL} GROUP BY 1, 2),
days AS (
    SELECT CAST(d AS date) AS day
    FROM bounds, generate_series(bounds.first_day - 1, bounds.last_day + %(horizon)s, interval '1 day') AS d
),
grid AS (
    SELECT m.user_id, d.day, CAST(d.day AS timestamp) AT TIME ZONE 'UTC' AS t, m.since,
           max(b.last_end_at) OVER before_t AS last_end_at, max(b.last_other_at) OVER before_t AS last_other_at,
           sum(coalesce(b.ends, 0)) OVER ahead AS ends_ahead,
           sum(coalesce(b.qualifying, 0)) OVER ahead AS qualifying_ahead
    FROM members m CROSS JOIN days d
    LEFT JOIN buckets b ON b.user_id = m.user_id AND b.day = d.day
    WINDOW before_t AS (PARTITION BY m.user_id ORDER BY d.day ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
           ahead AS (PARTITION BY m.user_id ORDER BY d.day ROWS BETWEEN CURRENT ROW AND {{ahead}} FOLLOWING)
)
SELECT count(*) AS snapshots, avg(CAST({LABEL} AS integer)) AS rate
FROM grid, bounds
WHERE grid.day BETWEEN bounds.first_day AND bounds.last_day AND since < t AND NOT {ENDED}
"""


USERS_SQL = "SELECT count(DISTINCT user_id) FROM raw.events"
# The rate walks a dense (user, day) grid: beyond this many users, a fixed sample of them (by a hash of the id).
RATE_SAMPLE_USERS = 5_000


@dataclass(frozen=True)
class LabelRate:
    snapshots: int
    rate: float | None
    sampled_one_in: int = 1  # the rate is over one user in this many


def positive_label_rate(
    conn: psycopg.Connection, definition: ChurnDefinition, horizon_days: int, *, sample_users: int = RATE_SAMPLE_USERS
) -> LabelRate:
    """Share of labelled daily snapshots that are positive under the definition, over the population (or, beyond
    `sample_users` users, over a deterministic sample of about that many)."""
    users_row = conn.execute(USERS_SQL).fetchone()
    users = int(users_row[0]) if users_row else 0
    one_in = max(1, -(-users // sample_users))
    statement = sql.SQL(POSITIVE_LABEL_RATE_SQL).format(ahead=sql.Literal(horizon_days - 1))
    row = conn.execute(statement, {**definition.sql_params(), "horizon": horizon_days, "one_in": one_in}).fetchone()
    if row is None or not row[0]:
        return LabelRate(0, None, one_in)
    return LabelRate(int(row[0]), float(row[1]), one_in)
