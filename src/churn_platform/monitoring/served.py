"""What the service actually served: the prediction log joined to the snapshots its features came from.

A prediction row names the snapshot it was scored on (`snapshot_at`), so a window is a range of snapshot times, the
world's calendar, never the wall clock: a simulated world is monitored exactly as production is. A user scored
several times on one snapshot counts once (their newest prediction); a prediction without features (no
`snapshot_at`) is not in any window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
from psycopg import sql

from churn_platform import db
from churn_platform.features.catalog import Catalog
from churn_platform.features.snapshots import table_name

NEWEST_SERVED_SQL = "SELECT max(snapshot_at) FROM serving.prediction_log"
# The features each user was served on each snapshot of the window (once per user and snapshot).
SERVED_FEATURES_SQL = """
SELECT s.user_id, s.event_timestamp, {features}
FROM {table} s
JOIN (
    SELECT DISTINCT user_id, snapshot_at FROM serving.prediction_log
    WHERE snapshot_at > %(start)s AND snapshot_at <= %(end)s
) l ON l.user_id = s.user_id AND l.snapshot_at = s.event_timestamp
ORDER BY s.event_timestamp, s.user_id
"""
# One model version's scores in the window: each user's newest prediction on each snapshot.
SERVED_SCORES_SQL = """
SELECT DISTINCT ON (user_id, snapshot_at) user_id, snapshot_at AS event_timestamp, churn_probability
FROM serving.prediction_log
WHERE snapshot_at > %(start)s AND snapshot_at <= %(end)s AND model_version = %(version)s
  AND churn_probability IS NOT NULL
ORDER BY user_id, snapshot_at, predicted_at DESC
"""


@dataclass(frozen=True)
class Window:
    """Snapshot times in (start, end]."""

    start: datetime
    end: datetime

    @classmethod
    def ending(cls, end: datetime, days: int) -> Window:
        return cls(end - timedelta(days=days), end)

    def __str__(self) -> str:
        return f"({self.start.isoformat()}, {self.end.isoformat()}]"


def newest_served_snapshot(url: str) -> datetime | None:
    """The newest snapshot any logged prediction was scored on (None for an empty log)."""
    with db.connect(url) as conn:
        row = conn.execute(NEWEST_SERVED_SQL).fetchone()
    return None if row is None else row[0]


def served_features(url: str, catalog: Catalog, window: Window) -> pd.DataFrame:
    """user_id, event_timestamp and the catalog's features of every (user, snapshot) served in the window."""
    names = [feature.name for feature in catalog.features]
    statement = sql.SQL(SERVED_FEATURES_SQL).format(
        features=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(name)) for name in names),
        table=table_name(catalog),
    )
    with db.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, {"start": window.start, "end": window.end})
        return pd.DataFrame(cur.fetchall(), columns=["user_id", "event_timestamp", *names])


def served_scores(url: str, window: Window, version: str) -> pd.Series:
    """The churn probabilities one version served in the window (each user's newest on each snapshot)."""
    with db.connect(url) as conn:
        rows = conn.execute(SERVED_SCORES_SQL, {"start": window.start, "end": window.end, "version": version})
        return pd.Series([row[2] for row in rows], dtype="float64", name="p_churn")
