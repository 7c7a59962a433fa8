"""Feature snapshots in PostgreSQL against a brute-force as-of computation in pandas, value for value."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churn_platform.data.labels import ChurnDefinition
from churn_platform.features.catalog import (
    ActiveDays,
    ActivityTrend,
    Catalog,
    DaysSinceLastEvent,
    EventCount,
    EventValueMean,
    EventValueSum,
    GapRatio,
    GapSpread,
    LastEventValue,
    MeanGapDays,
    RecentGapRatio,
    TenureDays,
    UserAttribute,
    default_catalog,
)
from churn_platform.features.snapshots import compute_labels, compute_snapshots

START = datetime(2025, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
DAYS = 20
CATALOG = Catalog(
    "churn_test",
    (
        EventCount("login", 3),
        EventCount("login", 7),
        EventCount("purchase", 7),
        EventValueSum("purchase", 7),
        EventCount("purchase", None),
        EventValueSum("purchase", None),
        EventValueMean("purchase", 7),
        EventValueMean("purchase", None),
        LastEventValue("purchase"),
        ActiveDays(7),
        ActiveDays(None),
        MeanGapDays(),
        GapRatio(),
        GapSpread(),
        RecentGapRatio(),
        ActivityTrend(3, 7),
        DaysSinceLastEvent(),
        TenureDays(),
        UserAttribute("plan"),
    ),
)
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), timezone(timedelta(hours=14))]

# An event: user, type, seconds after START (multiples of an hour and exact midnights are likely: ties and
# boundaries), value, and the zone its timestamp is written in.
events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["login", "purchase", "cancel"]),
        st.one_of(
            st.integers(0, DAYS - 1).map(lambda d: d * 86_400),  # exactly at a snapshot boundary
            st.integers(0, DAYS * 24 - 1).map(lambda h: h * 3_600),  # on the hour: ties
            st.integers(0, DAYS * 86_400 - 1),
        ),
        st.one_of(st.none(), st.floats(0, 100, allow_nan=False).map(lambda v: round(v, 2))),
        st.sampled_from(ZONES),
    ),
    min_size=1,
    max_size=60,
)

# A version of a user's attributes: user, seconds after START it is valid from (exact midnights likely, some before
# the first snapshot), and its plan.
versions_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.one_of(
            st.integers(-3, DAYS).map(lambda d: d * 86_400),  # exactly at a snapshot boundary
            st.integers(-3 * 24, DAYS * 24).map(lambda h: h * 3_600),
            st.integers(-3 * 86_400, DAYS * 86_400),
        ),
        st.sampled_from(["basic", "pro", "team", None]),
    ),
    max_size=9,
    unique_by=lambda v: (v[0], v[1]),
)


def _load(
    url: str,
    events: list[tuple[str, str, int, float | None, timezone]],
    versions: Sequence[tuple[str, int, str | None]] = (),
) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE raw.events, raw.users, raw.loads RESTART IDENTITY CASCADE")
        for table in (CATALOG.name, f"{CATALOG.name}_labels", "catalog_definitions"):
            conn.execute(f"DROP TABLE IF EXISTS features.{table}")
        load_id = conn.execute("INSERT INTO raw.loads (kind, source) VALUES ('events', 't') RETURNING load_id")
        lid = load_id.fetchone()[0]  # type: ignore[index]
        # Written in reverse time order: late rows must not matter.
        rows = sorted(enumerate(events), key=lambda r: -r[1][2])
        with conn.cursor().copy(
            "COPY raw.events (event_key, user_id, event_type, event_timestamp, value, load_id) FROM STDIN"
        ) as copy:
            for i, (user, kind, offset, value, zone) in rows:
                at = (START + timedelta(seconds=offset)).astimezone(zone)
                copy.write_row((f"00000000-0000-0000-0000-{i:012d}", user, kind, at, value, lid))
        # Written in reverse time order too
        with conn.cursor().copy("COPY raw.user_attributes (user_id, valid_from, plan, load_id) FROM STDIN") as copy:
            for user, offset, plan in sorted(versions, key=lambda v: -v[1]):
                copy.write_row((user, START + timedelta(seconds=offset), plan, lid))


def _times(events: list[tuple[str, str, int, float | None, timezone]]) -> list[tuple[str, str, datetime, float | None]]:
    return [(u, k, START + timedelta(seconds=o), v) for u, k, o, v, _ in events]


def _ended(mine: list[tuple[str, datetime, float | None]], t: datetime) -> bool:
    """A cancel before t that no later event of another type before t reopened."""
    cancels = [at for k, at, _ in mine if k == "cancel" and at < t]
    others = [at for k, at, _ in mine if k != "cancel" and at < t]
    return bool(cancels) and (not others or max(others) < max(cancels))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _plan_as_of(versions: Sequence[tuple[str, int, str | None]], user: str, t: datetime) -> str | None:
    """The plan of the user's version with the latest valid_from before t (None before the first)."""
    before = [(START + timedelta(seconds=o), plan) for u, o, plan in versions if u == user]
    before = [(at, plan) for at, plan in before if at < t]
    return max(before, key=lambda v: v[0])[1] if before else None


def _expected(
    events: list[tuple[str, str, int, float | None, timezone]],
    until: date,
    versions: Sequence[tuple[str, int, str | None]] = (),
) -> dict[tuple[str, datetime], dict[str, object]]:
    """Brute force: for every user and snapshot day, look at every event and attribute version before it."""
    out: dict[tuple[str, datetime], dict[str, object]] = {}
    times = _times(events)
    first_day = min(at for _, _, at, _ in times).date()
    for user in sorted({u for u, *_ in times}):
        mine = [(k, at, v) for u, k, at, v in times if u == user]
        since = min(at for _, at, _ in mine)
        day = first_day + timedelta(days=1)
        while day <= until:
            t = datetime(day.year, day.month, day.day, tzinfo=UTC)
            day += timedelta(days=1)
            if not since < t or _ended(mine, t):
                continue
            before = [(k, at, v) for k, at, v in mine if at < t]

            def within(days: int | None, kind: str | None = None, before=before, t=t) -> list:
                start = t - timedelta(days=days) if days is not None else datetime.min.replace(tzinfo=UTC)
                return [(k, at, v) for k, at, v in before if at >= start and kind in (None, k)]

            n3, n7 = len(within(3)), len(within(7))
            valued = [(at, v) for k, at, v in before if k == "purchase" and v is not None]
            last_at = max(at for _, at, _ in before) if before else None
            active = sorted({at.date() for _, at, _ in before})
            mean_gap = (active[-1] - active[0]).days / (len(active) - 1) if len(active) > 1 else None
            since_last = (t - last_at).total_seconds() / 86_400 if last_at else None
            gaps = [(b - a).days for a, b in itertools.pairwise(active)]
            out[(user, t)] = {
                "login_count_3d": len(within(3, "login")),
                "login_count_7d": len(within(7, "login")),
                "purchase_count_7d": len(within(7, "purchase")),
                "purchase_value_sum_7d": sum(v for _, _, v in within(7, "purchase") if v is not None),
                "purchase_count_all": len(within(None, "purchase")),
                "purchase_value_sum_all": sum(v for _, v in valued),
                "purchase_value_mean_7d": _mean([v for _, _, v in within(7, "purchase") if v is not None]),
                "purchase_value_mean_all": _mean([v for _, v in valued]),
                # the value of the last valued purchase: any of them when several share its timestamp
                "purchase_value_last": {v for at, v in valued if at == max(a for a, _ in valued)} or {None},
                "active_days_7d": len({at.date() for _, at, _ in within(7)}),
                "active_days_all": len(active),
                "activity_trend_3d_7d": None if n7 == 0 else (n3 / 3) / (n7 / 7),
                "days_since_last_event": since_last,
                "tenure_days": (t - since).total_seconds() / 86_400,
                "mean_gap_days": mean_gap,
                "current_gap_over_mean_gap": None if not mean_gap or since_last is None else since_last / mean_gap,
                "gap_days_cv": statistics.pstdev(gaps) / statistics.mean(gaps) if len(gaps) >= 2 else None,
                "recent_gaps_over_mean_gap": (gaps[-1] + gaps[-2]) / 2 / mean_gap
                if len(gaps) >= 2 and mean_gap
                else None,
                "plan": _plan_as_of(versions, user, t),
            }
    return out


@pytest.fixture(scope="module")
def snapshot_db(make_database: Callable[[], str]) -> str:
    return make_database()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, versions=versions_strategy)
def test_snapshots_equal_a_brute_force_as_of_computation(
    snapshot_db: str,
    events: list,  # type: ignore[type-arg]
    versions: list,  # type: ignore[type-arg]
) -> None:
    # Given any event history (ties, boundaries, late rows, several zones), and versions of the users' plans
    _load(snapshot_db, events, versions)
    until = (START + timedelta(days=DAYS + 2)).date()

    # When snapshots are computed in PostgreSQL, in two runs: the second's grid starts after the first events, so
    # each whole-history feature of those days adds up the events before its grid (the prior) and those in it
    definition = ChurnDefinition("contractual", ("cancel",))
    compute_snapshots(snapshot_db, CATALOG, definition, (START + timedelta(days=DAYS // 2 + 2)).date())
    compute_snapshots(snapshot_db, CATALOG, definition, until)
    with psycopg.connect(snapshot_db) as conn:
        cur = conn.execute(f"SELECT * FROM features.{CATALOG.name}")
        names = [c.name for c in cur.description or []]
        stored = {(r[0], r[1]): dict(zip(names[2:], r[2:], strict=True)) for r in cur.fetchall()}

    # Then they equal the brute-force as-of values, row for row and value for value (the plan: the version
    # valid just before t)
    expected = _expected(events, until, versions)
    assert stored.keys() == expected.keys()
    for key, values in expected.items():
        for name, value in values.items():
            got = stored[key][name]
            if isinstance(value, set):
                assert any(got == pytest.approx(v) if v is not None else got is None for v in value), (key, name)
            elif isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-9, abs=1e-9), (key, name)
            else:
                assert got == value, (key, name)


def test_the_rhythm_of_a_user_silent_through_a_later_grid_comes_from_before_it(snapshot_db: str) -> None:
    # Given purchases on days 0, 1, 3 and 7 (gaps 1, 2, 4), and snapshots computed up to day 16 first
    _load(snapshot_db, [("u1", "purchase", day * 86_400 + 3_600, 5.0, UTC) for day in (0, 1, 3, 7)])
    definition = ChurnDefinition("contractual", ("cancel",))
    compute_snapshots(snapshot_db, CATALOG, definition, (START + timedelta(days=16)).date())

    # When a later run computes days 17 onwards, its grid starting after every purchase
    compute_snapshots(snapshot_db, CATALOG, definition, (START + timedelta(days=20)).date())

    # Then the rhythm there is the whole history's: spread of (1, 2, 4), the last two gaps (2, 4) over the mean 7/3
    with psycopg.connect(snapshot_db) as conn:
        row = conn.execute(
            f"SELECT gap_days_cv, recent_gaps_over_mean_gap FROM features.{CATALOG.name} WHERE event_timestamp = %s",
            (START + timedelta(days=19),),
        ).fetchone()
    assert row == (pytest.approx(statistics.pstdev([1, 2, 4]) / (7 / 3)), pytest.approx(3 / (7 / 3)))


def test_a_second_run_writes_nothing_and_a_later_until_only_adds_new_days(database_url: str) -> None:
    from churn_platform.data.synthetic import world
    from churn_platform.data.synthetic.world_model import WorldConfig

    world.generate_world(database_url, WorldConfig(users=100, days=40, seed=1))
    catalog = default_catalog(["login", "session"], ["session"])
    definition = ChurnDefinition("contractual", ("cancel",))
    first = compute_snapshots(database_url, catalog, definition, date(2025, 1, 30))
    again = compute_snapshots(database_url, catalog, definition, date(2025, 1, 30))
    later = compute_snapshots(database_url, catalog, definition, date(2025, 2, 9))
    assert first.rows_written > 0
    assert again.rows_written == 0
    assert later.first_day == date(2025, 1, 31)
    # And computing everything at once gives the same rows as the two increments
    with psycopg.connect(database_url) as conn:
        incremental = conn.execute(f"SELECT * FROM features.{catalog.name} ORDER BY 1, 2").fetchall()
    compute_snapshots(database_url, catalog, definition, date(2025, 2, 9), replace=True)
    with psycopg.connect(database_url) as conn:
        at_once = conn.execute(f"SELECT * FROM features.{catalog.name} ORDER BY 1, 2").fetchall()
    # (sums over a window may differ in the last bit with where the window's computation started)
    assert _rounded(incremental) == _rounded(at_once)


def _rounded(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return [tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in rows]


def test_labels_cover_only_passed_horizons_and_follow_the_churn_definition(database_url: str) -> None:
    # Given a user who cancels on day 12 and one who stays, with data up to day 20
    day = timedelta(days=1)
    events = [("a", "login", d * 86_400 + 3_600, None, UTC) for d in range(12)]
    events += [("a", "cancel", 12 * 86_400 + 7_200, None, UTC)]
    events += [("b", "login", d * 86_400 + 60, None, UTC) for d in range(21)]
    _load(database_url, events)
    definition = ChurnDefinition("contractual", ("cancel",))
    compute_snapshots(database_url, CATALOG, definition, (START + 20 * day).date())

    # When labels are computed with a 5-day horizon
    added = compute_labels(database_url, CATALOG, definition, horizon_days=5)

    # Then a snapshot is labelled only if t + 5 days has passed (the last event is on day 20), and churned
    # exactly when the cancel falls in (t, t + 5 days]
    with psycopg.connect(database_url) as conn:
        labels = dict(
            conn.execute(
                "SELECT user_id || '@' || to_char(event_timestamp AT TIME ZONE 'UTC', 'DD'), churned"
                f" FROM {CATALOG.labels_table}"
            ).fetchall()
        )
    assert added == len(labels)
    assert max(int(k.split("@")[1]) for k in labels) == 16  # snapshots at days 1..15 after March 1 (t+5 <= day 20)
    # (the cancel is on March 13 at 02:00: snapshots of March 9 .. 13 see it in [t, t + 5 days))
    assert {k for k, churned in labels.items() if churned} == {f"a@{d:02d}" for d in range(9, 14)}
    assert not any(labels[f"b@{d:02d}"] for d in range(2, 17))
    # And a second run adds nothing
    assert compute_labels(database_url, CATALOG, definition, horizon_days=5) == 0


SHOP = ChurnDefinition("non_contractual", (), ("purchase",))
SHOP_WITH_CANCEL = ChurnDefinition("non_contractual", ("cancel",), ("purchase",))


def _labels(url: str, horizon: int) -> dict[tuple[str, datetime], bool]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT user_id, event_timestamp, churned FROM {CATALOG.labels_table} WHERE horizon_days = %s", (horizon,)
        ).fetchall()
    return {(u, at): churned for u, at, churned in rows}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, horizon=st.integers(1, 6), with_cancel=st.booleans())
def test_non_contractual_population_and_labels_equal_a_brute_force(
    snapshot_db: str,
    events: list,  # type: ignore[type-arg]
    horizon: int,
    with_cancel: bool,
) -> None:
    # Given any history of logins, purchases and cancels, and a shop's definition: churned at t when no purchase
    # falls in the H days from t (with or without `cancel` ending a relationship)
    _load(snapshot_db, events)
    definition = SHOP_WITH_CANCEL if with_cancel else SHOP
    until = (START + timedelta(days=DAYS + 2)).date()

    # When snapshots and labels are computed
    compute_snapshots(snapshot_db, CATALOG, definition, until)
    compute_labels(snapshot_db, CATALOG, definition, horizon)

    # Then every user seen before t has a snapshot at t (unless a cancel ended them and nothing reopened), and
    # a snapshot is labelled, once t + H has passed in the data, exactly by "no purchase in [t, t + H)"
    times = _times(events)
    data_end = max(at for *_, at, _ in times)
    first_day = min(at for _, _, at, _ in times).date() + timedelta(days=1)
    expected_snapshots, expected_labels = set(), {}
    for user in {u for u, *_ in times}:
        mine = [(k, at, v) for u, k, at, v in times if u == user]
        for offset in range((until - first_day).days + 1):
            day = first_day + timedelta(days=offset)
            t = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if not any(at < t for _, at, _ in mine) or (with_cancel and _ended(mine, t)):
                continue
            expected_snapshots.add((user, t))
            if t + timedelta(days=horizon) <= data_end:
                ahead = [at for k, at, _ in mine if k == "purchase" and t <= at < t + timedelta(days=horizon)]
                expected_labels[(user, t)] = not ahead
    with psycopg.connect(snapshot_db) as conn:
        stored = {(u, at) for u, at in conn.execute(f"SELECT user_id, event_timestamp FROM {CATALOG.table}")}
    assert stored == expected_snapshots
    assert _labels(snapshot_db, horizon) == expected_labels


def test_a_changed_churn_definition_is_refused_and_replace_recomputes(database_url: str) -> None:
    from churn_platform.features import definitions

    # Given snapshots and labels computed under the subscription definition
    events = [("a", "purchase", d * 86_400, 10.0, UTC) for d in (0, 1, 2, 12, 15, 18)]
    _load(database_url, events)
    until = (START + timedelta(days=DAYS)).date()
    compute_snapshots(database_url, CATALOG, ChurnDefinition("contractual", ("cancel",)), until)
    compute_labels(database_url, CATALOG, ChurnDefinition("contractual", ("cancel",)), 5)
    before = _labels(database_url, 5)
    assert before and not any(before.values())

    # When the churn definition changes, both steps refuse with one line naming the way out, and nothing is mixed
    with pytest.raises(definitions.DefinitionChangedError, match=r"churn definition.*--replace"):
        compute_snapshots(database_url, CATALOG, SHOP, until)
    with pytest.raises(definitions.DefinitionChangedError, match="CHURN_FEATURE_CATALOG"):
        compute_labels(database_url, CATALOG, SHOP, 5)
    assert _labels(database_url, 5) == before

    # And `replace` recomputes everything under the new definition
    compute_snapshots(database_url, CATALOG, SHOP, until, replace=True)
    compute_labels(database_url, CATALOG, SHOP, 5)
    after = _labels(database_url, 5)
    assert after.keys() == before.keys() and any(after.values())


def test_a_users_file_reloaded_with_a_changed_plan_does_not_rewrite_past_snapshots(
    database_url: str, tmp_path: Path
) -> None:
    from churn_platform.data.ingest.loads import ingest_users

    # Given logins in March 2025, and users files loaded today: one signed up on basic, then moved to pro, and one
    # without a signup time
    _load(database_url, [(user, "login", d * 86_400 + 3_600, None, UTC) for d in range(10) for user in ("a", "b")])
    header = "user_id,signup_at,plan\n"
    (tmp_path / "v1.csv").write_text(header + "a,2025-02-01T00:00:00Z,basic\nb,,basic\n")
    (tmp_path / "v2.csv").write_text(header + "a,2025-02-01T00:00:00Z,pro\nb,,basic\n")
    ingest_users(database_url, tmp_path / "v1.csv")
    ingest_users(database_url, tmp_path / "v2.csv")

    # When snapshots of March are computed
    compute_snapshots(database_url, CATALOG, ChurnDefinition("contractual", ("cancel",)), (START + 10 * DAY).date())

    # Then every snapshot of `a` has the plan of signup, not today's, and `b`, known only from today, has none
    with psycopg.connect(database_url) as conn:
        plans = conn.execute(f"SELECT user_id, array_agg(DISTINCT plan) FROM {CATALOG.table} GROUP BY 1").fetchall()
    assert sorted(plans) == [("a", ["basic"]), ("b", [None])]
