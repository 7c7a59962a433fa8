"""Estimated performance before the outcomes arrive: confidence-based performance estimation (CBPE, as NannyML does).

Outcomes come a full horizon late, so realised figures notice a decaying model a horizon late. A calibrated model's
score p is the probability its user churns, so the scores alone say what the figures should be, if the relation
between features and churn has not changed (covariate shift is fine; a changed concept is what realised figures,
later, catch):
- positive rate: the mean score;
- Brier score: E[(y - p)^2] = mean of p (1 - p);
- ROC AUC: the expected share of (churner, stayer) pairs ranked right, each pair (i, j) counting p_i (1 - p_j),
  over the expected number of such pairs (ties count half): the ratio of expectations, one O(n log n) pass.

Per model version and snapshot day, from the scores the version served (each user's newest on each snapshot), stored
in `monitoring.estimated_performance`; the realised figures join them there once outcomes arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from churn_platform import db

# Each (version, user, snapshot)'s newest score on the snapshot days in [start, end).
SERVED_SCORES_SQL = """
SELECT DISTINCT ON (model_version, user_id, snapshot_at) model_version, snapshot_at, churn_probability
FROM serving.prediction_log
WHERE snapshot_at >= %(start)s AND snapshot_at < %(end)s AND churn_probability IS NOT NULL
ORDER BY model_version, user_id, snapshot_at, predicted_at DESC
"""
UPSERT_SQL = """
INSERT INTO monitoring.estimated_performance
    (model_name, model_version, day, horizon_days, rows, roc_auc, brier, positive_rate, estimated_at)
VALUES (%(model_name)s, %(model_version)s, %(day)s, %(horizon_days)s, %(rows)s, %(roc_auc)s, %(brier)s,
        %(positive_rate)s, %(estimated_at)s)
ON CONFLICT (model_name, model_version, day, horizon_days) DO UPDATE SET
    rows = EXCLUDED.rows, roc_auc = EXCLUDED.roc_auc, brier = EXCLUDED.brier,
    positive_rate = EXCLUDED.positive_rate, estimated_at = EXCLUDED.estimated_at
"""
# Past days with both an estimate and realised figures: how close the estimates came.
COMPARED_SQL = """
SELECT e.model_version, e.day, e.rows, e.roc_auc, p.roc_auc, e.brier, p.brier, e.positive_rate, p.positive_rate
FROM monitoring.estimated_performance e
JOIN monitoring.performance p USING (model_name, model_version, day, horizon_days)
WHERE e.model_name = %(model_name)s AND e.horizon_days = %(horizon)s AND e.day BETWEEN %(first)s AND %(last)s
ORDER BY e.model_version, e.day
"""
Scores = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Estimate:
    rows: int
    roc_auc: float | None  # None when no pair of users can be ordered (every score 0, or every score 1)
    brier: float
    positive_rate: float


@dataclass(frozen=True)
class Comparison:
    """One version and day: the estimate beside the realised figures."""

    model_version: str
    day: date
    rows: int
    estimated_auc: float | None
    realised_auc: float | None
    estimated_brier: float
    realised_brier: float
    estimated_rate: float
    realised_rate: float

    @property
    def auc_error(self) -> float | None:
        if self.estimated_auc is None or self.realised_auc is None:
            return None
        return self.estimated_auc - self.realised_auc


def expected_auc(scores: Scores) -> float | None:
    """The expected ROC AUC of calibrated scores whose outcomes are not known yet (ratio of expectations)."""
    p = np.sort(np.asarray(scores, dtype="float64"))
    stay = 1.0 - p
    # Expected stayers scored strictly below each score, and at the same score, by run of equal scores.
    _, first = np.unique(p, return_index=True)
    stay_before = np.concatenate(([0.0], np.cumsum(stay)))[first]  # stayers strictly below each distinct score
    stay_tied = np.add.reduceat(stay, first)
    churn_tied = np.add.reduceat(p, first)
    # A churner at a score ranks right above every stayer below it, half right against the others at its score
    # (itself excluded: a user is not paired with themselves).
    self_pairs = np.add.reduceat(p * stay, first)
    right = float(np.sum(churn_tied * stay_before + 0.5 * (churn_tied * stay_tied - self_pairs)))
    pairs = float(p.sum() * stay.sum() - np.sum(p * stay))
    return right / pairs if pairs > 0 else None


def estimate(scores: Scores) -> Estimate:
    p = np.asarray(scores, dtype="float64")
    return Estimate(len(p), expected_auc(p), float(np.mean(p * (1.0 - p))), float(np.mean(p)))


def served_scores(url: str, first: date, last: date) -> pd.DataFrame:
    """model_version, day and churn_probability of every (version, user, snapshot) served on the days."""
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    with db.connect(url) as conn, conn.cursor() as cur:
        cur.execute(SERVED_SCORES_SQL, {"start": start, "end": end})
        frame = pd.DataFrame(cur.fetchall(), columns=["model_version", "snapshot_at", "churn_probability"])
    frame["day"] = pd.to_datetime(frame["snapshot_at"], utc=True).dt.date
    return frame.drop(columns="snapshot_at")


def daily_estimates(scores: pd.DataFrame) -> dict[tuple[str, date], Estimate]:
    """Per (model version, snapshot day), the estimate from that day's served scores."""
    found: dict[tuple[str, date], Estimate] = {}
    for (version, day), group in scores.groupby(["model_version", "day"], sort=True):
        found[(str(version), day)] = estimate(group["churn_probability"].to_numpy(dtype="float64"))  # type: ignore[index]
    return found


def store(url: str, model_name: str, horizon: int, by_day: dict[tuple[str, date], Estimate], at: datetime) -> None:
    rows: list[dict[str, Any]] = [
        {"model_name": model_name, "model_version": version, "day": day, "horizon_days": horizon, **vars(e),
         "estimated_at": at}
        for (version, day), e in by_day.items()
    ]  # fmt: skip
    with db.connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany(UPSERT_SQL, rows)


def compared(url: str, model_name: str, horizon: int, first: date, last: date) -> list[Comparison]:
    """Days with both an estimate and realised figures, for each version."""
    with db.connect(url) as conn:
        rows = conn.execute(
            COMPARED_SQL, {"model_name": model_name, "horizon": horizon, "first": first, "last": last}
        ).fetchall()
    return [Comparison(*row) for row in rows]
