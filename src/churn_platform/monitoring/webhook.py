"""Alert delivery to a webhook: a JSON POST whose `text` chat tools (Slack, Mattermost, Rocket.Chat, Teams'
incoming webhooks) show as a message, with the alert's fields beside it for anything else that listens.

Delivery never blocks monitoring and never fails it: it runs on a background thread after the run's figures and
alerts are stored, retries a failed POST with a growing pause, and records `notified_at` on the alerts it delivered
(an undelivered alert keeps NULL there and is still listed by `churn alerts`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import psycopg

from churn_platform.monitoring import alerts
from churn_platform.settings import Settings

log = logging.getLogger(__name__)

ICONS = {"critical": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}


def payload(alert: alerts.Alert) -> dict[str, Any]:
    """The JSON body for one alert, opened or resolved."""
    state = "open" if alert.is_open else "resolved"
    headline = "resolved" if not alert.is_open else alert.severity.upper()
    text = f"{ICONS.get(alert.severity, '')} [{headline}] churn-platform {alert.source}/{alert.kind}"
    text += f" ({alert.subject}): {alert.message}".rstrip() if alert.subject else f": {alert.message}"
    return {
        "text": text.strip(),
        "alert": {
            "id": alert.id, "state": state, "severity": alert.severity, "source": alert.source, "kind": alert.kind,
            "subject": alert.subject, "message": alert.message, "first_seen": alert.first_seen.isoformat(),
            "last_seen": alert.last_seen.isoformat(), "occurrences": alert.occurrences,
        },
    }  # fmt: skip


@dataclass
class Webhook:
    """Posts alerts to `url` on a background thread; `wait` lets a short-lived command finish delivering."""

    url: str
    database_url: str
    attempts: int = 3
    timeout_s: float = 5.0
    backoff_s: float = 0.5
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    def send(self, changes: alerts.Changes) -> None:
        """Deliver the alerts a run opened and resolved (an alert raised again is not news), and any open alert an
        earlier delivery did not get through."""
        self._threads = [t for t in self._threads if t.is_alive()]
        news = changes.opened + changes.resolved
        thread = threading.Thread(target=self._deliver, args=(news,), name="churn-alert-webhook", daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for deliveries under way, at most about every attempt's timeout and pause; False (and a warning)
        when one is still going: its alerts stay undelivered, to be sent with the next run's."""
        limit = timeout_s if timeout_s is not None else self.attempts * (self.timeout_s + self.backoff_s * 4)
        deadline = time.monotonic() + limit
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._threads:
            log.warning("alert webhook: delivery still under way after %.0f s; the next run sends what is left", limit)
        return not self._threads

    def _deliver(self, news: list[alerts.Alert]) -> None:
        try:
            pending = alerts.undelivered(self.database_url)
        except psycopg.Error as exc:
            log.warning("could not read the undelivered alerts: %s", exc)
            pending = []
        known = {alert.id for alert in news}
        for alert in [*news, *(a for a in pending if a.id not in known)]:
            if not self.post(payload(alert)) or not alert.is_open:
                continue  # an opening's delivery is recorded; a resolution's is only posted
            try:
                alerts.mark_notified(self.database_url, alert.id)
            except psycopg.Error as exc:
                log.warning("could not record the delivery of alert %d: %s", alert.id, exc)

    def post(self, body: dict[str, Any]) -> bool:
        """POST one body, retried on a network error or a 5xx/429 answer; False once the attempts are spent."""
        data = json.dumps(body).encode()
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(
                self.url, data=data, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                    if 200 <= answer.status < 300:
                        return True
                    error = f"HTTP {answer.status}"
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if exc.code < 500 and exc.code != 429:  # the receiver refuses the body: retrying cannot help
                    log.warning("alert webhook refused the alert: %s", error)
                    return False
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                error = str(exc)
            log.warning("alert webhook attempt %d of %d failed: %s", attempt, self.attempts, error)
            if attempt < self.attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        return False


def from_settings(settings: Settings, database_url: str) -> Webhook | None:
    """The configured webhook (`CHURN_ALERT_WEBHOOK_URL`), or None."""
    if not settings.alert_webhook_url:
        return None
    return Webhook(
        settings.alert_webhook_url.get_secret_value(), database_url, settings.alert_webhook_attempts,
        settings.alert_webhook_timeout_s,
    )  # fmt: skip
