"""A/B experiments in `serving.experiments`: start, stop, the running one, and what the prediction log holds per arm.

At most one experiment runs at a time (a partial unique index backs this up). An experiment runs from its start
until it is stopped or its planned end (`ends_at`) passes, whichever comes first: the service stops splitting
traffic at `ends_at` on its own, and the next start (or stop) records that end as `stopped_at`.

Every rule for starting one lives here, whoever starts it (the CLI, a flow, a notebook): the arguments, the arms'
models as the registry holds them at the start, and the planned end.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from churn_platform import db
from churn_platform.experiments.assignment import Arm, assign_arm
from churn_platform.model.aliases import CHAMPION, ModelReferences, is_version_number

log = logging.getLogger(__name__)

COLUMNS = "name, control, variant, variant_share, salt, started_at, ends_at, stopped_at, created_by"
# Starts and stops take this lock first, so two concurrent starts cannot both see "nothing running".
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('churn_platform.experiments.records'))"
SELECT_BY_NAME_SQL = f"SELECT {COLUMNS} FROM serving.experiments WHERE name = %(name)s"
SELECT_NOT_STOPPED_SQL = f"SELECT {COLUMNS} FROM serving.experiments WHERE stopped_at IS NULL"
LIST_SQL = f"SELECT {COLUMNS} FROM serving.experiments ORDER BY started_at, name"
INSERT_SQL = f"""
INSERT INTO serving.experiments (name, control, variant, variant_share, salt, ends_at, created_by)
VALUES (%(name)s, %(control)s, %(variant)s, %(variant_share)s, %(salt)s, %(ends_at)s, %(created_by)s)
RETURNING {COLUMNS}
"""
# An experiment whose planned end passed ended then: that is its stop time.
CLOSE_EXPIRED_SQL = """
UPDATE serving.experiments SET stopped_at = ends_at WHERE stopped_at IS NULL AND ends_at <= now() RETURNING name
"""
# Stopped now, or at its planned end if that came first (LEAST ignores a NULL ends_at).
STOP_NOT_STOPPED_SQL = f"""
UPDATE serving.experiments SET stopped_at = LEAST(now(), ends_at) WHERE stopped_at IS NULL RETURNING {COLUMNS}
"""
STOP_NAMED_SQL = f"""
UPDATE serving.experiments SET stopped_at = LEAST(now(), ends_at)
WHERE name = %(name)s AND stopped_at IS NULL RETURNING {COLUMNS}
"""
# A batch request's users can fall in both arms: `requests` counts the requests with at least one row in the arm.
ARM_SUMMARY_SQL = """
SELECT arm,
       count(DISTINCT request_id) AS requests,
       count(*) AS predictions,
       count(DISTINCT user_id) AS users,
       count(churn_probability) AS scored,
       avg(churn_probability) AS mean_probability,
       array_agg(DISTINCT model_version ORDER BY model_version) AS model_versions
FROM serving.prediction_log
WHERE experiment = %(name)s
GROUP BY arm
ORDER BY arm
"""


class ExperimentError(RuntimeError):
    """An experiment command was refused: invalid arguments, another one running, an unknown or reused name."""


@dataclass(frozen=True)
class Experiment:
    """One row of `serving.experiments`."""

    name: str
    control: str
    variant: str
    variant_share: float
    salt: str
    started_at: datetime
    ends_at: datetime | None
    stopped_at: datetime | None
    created_by: str | None

    def is_running(self, now: datetime | None = None) -> bool:
        """Not stopped, and its planned end (if any) is still ahead of `now` (default: the current time)."""
        now = now or datetime.now(UTC)
        return self.stopped_at is None and (self.ends_at is None or self.ends_at > now)

    def arm_for(self, user_id: str) -> Arm:
        """The user's arm in this experiment: the same on every request and in every process."""
        return assign_arm(self.name, self.salt, user_id, self.variant_share)


def planned_end(text: str) -> datetime:
    """An experiment's planned end from ISO 8601 text (`2026-07-01`, `2026-07-01T18:00+02:00`, `...Z`).

    A time written without a zone is UTC: the service and the database compare in UTC, wherever the command ran.
    Raises ValueError for text that is not such a time (a command-line parser reports it against its option).
    """
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"ends_at must be an ISO 8601 time such as 2026-07-01T18:00+02:00, got {text!r}") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def start_experiment(
    url: str,
    name: str,
    variant: str,
    variant_share: float,
    *,
    registered: ModelReferences,
    control: str = CHAMPION,
    ends_at: datetime | None = None,
    salt: str | None = None,
    created_by: str | None = None,
) -> Experiment:
    """Start an experiment sending `variant_share` of users to `variant` and the rest to `control`.

    `registered` is what the model registry holds now (`training.registry.model_references`): `variant` and
    `control` (an alias or a version number each) must name two different versions of it. Refused
    (ExperimentError, naming the parameter) for invalid arguments, a naive or past `ends_at`, another experiment
    running, or a `name` used before: a name identifies one experiment's log rows forever. The salt is random
    unless given; reusing a salt reproduces an assignment.
    """
    salt = secrets.token_hex(16) if salt is None else salt
    _validate(name, variant, variant_share, control, ends_at, salt)
    _check_arms(registered, variant, control)
    params = {
        "name": name, "control": control, "variant": variant, "variant_share": float(variant_share),
        "salt": salt, "ends_at": ends_at, "created_by": created_by,
    }  # fmt: skip
    with db.connect(url) as conn:
        conn.execute(LOCK_SQL)
        for (expired,) in conn.execute(CLOSE_EXPIRED_SQL).fetchall():
            log.info("experiment %s reached its planned end: recorded as stopped", expired)
        cur = conn.cursor(row_factory=class_row(Experiment))
        used = cur.execute(SELECT_BY_NAME_SQL, {"name": name}).fetchone()
        if used is not None:
            raise ExperimentError(
                f"experiment name {name!r} was already used (started {used.started_at:%Y-%m-%d %H:%M %Z}): "
                "choose a new name"
            )
        running = cur.execute(SELECT_NOT_STOPPED_SQL).fetchone()
        if running is not None:
            raise ExperimentError(
                f"experiment {running.name!r} is running ({running.variant} vs {running.control}): stop it first"
            )
        try:
            experiment = cur.execute(INSERT_SQL, params).fetchone()
        except psycopg.IntegrityError as exc:  # a check the validation did not foresee, or a lost race
            raise ExperimentError(f"could not start experiment {name!r}: {exc.diag.message_primary}") from exc
    assert experiment is not None
    log.info(
        "started experiment %s: %.1f%% of users to %s, the rest to %s",
        name, 100 * experiment.variant_share, variant, control,
    )  # fmt: skip
    return experiment


def stop_experiment(url: str, name: str | None = None) -> Experiment:
    """Stop the running experiment, or the one named; its assignment and log rows stay for the analysis."""
    with db.connect(url) as conn:
        conn.execute(LOCK_SQL)
        cur = conn.cursor(row_factory=class_row(Experiment))
        if name is None:
            stopped = cur.execute(STOP_NOT_STOPPED_SQL).fetchone()
            if stopped is None:
                raise ExperimentError("no experiment is running: nothing to stop")
        else:
            stopped = cur.execute(STOP_NAMED_SQL, {"name": name}).fetchone()
            if stopped is None:
                known = cur.execute(SELECT_BY_NAME_SQL, {"name": name}).fetchone()
                if known is None:
                    raise ExperimentError(f"no experiment named {name!r}")
                assert known.stopped_at is not None
                raise ExperimentError(
                    f"experiment {name!r} was already stopped at {known.stopped_at:%Y-%m-%d %H:%M %Z}"
                )
    log.info("stopped experiment %s", stopped.name)
    return stopped


def running_experiment(url: str, now: datetime | None = None) -> Experiment | None:
    """The experiment the service routes by at `now` (default: the current time), or None."""
    with db.connect(url, autocommit=True) as conn:
        experiment = conn.cursor(row_factory=class_row(Experiment)).execute(SELECT_NOT_STOPPED_SQL).fetchone()
    if experiment is None or not experiment.is_running(now):
        return None
    return experiment


def list_experiments(url: str) -> list[Experiment]:
    """Every experiment, oldest first."""
    with db.connect(url, autocommit=True) as conn:
        return conn.cursor(row_factory=class_row(Experiment)).execute(LIST_SQL).fetchall()


def experiment_summary(url: str, name: str) -> dict[str, Any]:
    """The experiment and, per arm, its logged requests, predictions, users and mean churn probability.

    `control` and `variant` are always present (zero counts before any traffic); `fallback` appears when users
    of an arm were answered by the champion because the arm's model was not loaded.
    """
    with db.connect(url, autocommit=True) as conn:
        experiment = conn.cursor(row_factory=class_row(Experiment)).execute(SELECT_BY_NAME_SQL, {"name": name})
        found = experiment.fetchone()
        if found is None:
            raise ExperimentError(f"no experiment named {name!r}")
        rows = conn.execute(ARM_SUMMARY_SQL, {"name": name}).fetchall()
    arms: dict[str, dict[str, Any]] = {arm: _arm_counts() for arm in ("control", "variant")}
    for arm, requests, predictions, users, scored, mean_probability, versions in rows:
        arms[arm] = _arm_counts(requests, predictions, users, scored, mean_probability, list(versions))
    return {
        "name": found.name, "control": found.control, "variant": found.variant,
        "variant_share": found.variant_share, "started_at": found.started_at, "ends_at": found.ends_at,
        "stopped_at": found.stopped_at, "created_by": found.created_by, "running": found.is_running(),
        "arms": arms,
    }  # fmt: skip


def _arm_counts(
    requests: int = 0,
    predictions: int = 0,
    users: int = 0,
    scored: int = 0,
    mean_probability: float | None = None,
    model_versions: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "requests": requests, "predictions": predictions, "users": users, "scored": scored,
        "mean_probability": mean_probability, "model_versions": model_versions or [],
    }  # fmt: skip


def _check_arms(registered: ModelReferences, variant: str, control: str) -> None:
    """Each arm names a version the registry holds, and not the same one: the service would route a missing arm's
    users to the champion, and two arms on one version compare nothing."""
    versions = {}
    for parameter, reference in (("variant", variant), ("control", control)):
        version = registered.resolve(reference)
        if version is None:
            if is_version_number(reference):
                kind, kinds, known = "version", "versions", sorted(registered.versions, key=int)
            else:
                kind, kinds, known = "alias", "aliases", sorted(registered.aliases)
            raise ExperimentError(
                f"{parameter}: model {registered.model_name} has no {kind} {reference!r}"
                f" (its {kinds}: {', '.join(known) or 'none'})"
            )
        versions[parameter] = version
    if versions["variant"] == versions["control"]:
        raise ExperimentError(
            f"variant {variant!r} and control {control!r} are both version {versions['variant']} of"
            f" {registered.model_name}: an experiment compares two models"
        )


def _validate(name: str, variant: str, variant_share: float, control: str, ends_at: datetime | None, salt: str) -> None:
    """Refuse arguments the table would refuse, with the parameter's name in the message."""
    for parameter, value in (("name", name), ("variant", variant), ("control", control), ("salt", salt)):
        if not isinstance(value, str) or not value.strip():
            raise ExperimentError(f"{parameter} must be a non-empty string, got {value!r}")
    if variant == control:
        raise ExperimentError(f"variant and control are both {variant!r}: an experiment compares two models")
    if isinstance(variant_share, bool) or not isinstance(variant_share, int | float) or math.isnan(variant_share):
        raise ExperimentError(f"variant_share must be a number strictly between 0 and 1, got {variant_share!r}")
    if not 0 < variant_share < 1:
        raise ExperimentError(f"variant_share must be strictly between 0 and 1, got {variant_share!r}")
    if ends_at is not None:
        if ends_at.tzinfo is None or ends_at.utcoffset() is None:
            raise ExperimentError(f"ends_at must be timezone-aware (a naive time is ambiguous), got {ends_at!r}")
        if ends_at <= datetime.now(UTC):
            raise ExperimentError(f"ends_at must be in the future, got {ends_at.isoformat()}")
