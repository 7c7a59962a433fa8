"""Realised performance: each served prediction joined with its outcome once the horizon has passed.

A prediction is joined through the snapshot it was scored on (`serving.prediction_log.snapshot_at`) to that
snapshot's label (`features.<catalog>_labels`, horizon H). The labels table only holds a snapshot's label once
its H days have passed in the data, so a prediction whose horizon has not passed is never joined. A user scored
several times on one snapshot by one version counts once (the newest score).

Per model version and snapshot day: rows, positives, ROC AUC and PR AUC (average precision; None with one class),
log loss, Brier score, expected calibration error (10 equal-width bins of the score: the rows' share of each bin
times |churn rate - mean score| there, summed), the positive rate and the mean score. Stored in
`monitoring.performance`, one row per (model, version, day, horizon), recomputed figures replacing earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import numpy.typing as npt
import pandas as pd
from psycopg import sql
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from churn_platform import db
from churn_platform.features.catalog import Catalog
from churn_platform.features.snapshots import labels_table_name

CALIBRATION_BINS = 10
PROBABILITY_CLIP = 1e-15  # log loss of a probability of exactly 0 or 1

# Each (version, user, snapshot)'s newest score in the range, with the snapshot's label where it exists.
JOINED_SQL = """
SELECT p.model_version, p.user_id, p.snapshot_at, p.churn_probability, l.churned
FROM (
    SELECT DISTINCT ON (model_version, user_id, snapshot_at) model_version, user_id, snapshot_at, churn_probability
    FROM serving.prediction_log
    WHERE snapshot_at >= %(start)s AND snapshot_at < %(end)s AND churn_probability IS NOT NULL
    ORDER BY model_version, user_id, snapshot_at, predicted_at DESC
) p
JOIN {labels} l ON l.user_id = p.user_id AND l.event_timestamp = p.snapshot_at AND l.horizon_days = %(horizon)s
ORDER BY p.model_version, p.snapshot_at, p.user_id
"""
UPSERT_SQL = """
INSERT INTO monitoring.performance (
    model_name, model_version, day, horizon_days, rows, positives, roc_auc, pr_auc, log_loss, brier,
    calibration_error, positive_rate, mean_score, evaluated_at
) VALUES (
    %(model_name)s, %(model_version)s, %(day)s, %(horizon_days)s, %(rows)s, %(positives)s, %(roc_auc)s, %(pr_auc)s,
    %(log_loss)s, %(brier)s, %(calibration_error)s, %(positive_rate)s, %(mean_score)s, %(evaluated_at)s
)
ON CONFLICT (model_name, model_version, day, horizon_days) DO UPDATE SET
    rows = EXCLUDED.rows, positives = EXCLUDED.positives, roc_auc = EXCLUDED.roc_auc, pr_auc = EXCLUDED.pr_auc,
    log_loss = EXCLUDED.log_loss, brier = EXCLUDED.brier, calibration_error = EXCLUDED.calibration_error,
    positive_rate = EXCLUDED.positive_rate, mean_score = EXCLUDED.mean_score, evaluated_at = EXCLUDED.evaluated_at
"""


@dataclass(frozen=True)
class Figures:
    rows: int
    positives: int
    roc_auc: float | None
    pr_auc: float | None
    log_loss: float
    brier: float
    calibration_error: float
    positive_rate: float
    mean_score: float


def calibration_error(y: npt.ArrayLike, p: npt.ArrayLike, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error over equal-width bins of the score (a score of 1 falls in the last bin)."""
    labels = np.asarray(y, dtype=np.float64)
    scores = np.asarray(p, dtype=np.float64)
    which = np.minimum((scores * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    used = count > 0
    rate = np.bincount(which, weights=labels, minlength=bins)[used] / count[used]
    mean = np.bincount(which, weights=scores, minlength=bins)[used] / count[used]
    return float(np.sum(count[used] / len(scores) * np.abs(rate - mean)))


def figures(y: npt.ArrayLike, p: npt.ArrayLike) -> Figures:
    """The realised figures of scores `p` against outcomes `y` (1: churned)."""
    labels = np.asarray(y, dtype=np.int64)
    scores = np.asarray(p, dtype=np.float64)
    if labels.size == 0:
        raise ValueError("no joined rows to evaluate")
    both = len(np.unique(labels)) == 2
    clipped = np.clip(scores, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return Figures(
        rows=int(labels.size),
        positives=int(labels.sum()),
        roc_auc=float(roc_auc_score(labels, scores)) if both else None,
        pr_auc=float(average_precision_score(labels, scores)) if both else None,
        log_loss=float(log_loss(labels, clipped, labels=[0, 1])),
        brier=float(brier_score_loss(labels, scores)),
        calibration_error=calibration_error(labels, scores),
        positive_rate=float(labels.mean()),
        mean_score=float(scores.mean()),
    )


def joined_predictions(url: str, catalog: Catalog, horizon_days: int, start: datetime, end: datetime) -> pd.DataFrame:
    """model_version, user_id, snapshot_at, churn_probability, churned of every prediction scored on a snapshot in
    [start, end) whose label is known."""
    statement = sql.SQL(JOINED_SQL).format(labels=labels_table_name(catalog))
    with db.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, {"start": start, "end": end, "horizon": horizon_days})
        frame = pd.DataFrame(
            cur.fetchall(), columns=["model_version", "user_id", "snapshot_at", "churn_probability", "churned"]
        )
    return frame.astype({"churn_probability": "float64", "churned": "int64"})


def daily_figures(joined: pd.DataFrame) -> dict[tuple[str, date], Figures]:
    """Figures per (model version, snapshot day, UTC)."""
    frame = joined.assign(day=pd.to_datetime(joined["snapshot_at"], utc=True).dt.date)
    found: dict[tuple[str, date], Figures] = {}
    for (version, day), rows in frame.groupby(["model_version", "day"], sort=True):
        found[(str(version), day)] = figures(rows["churned"], rows["churn_probability"])  # type: ignore[index]
    return found


def store(
    url: str, model_name: str, horizon_days: int, by_day: dict[tuple[str, date], Figures], evaluated_at: datetime
) -> None:
    """Upsert the figures, all in one transaction."""
    shared = {"model_name": model_name, "horizon_days": horizon_days, "evaluated_at": evaluated_at}
    rows = [{**shared, "model_version": version, "day": day, **vars(f)} for (version, day), f in by_day.items()]
    with db.connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany(UPSERT_SQL, rows)
