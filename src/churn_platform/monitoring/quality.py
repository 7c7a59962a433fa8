"""Data quality of the served features, per feature and snapshot day, against the version's reference sample.

- missing: the share of served (user, snapshot) rows without a value, beside the reference's own share (a count of
  days since a first purchase is rightly empty for someone who never bought: only a rise is news);
- stale: the share of the day's predictions scored on a snapshot older than the service's feature age limit
  (`CHURN_SERVE_FEATURE_MAX_AGE_HOURS`) at the feature clock of the moment they were served, which is the newest
  snapshot materialized by then (`features.online_materializations`). The service reads one feature view, so every
  feature of a row is stale or fresh together;
- out of range (numeric): the share of rows whose value is below the reference's minimum or above its maximum;
- new categories (categorical): values the reference never had.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from churn_platform import db
from churn_platform.monitoring.served import Window

NEW_CATEGORIES_SHOWN = 20  # the most new categories kept per feature and day

LEDGER_EXISTS_SQL = "SELECT to_regclass('features.online_materializations') IS NOT NULL"
# Per snapshot day: the predictions of the window, and those whose snapshot was older than the age limit at the
# feature clock of their moment (the newest snapshot materialized before the prediction; none known: not stale).
STALE_BY_DAY_SQL = """
WITH clocks AS MATERIALIZED (
    SELECT materialized_at, max(end_at) OVER (ORDER BY materialized_at) AS clock
    FROM features.online_materializations WHERE feature_view = %(view)s
)
SELECT (l.snapshot_at AT TIME ZONE 'UTC')::date AS day, count(*) AS rows,
       count(*) FILTER (WHERE c.clock - l.snapshot_at > %(max_age)s) AS stale
FROM serving.prediction_log l
LEFT JOIN LATERAL (
    SELECT clock FROM clocks WHERE materialized_at <= l.predicted_at ORDER BY materialized_at DESC LIMIT 1
) c ON true
WHERE l.snapshot_at > %(start)s AND l.snapshot_at <= %(end)s
GROUP BY 1
"""


@dataclass(frozen=True)
class FeatureQuality:
    feature: str
    day: date
    rows: int
    missing_share: float
    reference_missing: float
    stale_share: float
    out_of_range: float | None  # None for a categorical feature
    new_categories: list[str] | None  # None for a numeric feature


def stale_by_day(url: str, view: str, window: Window, max_age: timedelta) -> dict[date, float]:
    """Per snapshot day of the window, the share of predictions scored on a stale snapshot."""
    with db.connect(url) as conn:
        exists = conn.execute(LEDGER_EXISTS_SQL).fetchone()
        if exists is None or not exists[0]:
            return {}
        rows = conn.execute(
            STALE_BY_DAY_SQL,
            {"view": view, "max_age": max_age, "start": window.start, "end": window.end},
        ).fetchall()
    return {day: stale / count for day, count, stale in rows if count}


def feature_quality(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    stale: dict[date, float],
) -> list[FeatureQuality]:
    """Each feature's quality per snapshot day of `current` (which has an `event_timestamp` column)."""
    ranges = {name: _range(reference[name]) for name in numeric}
    categories = {name: set(reference[name].dropna().astype(str)) for name in categorical}
    reference_missing = {name: _missing(reference[name]) for name in [*numeric, *categorical]}
    days = pd.to_datetime(current["event_timestamp"], utc=True).dt.date
    results: list[FeatureQuality] = []
    for key, rows in current.groupby(days, sort=True).groups.items():
        day: date = key  # type: ignore[assignment]
        today = current.loc[rows]
        count = len(today)
        stale_share = stale.get(day, 0.0)
        for name in numeric:
            numbers = pd.to_numeric(today[name], errors="coerce").to_numpy(dtype="float64")
            present = ~np.isnan(numbers)
            low, high = ranges[name]
            outside = np.count_nonzero(present & ((numbers < low) | (numbers > high)))
            results.append(FeatureQuality(
                name, day, count, 1.0 - np.count_nonzero(present) / count, reference_missing[name], stale_share,
                outside / count, None,
            ))  # fmt: skip
        for name in categorical:
            values = today[name]
            new = sorted(set(values.dropna().astype(str)) - categories[name])[:NEW_CATEGORIES_SHOWN]
            results.append(FeatureQuality(
                name, day, count, float(values.isna().mean()), reference_missing[name], stale_share, None, new,
            ))  # fmt: skip
    return results


def window_missing(quality: list[FeatureQuality]) -> dict[str, tuple[float, float]]:
    """Per feature over the whole window: (missing share, the reference's missing share)."""
    totals: dict[str, list[float]] = {}
    for q in quality:
        entry = totals.setdefault(q.feature, [0.0, 0.0, q.reference_missing])
        entry[0] += q.missing_share * q.rows
        entry[1] += q.rows
    return {name: (missing / rows, ref) for name, (missing, rows, ref) in totals.items() if rows}


def _missing(values: pd.Series) -> float:
    return float(values.isna().mean()) if len(values) else 0.0


def _range(values: pd.Series) -> tuple[float, float]:
    """The reference's smallest and largest value (a reference without values: every served value is outside)."""
    known = pd.to_numeric(values, errors="coerce").dropna()
    return (float(known.min()), float(known.max())) if len(known) else (np.inf, -np.inf)
