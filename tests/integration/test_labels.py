"""The churn definitions in SQL: contractual (a cancel ends a relationship) and non-contractual (going quiet)."""

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


def _rate(url: str, definition: ChurnDefinition) -> labels.LabelRate:
    with psycopg.connect(url) as conn:
        return labels.positive_label_rate(conn, definition, horizon_days=30)


def test_contractual_rate_counts_a_user_until_their_cancel(history: str) -> None:
    rate = _rate(history, ChurnDefinition("contractual", ("cancel",)))
    # Daily snapshots at midnight of days 1..70 (the data ends on day 100, H = 30); a user counts from their
    # first event until a cancel ends them. a: days 1..40 (the cancel at day 40 is not before t = day 40),
    # positive on days 11..40 (the cancel falls in [t, t + 30)); b and c: days 1..70, never positive; d: first
    # seen on day 80, in no snapshot.
    assert rate.snapshots == 40 + 70 + 70
    assert rate.rate == pytest.approx(30 / 180)


def test_non_contractual_rate_keeps_every_user_and_lets_them_come_back(history: str) -> None:
    rate = _rate(history, ChurnDefinition("non_contractual", (), ()))
    # Every event counts as activity and nothing ends a relationship: a, b and c are in every snapshot of days
    # 1..70. Positive when no event falls in [t, t + 30): a after day 40 (30 days), b after day 20 (50), c before
    # its return on day 50 (days 1..20) and after it (51..70): 40.
    assert rate.snapshots == 3 * 70
    assert rate.rate == pytest.approx((30 + 50 + 40) / 210)


def test_non_contractual_with_a_cancel_that_ends_the_relationship(history: str) -> None:
    rate = _rate(history, ChurnDefinition("non_contractual", ("cancel",), ("login",)))
    # a is in the population until its cancel (days 1..40) and positive on days 31..40 (no login ahead)
    assert rate.snapshots == 40 + 70 + 70
    assert rate.rate == pytest.approx((10 + 50 + 40) / 180)


def test_a_large_population_is_summarised_over_a_fixed_sample_of_users(history: str) -> None:
    with psycopg.connect(history) as conn:
        full = labels.positive_label_rate(conn, ChurnDefinition("non_contractual", (), ()), 30)
        sampled = labels.positive_label_rate(conn, ChurnDefinition("non_contractual", (), ()), 30, sample_users=2)
        again = labels.positive_label_rate(conn, ChurnDefinition("non_contractual", (), ()), 30, sample_users=2)
    # Four users over a cap of two: one user in two, chosen by a hash of the id (the same ones every time)
    assert (full.sampled_one_in, sampled.sampled_one_in) == (1, 2)
    assert sampled.snapshots < full.snapshots and sampled == again
