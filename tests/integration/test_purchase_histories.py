"""BG/NBD purchase histories, and the events that decide a label (for censored outcomes), in PostgreSQL against a
brute-force point-in-time computation in pandas."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from churn_platform.data.labels import ChurnDefinition
from churn_platform.training.censoring import deciding_events
from churn_platform.training.purchase_histories import customer_histories, row_histories

START = datetime(2025, 3, 1, tzinfo=UTC)
DAYS = 12
CHURN_TYPES = ("cancel",)
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
# Seconds after START: exact midnights and whole hours are likely, so events tie with each other and with row times.
offsets = st.one_of(
    st.integers(0, DAYS).map(lambda d: d * 86_400),
    st.integers(0, DAYS * 24).map(lambda h: h * 3_600),
    st.integers(0, DAYS * 86_400),
)
users = st.sampled_from(["a", "b", "c"])
events_strategy = st.lists(
    st.tuples(users, st.sampled_from(["purchase", "visit", "cancel"]), offsets, st.sampled_from(ZONES)),
    max_size=50,
)


def rows_strategy(events: list[tuple[str, str, int, timezone]]) -> st.SearchStrategy[list[tuple[str, int]]]:
    """Rows (user, seconds after START), often at the exact time of one of the user's events: a tie to exclude."""
    at_events = [st.sampled_from([(user, offset) for user, _, offset, _ in events])] if events else []
    any_row = st.tuples(st.sampled_from(["a", "b", "c", "never"]), offsets)
    return st.lists(st.one_of(any_row, *at_events), min_size=1, max_size=30)


activity_strategy = st.sampled_from([(), ("purchase",), ("purchase", "visit")])


@pytest.fixture(scope="module")
def events_db(make_database: Callable[[], str]) -> str:
    """A database whose sessions are not in UTC: days must still be UTC days."""
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = 'Asia/Kolkata'").format(sql.Identifier(name)))
    return url


def _load(url: str, events: list[tuple[str, str, int, timezone]]) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE raw.events, raw.users, raw.loads RESTART IDENTITY CASCADE")
        found = conn.execute("INSERT INTO raw.loads (kind, source) VALUES ('events', 't') RETURNING load_id")
        load_id = found.fetchone()[0]  # type: ignore[index]
        with conn.cursor().copy(
            "COPY raw.events (event_key, user_id, event_type, event_timestamp, load_id) FROM STDIN"
        ) as copy:
            for i, (user, kind, offset, zone) in enumerate(events):
                at = (START + timedelta(seconds=offset)).astimezone(zone)
                copy.write_row((f"00000000-0000-0000-0000-{i:012d}", user, kind, at, load_id))


def _brute_force(
    events: list[tuple[str, str, int, timezone]], user: str, as_of: datetime, activity: tuple[str, ...]
) -> tuple[int, float, float]:
    """(x, t_x, T) in days from the user's qualifying events strictly before as_of, one row at a time."""
    qualifying = (lambda kind: kind in activity) if activity else (lambda kind: kind not in CHURN_TYPES)
    stamps = [START + timedelta(seconds=o) for u, kind, o, _ in events if u == user and qualifying(kind)]
    days = sorted({s.date() for s in stamps if s < as_of})
    if not days:
        return 0, 0.0, 0.0
    first = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC)
    return len(days) - 1, float((days[-1] - days[0]).days), (as_of - first).total_seconds() / 86_400


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, data=st.data(), activity=activity_strategy)
def test_row_histories_equal_a_brute_force_point_in_time_computation(
    events_db: str, events: list[tuple[str, str, int, timezone]], data: st.DataObject, activity: tuple[str, ...]
) -> None:
    rows = data.draw(rows_strategy(events))
    _load(events_db, events)
    as_of = [START + timedelta(seconds=offset) for _, offset in rows]
    frame = pd.DataFrame({"user_id": [user for user, _ in rows], "event_timestamp": pd.to_datetime(as_of, utc=True)})

    found = row_histories(events_db, frame, ChurnDefinition("non_contractual", CHURN_TYPES, activity))

    expected = [_brute_force(events, user, at, activity) for (user, _), at in zip(rows, as_of, strict=True)]
    assert list(found.columns) == ["x", "t_x", "age"] and len(found) == len(rows)
    for got, want in zip(found.itertuples(index=False), expected, strict=True):
        assert got.x == want[0]
        assert (got.t_x, got.age) == (pytest.approx(want[1], abs=1e-9), pytest.approx(want[2], abs=1e-9))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, offset=offsets, activity=activity_strategy)
def test_customer_histories_hold_every_customer_seen_before_the_fit_time(
    events_db: str, events: list[tuple[str, str, int, timezone]], offset: int, activity: tuple[str, ...]
) -> None:
    _load(events_db, events)
    as_of = START + timedelta(seconds=offset)

    found = customer_histories(events_db, as_of, ChurnDefinition("non_contractual", CHURN_TYPES, activity))

    expected = {user: _brute_force(events, user, as_of, activity) for user in ("a", "b", "c")}
    seen = {user: history for user, history in expected.items() if history[2] > 0}  # T > 0: a qualifying event
    assert list(found["user_id"]) == sorted(seen)
    for row in found.itertuples(index=False):
        x, t_x, age = seen[row.user_id]
        assert (row.x, row.t_x, row.age) == (x, pytest.approx(t_x, abs=1e-9), pytest.approx(age, abs=1e-9))


def _first_deciding(
    events: list[tuple[str, str, int, timezone]], user: str, at: datetime, horizon: int, deciding: Callable[[str], bool]
) -> float | None:
    """Days from `at` to the user's first deciding event in [at, at + horizon days), one event at a time."""
    ahead = [
        (START + timedelta(seconds=o) - at).total_seconds() / 86_400
        for u, kind, o, _ in events
        if u == user and deciding(kind) and at <= START + timedelta(seconds=o) < at + timedelta(days=horizon)
    ]
    return min(ahead) if ahead else None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=events_strategy,
    data=st.data(),
    activity=activity_strategy,
    kind=st.sampled_from(["contractual", "non_contractual"]),
    horizon=st.integers(1, 6),
)
def test_deciding_events_are_the_first_that_settle_each_label_within_its_horizon(
    events_db: str,
    events: list[tuple[str, str, int, timezone]],
    data: st.DataObject,
    activity: tuple[str, ...],
    kind: str,
    horizon: int,
) -> None:
    rows = data.draw(rows_strategy(events))
    _load(events_db, events)
    at = [START + timedelta(seconds=offset) for _, offset in rows]
    frame = pd.DataFrame({"user_id": [user for user, _ in rows], "event_timestamp": pd.to_datetime(at, utc=True)})
    definition = ChurnDefinition(kind, CHURN_TYPES, activity)  # type: ignore[arg-type]

    found = deciding_events(events_db, definition, horizon).decided_after(frame)

    if kind == "contractual":
        deciding: Callable[[str], bool] = lambda event: event in CHURN_TYPES  # noqa: E731
    else:
        deciding = (lambda event: event in activity) if activity else (lambda event: event not in CHURN_TYPES)
    expected = [_first_deciding(events, user, t, horizon, deciding) for (user, _), t in zip(rows, at, strict=True)]
    assert len(found) == len(rows)
    for got, want in zip(found, expected, strict=True):
        assert (want is None and np.isnan(got)) or got == pytest.approx(want, abs=1e-9)
