"""The churn definition, and churn labels derived from it.

A user churns at the first event of a churn type (default `cancel`), or, for businesses without such an event,
when a silence of `inactivity_days` begins (the churn time is the last event plus the window). A snapshot at time
t is positive when churn falls in (t, t + H]; it is labelled only once t + H has passed in the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from churn_platform.settings import Settings


@dataclass(frozen=True)
class ChurnDefinition:
    """Explicit churn event types and/or an inactivity window in days."""

    event_types: tuple[str, ...]
    inactivity_days: int | None

    @classmethod
    def from_settings(cls, settings: Settings) -> ChurnDefinition:
        return cls(settings.churn_event_types, settings.inactivity_days)


# Per user: the time they churned under the definition (NULL if they have not). A silence only counts once it
# has fully elapsed before the end of the data.
CHURN_TIMES_SQL = """
WITH data_end AS (SELECT max(event_timestamp) AS at FROM raw.events),
explicit AS (
    SELECT user_id, min(event_timestamp) AS churn_at
    FROM raw.events WHERE event_type = ANY(%(event_types)s)
    GROUP BY user_id
),
gaps AS (
    SELECT user_id, event_timestamp,
           lead(event_timestamp) OVER (PARTITION BY user_id ORDER BY event_timestamp) AS next_at
    FROM raw.events
    WHERE %(inactivity_days)s::integer IS NOT NULL
),
silent AS (
    SELECT g.user_id, min(g.event_timestamp + make_interval(days => %(inactivity_days)s::integer)) AS churn_at
    FROM gaps g CROSS JOIN data_end
    WHERE coalesce(g.next_at, data_end.at) - g.event_timestamp >= make_interval(days => %(inactivity_days)s::integer)
    GROUP BY g.user_id
)
SELECT user_id, min(churn_at) AS churn_at
FROM (SELECT * FROM explicit UNION ALL SELECT * FROM silent) AS c
GROUP BY user_id
"""

# Daily snapshots at midnight UTC, for users who had signed up (or, without a signup time, been seen) before t and
# had not churned by t, over the days whose horizon has passed.
POSITIVE_LABEL_RATE_SQL = f"""
WITH churn AS ({CHURN_TIMES_SQL}),
bounds AS (SELECT min(event_timestamp) AS lo, max(event_timestamp) AS hi FROM raw.events),
first_seen AS (SELECT user_id, min(event_timestamp) AS at FROM raw.events GROUP BY user_id),
members AS (
    SELECT f.user_id, coalesce(u.signup_at, f.at) AS since
    FROM first_seen f LEFT JOIN raw.users u USING (user_id)
),
snapshots AS (
    SELECT generate_series(
        date_trunc('day', lo AT TIME ZONE 'UTC') + interval '1 day',
        (hi AT TIME ZONE 'UTC') - make_interval(days => %(horizon)s),
        interval '1 day'
    ) AT TIME ZONE 'UTC' AS t
    FROM bounds
)
SELECT count(*) AS snapshots,
       avg(coalesce(c.churn_at <= s.t + make_interval(days => %(horizon)s), false)::integer) AS rate
FROM snapshots s
JOIN members m ON m.since < s.t
LEFT JOIN churn c ON c.user_id = m.user_id
WHERE c.churn_at IS NULL OR c.churn_at > s.t
"""


def churn_times(conn: psycopg.Connection, definition: ChurnDefinition) -> dict[str, datetime]:
    """Per churned user, when they churned under the definition."""
    rows = conn.execute(CHURN_TIMES_SQL, _definition_params(definition)).fetchall()
    return {str(user): at for user, at in rows if at is not None}


def _definition_params(definition: ChurnDefinition) -> dict[str, object]:
    return {"event_types": list(definition.event_types), "inactivity_days": definition.inactivity_days}


@dataclass(frozen=True)
class LabelRate:
    snapshots: int
    rate: float | None


def positive_label_rate(conn: psycopg.Connection, definition: ChurnDefinition, horizon_days: int) -> LabelRate:
    """Share of labelled daily snapshots whose user churns within the horizon."""
    row = conn.execute(POSITIVE_LABEL_RATE_SQL, {**_definition_params(definition), "horizon": horizon_days}).fetchone()
    if row is None or not row[0]:
        return LabelRate(0, None)
    return LabelRate(int(row[0]), float(row[1]))
