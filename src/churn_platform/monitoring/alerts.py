"""Every alert of the platform in one table, `monitoring.alerts`: monitoring's checks and the service's own failures.

An alert is an episode of a condition (source, kind, subject): raised while it holds, it stays one row whose
`last_seen` and `occurrences` move; it ends when a person resolves it (`churn alerts resolve ID`) or the check that
raised it finds the condition gone. Resolved rows stay as history; the next occurrence opens a new row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import psycopg

from churn_platform import db

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "critical"]
SERVICE_SOURCE = "serving"
# The service's alerts: a version it refused to load leaves an alias unserved; the others degrade.
SERVICE_SEVERITY: dict[str, Severity] = {"model_refused": "critical"}

_COLUMNS = """id, severity, source, kind, subject, message, first_seen, last_seen, occurrences, resolved_at,
resolved_by, notified_at"""
RAISE_SQL = f"""
INSERT INTO monitoring.alerts AS a (severity, source, kind, subject, message, first_seen, last_seen)
VALUES (%(severity)s, %(source)s, %(kind)s, %(subject)s, %(message)s, %(seen)s, %(seen)s)
ON CONFLICT (source, kind, subject) WHERE resolved_at IS NULL DO UPDATE SET
    severity = excluded.severity, message = excluded.message, occurrences = a.occurrences + 1,
    last_seen = greatest(a.last_seen, excluded.last_seen)
RETURNING {_COLUMNS}, (xmax = 0) AS opened
"""
CLEAR_SQL = f"""
UPDATE monitoring.alerts SET resolved_at = %(at)s, resolved_by = %(by)s
WHERE source = %(source)s AND kind = %(kind)s AND subject = %(subject)s AND resolved_at IS NULL
RETURNING {_COLUMNS}
"""
RESOLVE_SQL = f"""
UPDATE monitoring.alerts SET resolved_at = %(at)s, resolved_by = %(by)s WHERE id = %(id)s AND resolved_at IS NULL
RETURNING {_COLUMNS}
"""
GET_SQL = f"SELECT {_COLUMNS} FROM monitoring.alerts WHERE id = %(id)s"
LIST_SQL = f"""
SELECT {_COLUMNS} FROM monitoring.alerts WHERE %(all)s OR resolved_at IS NULL
ORDER BY resolved_at IS NULL DESC, last_seen DESC, id DESC LIMIT %(limit)s
"""
NOTIFIED_SQL = "UPDATE monitoring.alerts SET notified_at = %(at)s WHERE id = %(id)s"
UNDELIVERED_SQL = f"""
SELECT {_COLUMNS} FROM monitoring.alerts WHERE resolved_at IS NULL AND notified_at IS NULL ORDER BY id LIMIT %(limit)s
"""


class AlertError(ValueError):
    """An alert that cannot be acted on as asked (no such alert, already resolved)."""


@dataclass(frozen=True)
class Alert:
    id: int
    severity: Severity
    source: str
    kind: str
    subject: str
    message: str
    first_seen: datetime
    last_seen: datetime
    occurrences: int
    resolved_at: datetime | None
    resolved_by: str | None
    notified_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True)
class Check:
    """One condition a run evaluated, and whether it holds now: holding raises it, not holding resolves it."""

    source: str
    kind: str
    subject: str
    holds: bool
    message: str
    severity: Severity = "warning"


@dataclass(frozen=True)
class Changes:
    """What applying checks did: alerts opened by this run, raised again, and resolved."""

    opened: list[Alert]
    repeated: list[Alert]
    resolved: list[Alert]


def raise_alert(
    conn: psycopg.Connection, source: str, kind: str, subject: str, message: str,
    severity: Severity = "warning", seen: datetime | None = None,
) -> tuple[Alert, bool]:  # fmt: skip
    """Raise a condition: a new alert if none is open for it, else the open one seen again. True when new."""
    row = conn.execute(
        RAISE_SQL,
        {"severity": severity, "source": source, "kind": kind, "subject": subject, "message": message,
         "seen": seen or datetime.now(UTC)},
    ).fetchone()  # fmt: skip
    assert row is not None
    return Alert(*row[:-1]), bool(row[-1])


def clear(conn: psycopg.Connection, source: str, kind: str, subject: str, by: str) -> Alert | None:
    """Resolve the open alert of a condition found gone, if there is one."""
    row = conn.execute(
        CLEAR_SQL, {"at": datetime.now(UTC), "by": by, "source": source, "kind": kind, "subject": subject}
    ).fetchone()
    return None if row is None else Alert(*row)


def apply_checks(conn: psycopg.Connection, checks: Iterable[Check], by: str) -> Changes:
    """Raise the checks that hold, resolve the open alerts of those that do not (resolved_by `by`)."""
    opened: list[Alert] = []
    repeated: list[Alert] = []
    resolved: list[Alert] = []
    for check in checks:
        if check.holds:
            alert, new = raise_alert(conn, check.source, check.kind, check.subject, check.message, check.severity)
            (opened if new else repeated).append(alert)
        elif (gone := clear(conn, check.source, check.kind, check.subject, by)) is not None:
            resolved.append(gone)
    for alert in opened:
        log.warning("alert %d opened (%s %s/%s): %s", alert.id, alert.severity, alert.source, alert.kind, alert.message)
    return Changes(opened, repeated, resolved)


def record_alert(url: str, kind: str, subject: str, message: str) -> tuple[Alert, bool]:
    """The service's sink: raise one of its conditions (a refused version, an unreachable registry, dropped log
    rows), logged too, as its failures must be visible after the fact. True when the alert is new."""
    log.warning("alert %s: %s: %s", kind, subject, message)
    with db.connect(url) as conn:
        return raise_alert(conn, SERVICE_SOURCE, kind, subject, message, SERVICE_SEVERITY.get(kind, "warning"))


def record_recovery(url: str, kind: str, subject: str) -> Alert | None:
    """The service's sink for a condition that ended (the registry answers again)."""
    with db.connect(url) as conn:
        return clear(conn, SERVICE_SOURCE, kind, subject, "the service: the condition ended")


def list_alerts(url: str, *, include_resolved: bool = False, limit: int = 50) -> list[Alert]:
    """Open alerts, newest first; with `include_resolved`, the history too (open ones first)."""
    with db.connect(url) as conn:
        return [Alert(*row) for row in conn.execute(LIST_SQL, {"all": include_resolved, "limit": limit})]


def resolve(url: str, alert_id: int, by: str) -> Alert:
    """Resolve one open alert by hand; it stays in the history."""
    with db.connect(url) as conn:
        row = conn.execute(RESOLVE_SQL, {"at": datetime.now(UTC), "by": by, "id": alert_id}).fetchone()
        if row is None:
            found = conn.execute(GET_SQL, {"id": alert_id}).fetchone()
            if found is None:
                raise AlertError(f"no alert {alert_id}")
            raise AlertError(f"alert {alert_id} was already resolved at {found[9]:%Y-%m-%d %H:%M} by {found[10]}")
    return Alert(*row)


def mark_notified(url: str, alert_id: int) -> None:
    with db.connect(url) as conn:
        conn.execute(NOTIFIED_SQL, {"at": datetime.now(UTC), "id": alert_id})


def undelivered(url: str, limit: int = 50) -> list[Alert]:
    """Open alerts no webhook has taken yet (an earlier delivery failed, or the webhook was set since)."""
    with db.connect(url) as conn:
        return [Alert(*row) for row in conn.execute(UNDELIVERED_SQL, {"limit": limit})]


def changes_markdown(changes: Changes) -> list[str]:
    """What a run did to the alerts, as Markdown list items."""
    lines = [f"- **{a.severity}** alert {a.id} opened: {a.message}" for a in changes.opened]
    lines += [f"- alert {a.id} still open ({a.occurrences} runs): {a.message}" for a in changes.repeated]
    lines += [f"- alert {a.id} resolved: {a.kind} of {a.subject}" for a in changes.resolved]
    return lines or ["No alert raised or resolved."]
