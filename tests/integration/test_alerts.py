"""Alerts in PostgreSQL: one open row per condition, history kept, the service's old table moved in, delivery to a
real local HTTP receiver, and the `churn alerts` commands."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import psycopg
import pytest

from churn_platform import db
from churn_platform.monitoring import alerts, webhook
from churn_platform.monitoring.alerts import Check


def _drift(holds: bool, message: str = "4 of 10 features drifted") -> Check:
    return Check("drift", "dataset_drift", "churn v3", holds, message)


def _rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT id, kind, occurrences, message, resolved_at IS NOT NULL, resolved_by FROM monitoring.alerts"
            " ORDER BY id"
        ).fetchall()


def test_a_condition_that_holds_is_one_alert_until_it_clears_and_history_stays(database_url: str) -> None:
    with db.connect(database_url) as conn:
        first = alerts.apply_checks(conn, [_drift(True)], by="run 1")
        second = alerts.apply_checks(conn, [_drift(True, "5 of 10 features drifted")], by="run 2")
    assert [a.id for a in first.opened] == [a.id for a in second.repeated] and not second.opened
    [(alert_id, kind, occurrences, message, resolved, _)] = _rows(database_url)
    assert (kind, occurrences, message, resolved) == ("dataset_drift", 2, "5 of 10 features drifted", False)

    with db.connect(database_url) as conn:
        cleared = alerts.apply_checks(conn, [_drift(False)], by="run 3: the condition cleared")
        quiet = alerts.apply_checks(conn, [_drift(False)], by="run 4")  # nothing open: nothing to resolve
        again = alerts.apply_checks(conn, [_drift(True)], by="run 5")
    assert [a.id for a in cleared.resolved] == [alert_id] and quiet == alerts.Changes([], [], [])
    assert again.opened and again.opened[0].id != alert_id  # a new episode, a new row
    assert [(r[4], r[5]) for r in _rows(database_url)] == [(True, "run 3: the condition cleared"), (False, None)]
    assert [a.id for a in alerts.list_alerts(database_url)] == [again.opened[0].id]
    assert len(alerts.list_alerts(database_url, include_resolved=True)) == 2


def test_resolving_by_hand_keeps_the_row_and_refuses_twice(database_url: str) -> None:
    opened, new = alerts.record_alert(database_url, "model_refused", "churn version 4 (champion)", "no signature")
    assert new and opened.severity == "critical" and opened.source == "serving"
    again, new_again = alerts.record_alert(database_url, "model_refused", "churn version 4 (champion)", "still")
    assert again.id == opened.id and not new_again and again.occurrences == 2

    done = alerts.resolve(database_url, opened.id, "ana")
    assert done.resolved_by == "ana" and not done.is_open
    with pytest.raises(alerts.AlertError, match=f"alert {opened.id} was already resolved"):
        alerts.resolve(database_url, opened.id, "ana")
    with pytest.raises(alerts.AlertError, match="no alert 999999"):
        alerts.resolve(database_url, 999_999, "ana")
    assert alerts.list_alerts(database_url) == []
    assert [a.id for a in alerts.list_alerts(database_url, include_resolved=True)] == [opened.id]


def test_the_services_old_alerts_table_moves_into_the_one_table(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("""
            CREATE TABLE serving.alerts (id bigserial PRIMARY KEY, raised_at timestamptz NOT NULL DEFAULT now(),
                kind text NOT NULL, subject text NOT NULL, message text NOT NULL);
            INSERT INTO serving.alerts (raised_at, kind, subject, message) VALUES
                ('2026-01-01', 'registry_unreachable', 'http://mlflow', 'refused'),
                ('2026-01-02', 'registry_unreachable', 'http://mlflow', 'timed out'),
                ('2026-01-03', 'model_refused', 'churn version 2 (champion)', 'no signature');
        """)
    db.init_schema(database_url)
    db.init_schema(database_url)  # applying the schema again moves nothing twice
    with psycopg.connect(database_url) as conn:
        gone = conn.execute("SELECT to_regclass('serving.alerts')").fetchone()
        moved = conn.execute(
            "SELECT severity, kind, message, occurrences, first_seen::date::text, last_seen::date::text,"
            " resolved_by FROM monitoring.alerts ORDER BY kind"
        ).fetchall()
    assert gone == (None,)
    assert moved == [
        ("critical", "model_refused", "no signature", 1, "2026-01-03", "2026-01-03", "moved from serving.alerts"),
        ("warning", "registry_unreachable", "timed out", 2, "2026-01-01", "2026-01-02", "moved from serving.alerts"),
    ]


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []
    failures_left = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
        else:
            type(self).bodies.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"bodies": [], "failures_left": 0})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", handler
    server.shutdown()
    server.server_close()


def test_the_webhook_delivers_opened_and_resolved_alerts_after_retrying(
    database_url: str, receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    handler.failures_left = 2  # two 503s, then the receiver takes it
    hook = webhook.Webhook(url, database_url, attempts=3, timeout_s=2.0, backoff_s=0.05)
    with db.connect(database_url) as conn:
        opened = alerts.apply_checks(conn, [_drift(True)], by="run 1")
    hook.send(opened)
    hook.wait()
    [body] = handler.bodies
    assert "dataset_drift" in body["text"] and "churn v3" in body["text"] and "4 of 10" in body["text"]
    assert body["alert"]["state"] == "open" and body["alert"]["severity"] == "warning"
    [alert] = alerts.list_alerts(database_url)
    assert alert.notified_at is not None

    with db.connect(database_url) as conn:
        repeated = alerts.apply_checks(conn, [_drift(True)], by="run 2")
        cleared = alerts.apply_checks(conn, [_drift(False)], by="run 3")
    hook.send(repeated)  # an alert raised again is not news
    hook.send(cleared)
    assert hook.wait()
    assert [b["alert"]["state"] for b in handler.bodies] == ["open", "resolved"]


def test_an_alert_the_webhook_missed_is_sent_with_the_next_delivery(
    database_url: str, receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    with db.connect(database_url) as conn:
        missed = alerts.apply_checks(conn, [_drift(True)], by="run 1")  # its delivery never happened
        other = alerts.apply_checks(conn, [Check("quality", "missing_values", "plan for churn v3", True, "x")], by="2")
    hook = webhook.Webhook(url, database_url, attempts=1, timeout_s=2.0)
    hook.send(other)
    assert hook.wait()
    assert sorted(b["alert"]["id"] for b in handler.bodies) == sorted([missed.opened[0].id, other.opened[0].id])
    assert alerts.undelivered(database_url) == []


def test_an_unreachable_webhook_never_fails_or_blocks_monitoring(database_url: str) -> None:
    hook = webhook.Webhook("http://127.0.0.1:9/hook", database_url, attempts=2, timeout_s=0.5, backoff_s=0.05)
    with db.connect(database_url) as conn:
        opened = alerts.apply_checks(conn, [_drift(True)], by="run 1")
    started = time.monotonic()
    hook.send(opened)
    assert time.monotonic() - started < 0.5  # delivery runs on its own thread
    assert hook.wait()  # and ends after its attempts
    [alert] = alerts.list_alerts(database_url)
    assert alert.notified_at is None  # not delivered, still listed, and sent with the next delivery:
    assert [a.id for a in alerts.undelivered(database_url)] == [alert.id]


def test_the_cli_lists_and_resolves_alerts(platform_database: str, wide_console: None) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    opened, _ = alerts.record_alert(platform_database, "registry_unreachable", "http://mlflow", "refused")
    listed = CliRunner().invoke(cli.app, ["alerts"], terminal_width=250)
    assert listed.exit_code == 0, listed.output
    assert "registry_unreachable" in listed.output and "http://mlflow" in listed.output

    resolved = CliRunner().invoke(cli.app, ["alerts", "resolve", str(opened.id), "--by", "ana"])
    assert resolved.exit_code == 0 and f"alert {opened.id} resolved" in resolved.output
    assert "no open alert" in CliRunner().invoke(cli.app, ["alerts"]).output
    history = CliRunner().invoke(cli.app, ["alerts", "--all"], terminal_width=250)
    assert "registry_unreachable" in history.output and "by ana" in history.output
    twice = CliRunner().invoke(cli.app, ["alerts", "resolve", str(opened.id)])
    assert twice.exit_code == 1 and "already resolved" in twice.output


def test_rows_the_prediction_log_drops_raise_one_service_alert_once_it_is_recorded(platform_database: str) -> None:
    import uuid
    from datetime import UTC, datetime

    from churn_platform.connections import Connections
    from churn_platform.serving.prediction_log.rows import PredictionRecord
    from churn_platform.serving.predictor import ChurnPredictor
    from churn_platform.settings import get_settings

    unused = "http://127.0.0.1:1"  # never started: the registry is never asked
    predictor = ChurnPredictor(get_settings(), Connections(platform_database, mlflow_tracking_uri=unused))
    row = PredictionRecord(uuid.uuid4(), datetime.now(UTC), "u1", None, "champion", "champion", "1", 0.2, "0" * 16,
                           None, 1.0, "predict")  # fmt: skip

    def drop(count: int) -> None:  # rows waiting for a writer that never comes, then dropped
        predictor.log.buffer.submit_many([row] * count)
        assert predictor.log.buffer.discard() == count

    drop(3)
    predictor.alert_log_drops()
    predictor.alert_log_drops()  # nothing new dropped: nothing raised
    [alert] = alerts.list_alerts(platform_database)
    assert (alert.source, alert.kind, alert.occurrences) == ("serving", "prediction_log_drops", 1)
    assert "dropped 3 rows" in alert.message

    predictor.database_url = "postgresql://postgres@127.0.0.1:1/away"  # the database is away when rows drop
    drop(2)
    predictor.alert_log_drops()  # cannot be recorded: the drops stay to be alerted
    predictor.database_url = platform_database
    predictor.alert_log_drops()
    [again] = alerts.list_alerts(platform_database)
    assert again.id == alert.id and again.occurrences == 2 and "dropped 2 rows" in again.message
