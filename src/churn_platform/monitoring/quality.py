"""Data quality of the served features, per feature and snapshot day, against the version's reference sample.

- missing: the share of served (user, snapshot) rows without a value, beside the reference's own share (a count of
  days since a first purchase is rightly empty for someone who never bought: only a rise is news);
- stale: the share of the day's predictions whose features were older than the service's feature age limit
  (`CHURN_SERVE_FEATURE_MAX_AGE_HOURS`) when they were served: their snapshot was that much older than the feature
  clock of the moment (the newest snapshot materialized by then, `features.online_materializations`), or the newest
  materialization before the prediction had run that long before it on the wall clock (the online store stopped
  moving: the feature clock stops with it, so the first rule alone would never see it). A prediction made before
  any materialization is not judged (NULL when no prediction of the day is). The service reads one feature view, so
  every feature of a row is stale or fresh together;
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
# The feature clock after each materialization: the newest snapshot materialized so far.
CLOCKS_SQL = """
SELECT materialized_at, max(end_at) OVER (ORDER BY materialized_at) FROM features.online_materializations
WHERE feature_view = %(view)s ORDER BY materialized_at
"""
# The window's predictions (with features): when they were made, and on which snapshot.
PREDICTIONS_SQL = """
SELECT predicted_at, snapshot_at FROM serving.prediction_log WHERE snapshot_at > %(start)s AND snapshot_at <= %(end)s
"""


@dataclass(frozen=True)
class FeatureQuality:
    feature: str
    day: date
    rows: int
    missing_share: float
    reference_missing: float
    stale_share: float | None  # None: no prediction of the day could be judged
    out_of_range: float | None  # None for a categorical feature
    new_categories: list[str] | None  # None for a numeric feature


def stale_by_day(url: str, view: str, window: Window, max_age: timedelta) -> dict[date, float | None]:
    """Per snapshot day of the window, the share of its judged predictions that were served stale (None: none
    could be judged, as no materialization had run before them)."""
    with db.connect(url) as conn:
        exists = conn.execute(LEDGER_EXISTS_SQL).fetchone()
        clocks = conn.execute(CLOCKS_SQL, {"view": view}).fetchall() if exists is not None and exists[0] else []
        with conn.cursor() as cur:
            cur.execute(PREDICTIONS_SQL, {"start": window.start, "end": window.end})
            served = pd.DataFrame(cur.fetchall(), columns=["predicted_at", "snapshot_at"])
    if served.empty:
        return {}
    predicted = pd.to_datetime(served["predicted_at"], utc=True).to_numpy(dtype="datetime64[us]")
    snapshot = pd.to_datetime(served["snapshot_at"], utc=True)
    days = snapshot.dt.date.to_numpy()
    judged = np.zeros(len(served), dtype=bool)
    stale = np.zeros(len(served), dtype=bool)
    if clocks:
        ran = pd.to_datetime([c[0] for c in clocks], utc=True).to_numpy(dtype="datetime64[us]")
        clock = pd.to_datetime([c[1] for c in clocks], utc=True).to_numpy(dtype="datetime64[us]")
        latest = np.searchsorted(ran, predicted, side="right") - 1  # the newest materialization before each
        judged = latest >= 0
        at = np.maximum(latest, 0)
        limit = np.timedelta64(int(max_age.total_seconds() * 1e6), "us")
        age_at_clock = clock[at] - snapshot.to_numpy(dtype="datetime64[us]")
        stale = judged & ((age_at_clock > limit) | (predicted - ran[at] > limit))
    found: dict[date, float | None] = {}
    frame = pd.DataFrame({"day": days, "judged": judged, "stale": stale})
    for day, group in frame.groupby("day", sort=True):
        count = int(group["judged"].sum())
        found[day] = float(group["stale"].sum()) / count if count else None  # type: ignore[index]
    return found


def feature_quality(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    stale: dict[date, float | None],
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
        stale_share = stale.get(day)
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


@dataclass(frozen=True)
class WindowQuality:
    """One feature over a whole window: missing share (and the reference's), the worst day's stale and
    out-of-range shares, the new categories seen."""

    feature: str
    missing_share: float
    reference_missing: float
    worst_stale: float | None  # None: no day could be judged
    worst_out_of_range: float | None  # None for a categorical feature
    new_categories: list[str]


def window_summary(quality: list[FeatureQuality]) -> list[WindowQuality]:
    """Per feature, in name order, its quality over every day of the window (missing shares weighted by rows)."""
    by_feature: dict[str, list[FeatureQuality]] = {}
    for q in quality:
        by_feature.setdefault(q.feature, []).append(q)
    summary = []
    for feature, days in sorted(by_feature.items()):
        rows = sum(q.rows for q in days)
        stale = [q.stale_share for q in days if q.stale_share is not None]
        outside = [q.out_of_range for q in days if q.out_of_range is not None]
        summary.append(WindowQuality(
            feature, sum(q.missing_share * q.rows for q in days) / rows, days[0].reference_missing,
            max(stale) if stale else None, max(outside) if outside else None,
            sorted({c for q in days for c in (q.new_categories or [])}),
        ))  # fmt: skip
    return summary


def _missing(values: pd.Series) -> float:
    return float(values.isna().mean()) if len(values) else 0.0


def _range(values: pd.Series) -> tuple[float, float]:
    """The reference's smallest and largest value (a reference without values: every served value is outside)."""
    known = pd.to_numeric(values, errors="coerce").dropna()
    return (float(known.min()), float(known.max())) if len(known) else (np.inf, -np.inf)
