"""The synthetic world in a real PostgreSQL: determinism across databases, refusal, atomicity, continuation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import numpy as np
import psycopg
import pytest
from psycopg import sql

from churn_platform import db
from churn_platform.data.synthetic import simulator, world, world_model
from churn_platform.data.synthetic.world_model import WorldConfig


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        schema, name = table.split(".")
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()
    assert row is not None
    return int(row[0])


def test_the_same_seed_into_two_fresh_databases_gives_identical_tables(make_database: Callable[[], str]) -> None:
    # Given two fresh databases
    first, second = make_database(), make_database()
    config = WorldConfig(users=1_000, days=365, seed=7)

    # When the default world is generated into each
    summary = world.generate_world(first, config)
    world.generate_world(second, config)

    # Then every table has the same row count and checksum
    sums_first, sums_second = db.checksums(first), db.checksums(second)
    assert sums_first == sums_second
    by_table = {c.table: c for c in sums_first}
    assert by_table["raw.users"].rows == 1_000
    assert 1_200_000 <= by_table["raw.events"].rows <= 1_600_000
    assert by_table["synthetic.oracle_churn"].rows > 100_000
    # And the summary reports a positive-label rate within the specified band
    assert summary.positive_label_rate is not None
    assert 0.05 <= summary.positive_label_rate <= 0.15
    assert summary.written is not None
    assert summary.written.events == by_table["raw.events"].rows


def test_generating_over_an_existing_world_refuses_unless_replace(database_url: str) -> None:
    small = WorldConfig(users=50, days=20, seed=1)
    world.generate_world(database_url, small)
    before = db.checksums(database_url)

    with pytest.raises(world.WorldExistsError, match="--replace"):
        world.generate_world(database_url, WorldConfig(users=60, days=20, seed=2))
    assert db.checksums(database_url) == before

    world.generate_world(database_url, WorldConfig(users=60, days=20, seed=2), replace=True)
    assert _count(database_url, "raw.users") == 60
    assert db.checksums(database_url) != before


def test_a_crash_mid_generation_leaves_the_database_as_it_was(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a database with a world in it, and event batches small enough that some reach the server early
    monkeypatch.setattr(world, "EVENT_BATCH_ROWS", 1_000)
    world.generate_world(database_url, WorldConfig(users=80, days=30, seed=4))
    before = db.checksums(database_url)
    days_seen = []

    def crash_after_ten_days(days: int) -> None:
        days_seen.append(days)
        if len(days_seen) == 10:
            raise KeyboardInterrupt

    # When a replacing generation is interrupted part-way, after events have been streamed to the server
    with pytest.raises(KeyboardInterrupt):
        world.generate_world(
            database_url, WorldConfig(users=500, days=60, seed=5), replace=True, progress=crash_after_ten_days
        )

    # Then nothing of it remains, and the old world is intact, indexes included
    assert db.checksums(database_url) == before
    with psycopg.connect(database_url) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
    assert {"events_pkey", "events_user_time_idx", "events_time_brin"} <= indexes
    assert len(days_seen) == 10  # the crash came after 10 days, well past the first streamed batches


def test_advance_continues_the_stored_world(database_url: str) -> None:
    config = WorldConfig(users=300, days=60, seed=6)
    world.generate_world(database_url, config)
    with psycopg.connect(database_url) as conn:
        last_before = conn.execute("SELECT max(event_timestamp) FROM raw.events").fetchone()[0]  # type: ignore[index]

    summary = world.advance_world(database_url, 10)

    with psycopg.connect(database_url) as conn:
        days_simulated = conn.execute("SELECT days_simulated FROM synthetic.worlds").fetchone()[0]  # type: ignore[index]
        first_new = conn.execute(
            "SELECT min(event_timestamp) FROM raw.events WHERE load_id = (SELECT max(load_id) FROM raw.loads)"
        ).fetchone()[0]  # type: ignore[index]
        after_cancel = conn.execute(
            """SELECT count(*) FROM raw.events e JOIN (
                   SELECT user_id, min(event_timestamp) AS at FROM raw.events WHERE event_type = 'cancel'
                   GROUP BY user_id) c USING (user_id)
               WHERE e.event_timestamp > c.at"""
        ).fetchone()[0]  # type: ignore[index]
    assert days_simulated == 70
    assert summary.written is not None
    assert summary.written.events > 0
    assert first_new > last_before  # new days only, after what was there
    assert first_new >= datetime(2025, 3, 2, tzinfo=UTC)
    assert after_cancel == 0  # a churned user stays silent across the continuation
    assert summary.users > 300  # new users kept arriving after the initial period
    assert _count(database_url, "raw.users") == summary.users
    with psycopg.connect(database_url) as conn:
        oracle_days = conn.execute(
            "SELECT count(DISTINCT day) FROM synthetic.oracle_churn WHERE day >= '2025-03-02'"
        ).fetchone()
    assert oracle_days == (10,)


@pytest.mark.parametrize("kind", ["subscription", "purchases"])
def test_every_user_of_the_world_has_the_version_of_their_attributes_from_signup(
    database_url: str, kind: world_model.WorldKind
) -> None:
    # Given a world of either kind, continued with new arrivals
    world.generate_world(database_url, WorldConfig(users=200, days=30, seed=3, kind=kind))
    summary = world.advance_world(database_url, 10)
    assert summary.users > 200

    # Then each user, the new ones too, has exactly one version: what raw.users holds, valid from signup
    with psycopg.connect(database_url) as conn:
        users = conn.execute(
            "SELECT user_id, signup_at, plan, plan_price, channel, region, load_id FROM raw.users ORDER BY 1"
        ).fetchall()
        versions = conn.execute(
            "SELECT user_id, valid_from, plan, plan_price, channel, region, load_id FROM raw.user_attributes"
            " ORDER BY 1, 2"
        ).fetchall()
    assert len(users) == summary.users
    assert versions == users


def test_advance_without_a_world_says_so(database_url: str) -> None:
    with pytest.raises(world.NoWorldError, match="churn generate"):
        world.advance_world(database_url, 5)


def test_binary_copy_round_trips_every_field(database_url: str) -> None:
    # Given a small simulated world loaded through binary COPY
    config = WorldConfig(users=40, days=15, seed=8)
    state = simulator.new_world(config)
    sim = simulator.simulate(config, state, config.days)
    world.generate_world(database_url, config)

    # When the rows are read back
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, event_type, (extract(epoch FROM event_timestamp) * 1e6)::bigint, value"
            " FROM raw.events ORDER BY event_key"
        ).fetchall()
        users = conn.execute("SELECT user_id, plan, plan_price, signup_at FROM raw.users ORDER BY user_id").fetchall()

    # Then they equal the simulator's arrays, value for value (keys follow the event sequence)
    events = sim.events
    order = np.argsort(events.seq)
    assert len(rows) == len(events)
    for row, i in zip(rows, order, strict=True):
        assert row[0] == f"u{events.user_index[i]:07d}"
        assert row[1] == world_model.EVENT_TYPES[events.event_code[i]]
        assert row[2] == events.timestamp_us[i]
        expected = events.value[i]
        assert (row[3] is None) if np.isnan(expected) else row[3] == pytest.approx(expected)
    assert len(users) == 40
    assert users[0][0] == "u0000000"
    assert users[0][1] in world_model.PLANS
    assert users[0][3].tzinfo is not None


def test_checksums_do_not_depend_on_the_session_time_zone(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    world.generate_world(database_url, WorldConfig(users=30, days=10, seed=2))
    in_utc = db.checksums(database_url)
    monkeypatch.setenv("PGTZ", "Asia/Kolkata")
    monkeypatch.setenv("PGDATESTYLE", "SQL, DMY")
    assert db.checksums(database_url) == in_utc


def test_a_purchases_world_loads_continues_and_labels_no_purchase_within_the_horizon(
    platform_database: str,
) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    # Given `churn generate --kind purchases --returns common` on a fresh database
    result = CliRunner().invoke(
        cli.app,
        ["generate", "--kind", "purchases", "--returns", "common", "--users", "200", "--days", "90",
         "--horizon", "14", "--seed", "3"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # Then the stored world is a purchases world, its users have no plan, and its only events are purchases
    stored = world.load_world(platform_database)
    assert stored is not None
    config, state = stored
    assert (config.kind, config.returns, config.horizon_days) == ("purchases", "common", 14)
    with psycopg.connect(platform_database) as conn:
        assert conn.execute("SELECT count(*), count(plan), count(channel) FROM raw.users").fetchone() == (200, 0, 200)
        types = conn.execute("SELECT DISTINCT event_type FROM raw.events").fetchall()
        first_day = conn.execute("SELECT min(day) FROM synthetic.oracle_churn").fetchone()
    assert types == [("purchase",)]
    # And the summary's rate is "no purchase within H days", computed from the database as the labels define it
    summary = world.summarise(platform_database, config, state)
    assert summary.positive_label_rate is not None and 0.2 < summary.positive_label_rate < 0.95
    assert ("kind", "purchases (returns: common)") in world.summary_rows(summary)

    # When the world is advanced, it continues where it stopped, and `churn world show` reads it back
    advanced = world.advance_world(platform_database, 5)
    assert advanced.last_day == date(2025, 4, 5)
    assert _count(platform_database, "raw.users") == advanced.users
    show = CliRunner().invoke(cli.app, ["world", "show"], terminal_width=200)
    assert show.exit_code == 0, show.output
    assert "no purchase within 14 days" in show.output
    assert first_day == (date(2025, 1, 2),)
