"""The churn definition in SQL: cancel events, inactivity windows, or both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from churn_platform.data import labels
from churn_platform.data.labels import ChurnDefinition

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _load(url: str, events: list[tuple[str, str, datetime]]) -> None:
    with psycopg.connect(url) as conn:
        load_id = conn.execute("INSERT INTO raw.loads (kind, source) VALUES ('events', 'test') RETURNING load_id")
        lid = load_id.fetchone()[0]  # type: ignore[index]
        with conn.cursor().copy(
            "COPY raw.events (event_key, user_id, event_type, event_timestamp, load_id) FROM STDIN"
        ) as copy:
            for i, (user, kind, at) in enumerate(events):
                copy.write_row((f"00000000-0000-0000-0000-{i:012d}", user, kind, at, lid))


@pytest.fixture
def history(database_url: str) -> str:
    day = timedelta(days=1)
    _load(
        database_url,
        [
            # a: active every 10 days, then cancels on day 40
            *[("a", "login", T0 + i * 10 * day) for i in range(4)],
            ("a", "cancel", T0 + 40 * day),
            # b: active until day 20, then silent for the rest of the data (100 days)
            ("b", "login", T0),
            ("b", "login", T0 + 20 * day),
            # c: a 50-day gap in the middle, then back
            ("c", "login", T0),
            ("c", "login", T0 + 50 * day),
            ("c", "login", T0 + 100 * day),
            # d: quiet only for the last 20 days of the data: not (yet) a churn under a 30-day window
            ("d", "login", T0 + 80 * day),
        ],
    )
    return database_url


def test_explicit_churn_events(history: str) -> None:
    with psycopg.connect(history) as conn:
        times = labels.churn_times(conn, ChurnDefinition(("cancel",), None))
    assert times == {"a": T0 + timedelta(days=40)}


def test_inactivity_window_churns_at_the_start_of_a_full_silence(history: str) -> None:
    with psycopg.connect(history) as conn:
        times = labels.churn_times(conn, ChurnDefinition((), 30))
    # b went silent after day 20: churned 30 days later; c's 50-day gap counts even though c came back
    # (the first churn is the one that counts); d's silence has not lasted 30 days by the end of the data;
    # a's last event is the cancel on day 40, 60 days before the end of the data
    assert times == {
        "b": T0 + timedelta(days=50),
        "c": T0 + timedelta(days=30),
        "a": T0 + timedelta(days=70),
    }


def test_both_definitions_take_the_earliest(history: str) -> None:
    with psycopg.connect(history) as conn:
        times = labels.churn_times(conn, ChurnDefinition(("cancel",), 30))
    assert times["a"] == T0 + timedelta(days=40)
    assert times["b"] == T0 + timedelta(days=50)


def test_positive_label_rate_counts_only_labelled_active_snapshots(history: str) -> None:
    with psycopg.connect(history) as conn:
        rate = labels.positive_label_rate(conn, ChurnDefinition(("cancel",), None), horizon_days=30)
    # Daily snapshots at midnight of days 1..70 (the data ends on day 100, H = 30); a user counts from their
    # first event until they churn. a: days 1..39, positive on days 10..39 (cancel on day 40 within (t, t+30]);
    # b and c: days 1..70, never positive; d: first seen on day 80, in no snapshot.
    assert rate.snapshots == 39 + 70 + 70
    assert rate.rate == pytest.approx(30 / 179)
