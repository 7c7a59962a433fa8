"""The story of a stretch of the platform's days, read back from what each step stored: per snapshot day, who served
how many users, the drift share and the realised (or, before outcomes arrive, estimated) ROC AUC of each model
version; the retraining evaluations with their reasons and actions; the A/B analyses and the decisions they led to.
`churn simulate` prints it; everything in it is also in PostgreSQL, the Prefect runs, MLflow and Evidently."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from churn_platform import db
from churn_platform.features.population import snapshot_time

SERVED_SQL = """
SELECT (snapshot_at AT TIME ZONE 'UTC')::date AS day, model_version, count(*) FROM serving.prediction_log
WHERE snapshot_at >= %(first)s AND snapshot_at < %(after)s AND predicted_at >= %(since)s
GROUP BY 1, 2
"""
# The newest drift run of each window ending on a day of the story (the champion of the time's).
DRIFT_SQL = """
SELECT DISTINCT ON (day) (window_end AT TIME ZONE 'UTC')::date AS day, model_version, drift_share, dataset_drift,
       report_path
FROM monitoring.drift_runs
WHERE model_name = %(model)s AND window_end >= %(first)s AND window_end < %(after)s AND ran_at >= %(since)s
ORDER BY day, ran_at DESC, run_id DESC
"""
REALISED_SQL = """
SELECT day, model_version, roc_auc, rows FROM monitoring.performance
WHERE model_name = %(model)s AND horizon_days = %(horizon)s AND day BETWEEN %(first_day)s AND %(last_day)s
"""
# The estimate that saw the most outcomes, for each version and day.
ESTIMATED_SQL = """
SELECT DISTINCT ON (day, model_version) day, model_version, roc_auc FROM monitoring.estimated_performance
WHERE model_name = %(model)s AND horizon_days = %(horizon)s AND day BETWEEN %(first_day)s AND %(last_day)s
ORDER BY day, model_version, outcome_days DESC, estimated_at DESC
"""
EVALUATIONS_SQL = """
SELECT id, evaluated_at, champion_version, fired, reason, action FROM monitoring.retraining_evaluations
WHERE model_name = %(model)s AND evaluated_at >= %(since)s ORDER BY evaluated_at, id
"""
ANALYSES_SQL = """
SELECT DISTINCT ON (name) name, analysed_at, winner, reason, decisive_test FROM serving.experiment_analyses
WHERE analysed_at >= %(since)s ORDER BY name, analysed_at DESC, id DESC
"""
DECISIONS_SQL = """
SELECT id, name, decided_at, winner, winner_version, action, champion_before, champion_after, reason
FROM serving.experiment_decisions WHERE decided_at >= %(since)s ORDER BY decided_at, id
"""
EXPERIMENTS_SQL = """
SELECT name, variant, variant_share, started_at, stopped_at, created_by FROM serving.experiments
WHERE started_at >= %(since)s OR stopped_at IS NULL OR stopped_at >= %(since)s ORDER BY started_at
"""


@dataclass(frozen=True)
class Day:
    day: date  # the snapshot day: a simulated day's traffic is scored on the next midnight's snapshot
    served: dict[str, int]  # model version -> predictions logged on this snapshot
    drift_share: float | None  # the newest drift run of the window ending here
    drift_flagged: bool | None
    drift_version: str | None  # the version whose reference the drift run compared against
    drift_report: str | None  # its Evidently HTML report
    realised_auc: dict[str, float | None]  # version -> ROC AUC once every outcome is known
    estimated_auc: dict[str, float | None]  # version -> the estimate that saw the most outcomes

    def auc(self, version: str) -> tuple[float | None, bool]:
        """The version's ROC AUC of the day and whether it is realised (else estimated)."""
        if version in self.realised_auc:
            return self.realised_auc[version], True
        return self.estimated_auc.get(version), False


@dataclass(frozen=True)
class Story:
    model_name: str
    horizon_days: int
    days: list[Day]
    evaluations: list[dict[str, Any]]
    experiments: list[dict[str, Any]]
    analyses: list[dict[str, Any]]  # the newest analysis of each experiment
    decisions: list[dict[str, Any]]
    versions: list[str] = field(default_factory=list)  # every version that served, or was trained or decided on


def _rows(cur: Any, statement: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    cur.execute(statement, params)
    names = [column.name for column in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def read_story(url: str, model_name: str, horizon_days: int, first_day: date, last_day: date,
               since: datetime) -> Story:  # fmt: skip
    """The story of the snapshot days [first_day, last_day], counting what was stored since `since`."""
    params = {
        "model": model_name, "horizon": horizon_days, "first": snapshot_time(first_day),
        "after": snapshot_time(last_day + timedelta(days=1)), "first_day": first_day, "last_day": last_day,
        "since": since,
    }  # fmt: skip
    with db.connect(url) as conn, conn.cursor() as cur:
        served = _rows(cur, SERVED_SQL, params)
        drift = {row["day"]: row for row in _rows(cur, DRIFT_SQL, params)}
        realised = _rows(cur, REALISED_SQL, params)
        estimated = _rows(cur, ESTIMATED_SQL, params)
        evaluations = _rows(cur, EVALUATIONS_SQL, params)
        experiments = _rows(cur, EXPERIMENTS_SQL, params)
        analyses = _rows(cur, ANALYSES_SQL, params)
        decisions = _rows(cur, DECISIONS_SQL, params)
    days = []
    for offset in range((last_day - first_day).days + 1):
        day = first_day + timedelta(days=offset)
        run = drift.get(day)
        days.append(Day(
            day,
            {row["model_version"]: int(row["count"]) for row in served if row["day"] == day},
            None if run is None else float(run["drift_share"]),
            None if run is None else bool(run["dataset_drift"]),
            None if run is None else str(run["model_version"]),
            None if run is None else run["report_path"],
            {row["model_version"]: row["roc_auc"] for row in realised if row["day"] == day},
            {row["model_version"]: row["roc_auc"] for row in estimated if row["day"] == day},
        ))  # fmt: skip
    versions = {version for d in days for version in d.served}
    versions |= {str(e["variant"]) for e in experiments if str(e["variant"]).isdigit()}
    versions |= {str(d["winner_version"]) for d in decisions if d["winner_version"]}
    versions |= {str(d["champion_before"]) for d in decisions if d["champion_before"]}
    ordered = sorted(versions, key=lambda v: (len(v), v))
    return Story(model_name, horizon_days, days, evaluations, experiments, analyses, decisions, ordered)
