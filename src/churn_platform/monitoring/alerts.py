"""Alerts the service raises about itself (a refused model version, an unreachable registry), kept in PostgreSQL."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from churn_platform import db

log = logging.getLogger(__name__)

RECORD_ALERT_SQL = "INSERT INTO serving.alerts (kind, subject, message) VALUES (%(kind)s, %(subject)s, %(message)s)"
RECENT_ALERTS_SQL = """
SELECT raised_at, kind, subject, message FROM serving.alerts ORDER BY raised_at DESC, id DESC LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Alert:
    raised_at: datetime
    kind: str
    subject: str
    message: str


def record_alert(url: str, kind: str, subject: str, message: str) -> None:
    """Keep an alert (and log it): the service's own failures must be visible after the fact."""
    log.warning("alert %s: %s: %s", kind, subject, message)
    with db.connect(url) as conn:
        conn.execute(RECORD_ALERT_SQL, {"kind": kind, "subject": subject, "message": message})


def recent_alerts(url: str, limit: int = 20) -> list[Alert]:
    with db.connect(url) as conn:
        return [Alert(*row) for row in conn.execute(RECENT_ALERTS_SQL, {"limit": limit})]
