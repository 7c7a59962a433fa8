"""Point-in-time purchase histories for BG/NBD, from `raw.events`, and the lookup the training pipeline hands down.

A customer's history at time t counts distinct UTC days with a qualifying event (as the churn definition's labels
count them: `data.labels.QUALIFYING_EVENT`) before t: x = those days minus one (repeat purchase days), t_x = days
from the first such day to the last, T (`age`) = days from the first such day to t. Only events with
event_timestamp < t count. A user without a qualifying event before t gets x = t_x = T = 0,
which BG/NBD scores as a customer acquired at t.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from churn_platform import db
from churn_platform.data.labels import QUALIFYING_EVENT, ChurnDefinition
from churn_platform.training.baselines import HISTORY_COLUMNS, BaselineLookup, BgNbdBaseline, bgnbd_baseline

HISTORY_ROWS_TABLE = "history_rows"  # db.copy_row_keys: (row_id, user_id, t)

# Each row's history at its own as_of: a day counts when its first qualifying event is before as_of.
ROW_HISTORIES_SQL = f"""
WITH active_days AS (
    SELECT user_id, date_trunc('day', event_timestamp AT TIME ZONE 'UTC') AS day, min(event_timestamp) AS first_at
    FROM raw.events
    WHERE user_id IN (SELECT user_id FROM history_rows)
      AND event_timestamp < (SELECT max(t) FROM history_rows)
      AND {QUALIFYING_EVENT}
    GROUP BY 1, 2
)
SELECT h.row_id,
       greatest(count(d.day) - 1, 0) AS x,
       coalesce(extract(epoch FROM max(d.day) - min(d.day)) / 86400, 0)::double precision AS t_x,
       coalesce(extract(epoch FROM h.t - (min(d.day) AT TIME ZONE 'UTC')) / 86400, 0)::double precision AS age
FROM history_rows h
LEFT JOIN active_days d ON d.user_id = h.user_id AND d.first_at < h.t
GROUP BY h.row_id, h.t
ORDER BY h.row_id
"""

# Every customer with a qualifying event before as_of, at as_of: what BG/NBD is fitted on.
CUSTOMER_HISTORIES_SQL = f"""
WITH active_days AS (
    SELECT user_id, date_trunc('day', event_timestamp AT TIME ZONE 'UTC') AS day
    FROM raw.events
    WHERE event_timestamp < %(as_of)s AND {QUALIFYING_EVENT}
    GROUP BY 1, 2
)
SELECT user_id,
       count(*) - 1 AS x,
       (extract(epoch FROM max(day) - min(day)) / 86400)::double precision AS t_x,
       (extract(epoch FROM %(as_of)s - (min(day) AT TIME ZONE 'UTC')) / 86400)::double precision AS age
FROM active_days
GROUP BY user_id
ORDER BY user_id
"""


def row_histories(url: str, rows: pd.DataFrame, definition: ChurnDefinition) -> pd.DataFrame:
    """(x, t_x, age) for each row (user_id, event_timestamp) at its own timestamp, in the rows' order; qualifying
    events as the churn definition's labels count them."""
    with db.connect(url) as conn, conn.cursor() as cur:
        db.copy_row_keys(cur, HISTORY_ROWS_TABLE, rows)
        cur.execute(ROW_HISTORIES_SQL, definition.sql_params())
        found = pd.DataFrame(cur.fetchall(), columns=["row_id", *HISTORY_COLUMNS])
    return found.drop(columns="row_id").astype({"x": "int64", "t_x": "float64", "age": "float64"})


def customer_histories(url: str, as_of: datetime, definition: ChurnDefinition) -> pd.DataFrame:
    """(user_id, x, t_x, age) at `as_of` for every user with a qualifying event before it."""
    with db.connect(url) as conn:
        found = conn.execute(CUSTOMER_HISTORIES_SQL, {"as_of": as_of, **definition.sql_params()})
        frame = pd.DataFrame(found.fetchall(), columns=["user_id", *HISTORY_COLUMNS])
    return frame.astype({"x": "int64", "t_x": "float64", "age": "float64"})


def bgnbd_lookup(url: str, definition: ChurnDefinition) -> BaselineLookup:
    """The BG/NBD baseline over the platform's events: fitted on every customer's history at the fit time, scoring
    each row from its own history at its own time."""

    def lookup(rows: pd.DataFrame, fitted_as_of: datetime, horizon_days: int) -> BgNbdBaseline | None:
        customers = customer_histories(url, fitted_as_of, definition)
        scored = row_histories(url, rows, definition)
        return bgnbd_baseline(customers, scored, fitted_as_of=fitted_as_of, horizon_days=horizon_days)

    return lookup
