"""When to retrain: the champion's drift, its realised quality, and the outcomes it has not learned from.

Three triggers, each a setting that can be turned off:

- **drift**: the share of drifted features in the champion's newest drift run is above CHURN_RETRAIN_DRIFT_SHARE;
- **quality**: the champion's realised ROC AUC over its newest CHURN_RETRAIN_AUC_WINDOW_DAYS days of outcomes
  (daily AUCs weighted by their rows) is below its test AUC minus CHURN_RETRAIN_AUC_MARGIN;
- **volume**: at least CHURN_RETRAIN_NEW_LABELLED_ROWS labelled snapshots have outcomes the champion never saw
  (their horizon ends after the version's `outcomes_seen_through`).

Every evaluation is kept, fired or not, with each trigger's value and threshold and the reason, in
`monitoring.retraining_evaluations`: "why did it retrain?" and "why didn't it?" both have an answer. Acting on a
fired evaluation (training a challenger, starting its experiment) is the entrypoints' (`flows/retrain.py`,
`churn retrain`); they record what they did with `record_action`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from psycopg import sql

from churn_platform import db
from churn_platform.connections import Connections
from churn_platform.experiments import records
from churn_platform.features.catalog import Catalog, catalog_from_settings
from churn_platform.features.snapshots import labels_table_name
from churn_platform.monitoring.checks import TEST_AUC_METRIC
from churn_platform.monitoring.drift_runs import resolve_version
from churn_platform.monitoring.performance_runs import newest_label_day
from churn_platform.settings import Settings
from churn_platform.training import pipeline, registry

LATEST_DRIFT_SQL = """
SELECT run_id, window_end, drift_share FROM monitoring.drift_runs
WHERE model_name = %(model)s AND model_version = %(version)s ORDER BY window_end DESC, run_id DESC LIMIT 1
"""
# The newest `days` days of realised outcomes of the version: daily AUCs weighted by their rows.
REALISED_AUC_SQL = """
WITH recent AS (
    SELECT day, rows, roc_auc FROM monitoring.performance
    WHERE model_name = %(model)s AND model_version = %(version)s AND horizon_days = %(horizon)s
      AND roc_auc IS NOT NULL
)
SELECT sum(rows * roc_auc) / sum(rows), sum(rows), min(day), max(day) FROM recent
WHERE day > (SELECT max(day) FROM recent) - %(days)s::integer
"""
# When the champion's current run of drifted windows began: the window of its first flagged run after its last calm
# one (runs in the order they ran).
DRIFT_ONSET_SQL = """
SELECT window_end FROM monitoring.drift_runs
WHERE model_name = %(model)s AND model_version = %(version)s AND drift_share > %(threshold)s
  AND run_id > COALESCE((SELECT max(run_id) FROM monitoring.drift_runs
                         WHERE model_name = %(model)s AND model_version = %(version)s
                           AND drift_share <= %(threshold)s), 0)
ORDER BY run_id LIMIT 1
"""
NEW_LABELS_SQL = """
SELECT count(*) FROM {labels}
WHERE horizon_days = %(horizon)s AND event_timestamp + make_interval(days => %(horizon)s::integer) > %(seen_through)s
"""
INSERT_SQL = """
INSERT INTO monitoring.retraining_evaluations (evaluated_at, model_name, champion_version, fired, reason, triggers)
VALUES (%(evaluated_at)s, %(model_name)s, %(champion_version)s, %(fired)s, %(reason)s, %(triggers)s) RETURNING id
"""
ACTION_SQL = "UPDATE monitoring.retraining_evaluations SET action = %(action)s WHERE id = %(id)s"
HISTORY_SQL = """
SELECT id, evaluated_at, champion_version, fired, reason, action FROM monitoring.retraining_evaluations
WHERE model_name = %(model)s ORDER BY evaluated_at DESC, id DESC LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Champion:
    """What the triggers need to know of the serving version (read from the registry by the entrypoint)."""

    version: str
    test_auc: float | None  # its ROC AUC on its test window, logged at training
    outcomes_seen_through: date | None  # the newest outcome day it learned from (its version tag)


@dataclass(frozen=True)
class Trigger:
    name: str  # drift / quality / volume
    enabled: bool
    fired: bool
    value: float | None  # None: nothing to judge yet
    threshold: float | None
    reason: str


@dataclass(frozen=True)
class Evaluation:
    model_name: str
    champion_version: str
    evaluated_at: datetime
    triggers: list[Trigger]
    evaluation_id: int | None = None
    action: str | None = field(default=None)

    @property
    def fired(self) -> bool:
        return any(trigger.fired for trigger in self.triggers)

    @property
    def reason(self) -> str:
        fired = [t.reason for t in self.triggers if t.fired]
        if fired:
            return "retrain: " + "; ".join(fired)
        return "no retraining: " + "; ".join(t.reason for t in self.triggers)


def evaluate(
    url: str, catalog: Catalog, settings: Settings, champion: Champion, *, now: datetime | None = None
) -> Evaluation:
    """Each trigger's value against its threshold for the champion (nothing stored: `record` keeps it)."""
    with db.connect(url, autocommit=True) as conn:
        keys = {"model": settings.model_name, "version": champion.version, "horizon": settings.label_horizon_days}
        drift_row = conn.execute(LATEST_DRIFT_SQL, keys).fetchone()
        auc_row = conn.execute(REALISED_AUC_SQL, {**keys, "days": settings.retrain_auc_window_days}).fetchone()
        new_labels = None
        if champion.outcomes_seen_through is not None and settings.retrain_new_labelled_rows is not None:
            seen = datetime.combine(champion.outcomes_seen_through + timedelta(days=1), datetime.min.time(), UTC)
            query = sql.SQL(NEW_LABELS_SQL).format(labels=labels_table_name(catalog))
            found = conn.execute(query, {"horizon": settings.label_horizon_days, "seen_through": seen}).fetchone()
            new_labels = 0 if found is None else int(found[0])
    triggers = [
        _drift(settings.retrain_drift_share, drift_row),
        _quality(settings, champion, auc_row),
        _volume(settings.retrain_new_labelled_rows, new_labels, champion),
    ]
    return Evaluation(settings.model_name, champion.version, now or datetime.now(UTC), triggers)


def _drift(threshold: float | None, row: tuple[Any, ...] | None) -> Trigger:
    if threshold is None:
        return Trigger("drift", False, False, None, None, "drift trigger off (CHURN_RETRAIN_DRIFT_SHARE)")
    if row is None:
        return Trigger("drift", True, False, None, threshold, "no drift run of the champion yet")
    run_id, window_end, share = row
    share = float(share)
    fired = share > threshold
    return Trigger("drift", True, fired, share, threshold,
                   f"drift share {share:.0%} {'>' if fired else '<='} {threshold:.0%} (drift run {run_id}, snapshots"
                   f" to {window_end:%Y-%m-%d})")  # fmt: skip


def _quality(settings: Settings, champion: Champion, row: tuple[Any, ...] | None) -> Trigger:
    margin = settings.retrain_auc_margin
    if margin is None:
        return Trigger("quality", False, False, None, None, "quality trigger off (CHURN_RETRAIN_AUC_MARGIN)")
    if champion.test_auc is None:
        return Trigger("quality", True, False, None, None, f"version {champion.version} logged no test AUC")
    floor = champion.test_auc - margin
    if row is None or row[0] is None:
        return Trigger("quality", True, False, None, floor, "no realised outcomes of the champion yet")
    auc, rows, first, last = float(row[0]), int(row[1]), row[2], row[3]
    fired = auc < floor
    return Trigger("quality", True, fired, auc, floor,
                   f"realised ROC AUC {auc:.3f} over {rows:,} predictions ({first} to {last})"
                   f" {'<' if fired else '>='} test AUC {champion.test_auc:.3f} - {margin:g}")  # fmt: skip


def _volume(threshold: int | None, new_labels: int | None, champion: Champion) -> Trigger:
    if threshold is None:
        return Trigger("volume", False, False, None, None, "volume trigger off (CHURN_RETRAIN_NEW_LABELLED_ROWS)")
    if new_labels is None:
        return Trigger("volume", True, False, None, float(threshold),
                       f"version {champion.version} records no outcomes_seen_through")  # fmt: skip
    fired = new_labels >= threshold
    return Trigger("volume", True, fired, float(new_labels), float(threshold),
                   f"{new_labels:,} labelled snapshots with outcomes after {champion.outcomes_seen_through}"
                   f" {'>=' if fired else '<'} {threshold:,}")  # fmt: skip


def record(url: str, evaluation: Evaluation) -> Evaluation:
    """Keep the evaluation (fired or not); return it with its id."""
    row = {
        "evaluated_at": evaluation.evaluated_at, "model_name": evaluation.model_name,
        "champion_version": evaluation.champion_version, "fired": evaluation.fired, "reason": evaluation.reason,
        "triggers": json.dumps([asdict(t) for t in evaluation.triggers]),
    }  # fmt: skip
    with db.connect(url) as conn, conn.transaction():
        found = conn.execute(INSERT_SQL, row).fetchone()
    assert found is not None
    return replace(evaluation, evaluation_id=int(found[0]))


def record_action(url: str, evaluation_id: int, action: str) -> None:
    """What the entrypoint did on a fired evaluation (the version trained, the experiment started)."""
    with db.connect(url) as conn, conn.transaction():
        conn.execute(ACTION_SQL, {"id": evaluation_id, "action": action})


def history(url: str, model_name: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest evaluations first."""
    with db.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(HISTORY_SQL, {"model": model_name, "limit": limit})
        columns = [d.name for d in cur.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


TRIGGER_COLUMNS = ("trigger", "on", "value", "threshold", "fired", "why")


def trigger_cells(trigger: Trigger) -> list[str]:
    """One trigger's row under TRIGGER_COLUMNS (the CLI's table and the Markdown summary)."""
    return [
        trigger.name, "yes" if trigger.enabled else "off", "-" if trigger.value is None else f"{trigger.value:.4g}",
        "-" if trigger.threshold is None else f"{trigger.threshold:.4g}", "yes" if trigger.fired else "no",
        trigger.reason,
    ]  # fmt: skip


def summary_markdown(evaluation: Evaluation) -> str:
    """The evaluation as Markdown (a Prefect artifact): each trigger, its value and threshold, and the decision."""
    lines = [
        f"# Retraining triggers: {evaluation.model_name} champion version {evaluation.champion_version}",
        "",
        f"**{'Fired' if evaluation.fired else 'Not fired'}:** {evaluation.reason}.",
        "",
        "| " + " | ".join(TRIGGER_COLUMNS) + " |",
        "|---" * len(TRIGGER_COLUMNS) + "|",
        *("| " + " | ".join(trigger_cells(t)) + " |" for t in evaluation.triggers),
    ]
    if evaluation.action:
        lines += ["", f"**Action:** {evaluation.action}"]
    return "\n".join(lines)


@dataclass(frozen=True)
class Retraining:
    """One evaluation of the triggers and what came of it."""

    evaluation: Evaluation
    version: str | None  # the challenger trained, when the triggers fired (or retraining was forced)
    experiment: str | None  # its A/B experiment against the champion, when one was started

    @property
    def action(self) -> str:
        """What was done, in a sentence (nothing fired: why not)."""
        return self.evaluation.action or self.evaluation.reason


def _waiting_for_outcomes(url: str, settings: Settings, evaluation: Evaluation, last: date | None) -> str | None:
    """Why a retraining the drift trigger alone asked for waits (None: it need not). Labels come a horizon late: a
    model trained before CHURN_RETRAIN_DRIFT_OUTCOME_DAYS days of outcomes of the changed world would learn the
    world before the change."""
    needed, threshold = settings.retrain_drift_outcome_days, settings.retrain_drift_share
    fired = {trigger.name for trigger in evaluation.triggers if trigger.fired}
    if needed is None or threshold is None or fired != {"drift"}:
        return None
    keys = {"model": evaluation.model_name, "version": evaluation.champion_version, "threshold": threshold}
    with db.connect(url) as conn:
        row = conn.execute(DRIFT_ONSET_SQL, keys).fetchone()
    if row is None or row[0] is None:
        return None
    onset = row[0].astimezone(UTC).date()
    have = 0 if last is None else max(0, (last - onset).days + 1)
    if have >= needed:
        return None
    return (
        f"waiting for outcomes: drift first flagged on snapshots to {onset}, labelled snapshots reach"
        f" {last or 'no day yet'} ({have} of the {needed} days after it that CHURN_RETRAIN_DRIFT_OUTCOME_DAYS asks"
        f" for); a model trained now would learn the world before the change"
    )


def champion_of(settings: Settings, connections: Connections) -> Champion:
    """The champion's version, test AUC and the outcomes it learned from, as the registry records them."""
    registered = resolve_version(settings, connections, None)
    seen = registered.tags.get("outcomes_seen_through")
    return Champion(registered.version, registered.metrics.get(TEST_AUC_METRIC),
                    date.fromisoformat(seen) if seen else None)  # fmt: skip


def retrain(settings: Settings, connections: Connections, *, if_needed: bool = True) -> Retraining:
    """Evaluate and record the triggers; when one fires (or always, without `if_needed`), train on the newest
    CHURN_RETRAIN_WINDOW_DAYS of labelled snapshots, register the version as `challenger`, and start its A/B
    experiment against the champion at CHURN_RETRAIN_AB_SHARE. While an experiment runs nothing is trained: the
    challenger under test gets its verdict first."""
    url = connections.database_url
    catalog = catalog_from_settings(settings)
    evaluation = record(url, evaluate(url, catalog, settings, champion_of(settings, connections)))
    assert evaluation.evaluation_id is not None
    if if_needed and not evaluation.fired:
        return Retraining(evaluation, None, None)
    running = records.running_experiment(url)
    if running is not None:  # a challenger is under test already: its verdict comes first
        action = f"not retrained: experiment {running.name} is testing {running.variant} against {running.control}"
        record_action(url, evaluation.evaluation_id, action)
        return Retraining(replace(evaluation, action=action), None, None)
    last = newest_label_day(url, settings)
    waiting = _waiting_for_outcomes(url, settings, evaluation, last) if if_needed else None
    if waiting is not None:
        record_action(url, evaluation.evaluation_id, waiting)
        return Retraining(replace(evaluation, action=waiting), None, None)
    start = None
    if settings.retrain_window_days is not None and last is not None:
        start = last - timedelta(days=settings.retrain_window_days - 1)
    trained = pipeline.train(settings, connections, start=start)
    assert trained.registered is not None
    version = trained.registered.version
    why = evaluation.reason if evaluation.fired else "retraining forced (churn retrain without --if-needed)"
    name = f"retrain-v{version}"
    experiment: str | None = name
    try:
        references = registry.model_references(connections.mlflow, settings.model_name)
        records.start_experiment(url, name, version, settings.retrain_ab_share, registered=references,
                                 created_by=f"retraining evaluation {evaluation.evaluation_id}")  # fmt: skip
        action = (
            f"trained version {version} ({trained.trained.candidate}, test ROC AUC"
            f" {trained.trained.evaluation.roc_auc:.3f}) on snapshots from {start or 'the first'} as `challenger`;"
            f" A/B experiment {name} started at {settings.retrain_ab_share:.0%} against the champion ({why})"
        )
    except records.ExperimentError as exc:
        experiment = None
        action = f"trained version {version} as `challenger`; no A/B experiment started: {exc} ({why})"
    record_action(url, evaluation.evaluation_id, action)
    return Retraining(replace(evaluation, action=action), version, experiment)
