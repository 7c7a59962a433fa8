"""A synthetic world's daily traffic: the users active on a simulated day ask the prediction service for their
score over HTTP, as the product's own backend would, and the answers are logged by the service as any others."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import date, timedelta

from churn_platform import db
from churn_platform.features.population import snapshot_time
from churn_platform.serving.client import ServiceClient

ACTIVE_USERS_SQL = """
SELECT DISTINCT user_id FROM raw.events
WHERE event_timestamp >= %(start)s AND event_timestamp < %(end)s
ORDER BY user_id
"""
LOGGED_SQL = "SELECT count(*) FROM serving.prediction_log WHERE request_id = ANY(%(ids)s)"


class TrafficError(RuntimeError):
    """The day's traffic could not be served or logged."""


@dataclass(frozen=True)
class DayTraffic:
    day: date  # the simulated day whose active users were scored
    users: int
    by_status: dict[str, int]
    by_version: dict[str, int]  # answers per model version that served them
    by_arm: dict[str, int]
    request_ids: list[str]
    seconds: float

    def sentence(self) -> str:
        versions = ", ".join(f"v{version}: {count:,}" for version, count in self.by_version.items())
        arms = ", ".join(f"{arm}: {count:,}" for arm, count in self.by_arm.items())
        return f"{self.day}: {self.users:,} active users scored ({versions}; {arms}) in {self.seconds:.1f} s"


def active_users(url: str, day: date) -> list[str]:
    """The users with at least one event on `day` (UTC)."""
    start = snapshot_time(day)
    with db.connect(url) as conn:
        rows = conn.execute(ACTIVE_USERS_SQL, {"start": start, "end": start + timedelta(days=1)}).fetchall()
    return [row[0] for row in rows]


def serve_day(url: str, client: ServiceClient, day: date, *, log_timeout_s: float = 60.0) -> DayTraffic:
    """Send `day`'s active users to the service's `/predict_batch` and wait until the service has logged every
    answer (monitoring and the A/B analysis read the log next)."""
    started = time.perf_counter()
    users = active_users(url, day)
    answers = client.predict_batch(users)
    wait_for_log(url, answers.request_ids, len(answers.results), timeout_s=log_timeout_s)
    return DayTraffic(
        day, len(users), answers.count_by("status"), answers.count_by("model_version"), answers.count_by("arm"),
        answers.request_ids, time.perf_counter() - started,
    )  # fmt: skip


def wait_for_log(url: str, request_ids: list[str], rows: int, *, timeout_s: float) -> None:
    """Wait until the prediction log holds `rows` rows of these requests (the service writes it in the background)."""
    ids = [uuid.UUID(request_id) for request_id in request_ids]
    deadline = time.monotonic() + timeout_s
    logged = 0
    while True:
        with db.connect(url) as conn:
            row = conn.execute(LOGGED_SQL, {"ids": ids}).fetchone()
        logged = int(row[0]) if row else 0
        if logged >= rows:
            return
        if time.monotonic() > deadline:
            raise TrafficError(
                f"the prediction log holds {logged:,} of the {rows:,} answers after {timeout_s:.0f} s: is the service"
                " failing to write it (see its log and `churn alerts`)?"
            )
        time.sleep(0.2)
