"""The two ways events reach raw.events, bulk and incremental: the same result, and all or nothing when a load is
interrupted, crashes or is killed, whichever it takes."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from tests.integration.ingest_files import (
    INDEXES,
    NOW,
    query_rows,
    six_rows_with_a_bad_one,
    snapshot,
    stored_events,
    utc,
    write_csv,
    write_parquet,
)

from churn_platform import db
from churn_platform.data.ingest.event_loads import stored_events_at_most
from churn_platform.data.ingest.loads import LoadSummary, ingest_events

# --- atomicity ---------------------------------------------------------------------------------------------------


LOCKS_ON_EVENTS = """
SELECT mode FROM pg_locks
WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND relation = 'raw.events'::regclass AND granted AND pid <> pg_backend_pid()"""


def _locks_on_events(url: str) -> set[str]:
    """The lock modes other sessions hold on raw.events: a bulk load holds it exclusively until it ends."""
    return {row[0] for row in query_rows(url, LOCKS_ON_EVENTS)}


@pytest.mark.parametrize("allow_bulk", [True, False], ids=["bulk", "incremental"])
@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_an_interrupted_load_leaves_every_table_as_it_was(
    database_url: str, tmp_path: Path, interruption: BaseException, allow_bulk: bool
) -> None:
    # Given a database with an earlier load, smaller than the next file (which can thus load in bulk)
    ingest_events(database_url, write_csv(tmp_path, "before.csv", "u0,login,2024-01-01T00:00:00Z,,\n,x,y,,\n"), now=NOW)
    before = snapshot(database_url)
    locks: list[set[str]] = []

    def interrupt_after_the_first_chunk(rows: int) -> None:
        locks.append(_locks_on_events(database_url))
        raise interruption

    # When a load is interrupted after its first chunk
    with pytest.raises(type(interruption)):
        ingest_events(
            database_url, six_rows_with_a_bad_one(tmp_path), chunk_rows=2, now=NOW,
            progress=interrupt_after_the_first_chunk, allow_bulk=allow_bulk,
        )  # fmt: skip

    # Then it did copy a chunk, straight into raw.events (locked) in bulk, and nothing of it is visible
    assert len(locks) == 1
    assert ("AccessExclusiveLock" in locks[0]) == allow_bulk
    assert snapshot(database_url) == before


KILLED_LOAD = """
import sys, time
from datetime import datetime, UTC
from pathlib import Path
from churn_platform.data.ingest.loads import ingest_events

def stall(rows):
    print("staged", rows, flush=True)
    time.sleep(120)

ingest_events(sys.argv[1], Path(sys.argv[2]), chunk_rows=1000, now=datetime(2025, 1, 1, tzinfo=UTC), progress=stall)
"""


def test_a_killed_load_leaves_every_table_as_it_was(database_url: str, tmp_path: Path) -> None:
    # Given a database with an earlier load, and a file of 5,000 events
    ingest_events(database_url, write_csv(tmp_path, "before.csv", "u0,login,2023-12-31T00:00:00Z,,\n"), now=NOW)
    before = snapshot(database_url)
    path = write_parquet(
        tmp_path,
        "big.parquet",
        {
            "user_id": pa.array([f"u{i % 50}" for i in range(5_000)]),
            "event_type": pa.array(["login"] * 5_000),
            "event_timestamp": pa.array([utc(2024, 1, 1) + timedelta(seconds=i) for i in range(5_000)]),
        },
    )

    # When a process loading it is killed with SIGKILL after it staged its first chunk
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_LOAD, database_url, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "staged 1000"
        # (in bulk: straight into raw.events, which the load holds exclusively)
        assert "AccessExclusiveLock" in _locks_on_events(database_url)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    # Then every table is as it was
    assert snapshot(database_url) == before
    # And nothing is left locked: the same file loads completely, in bulk again
    reloaded = ingest_events(database_url, path, now=NOW)
    assert (reloaded.rows_loaded, reloaded.method) == (5_000, "bulk")


# --- bulk and incremental loads ----------------------------------------------------------------------------------


def _end_state(url: str) -> tuple[object, ...]:
    """A database's content, its load log without the times, which load each event came from, and the indexes."""
    return (
        db.checksums(url),
        query_rows(
            url,
            "SELECT load_id, kind, source, source_sha256, rows_read, rows_loaded, rows_duplicate, rows_quarantined"
            " FROM raw.loads ORDER BY load_id",
        ),
        query_rows(url, "SELECT event_key, load_id FROM raw.events ORDER BY event_key"),
        query_rows(url, INDEXES),
    )


def _counts(summary: LoadSummary) -> tuple[int, int, int, int]:
    return summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_quarantined


def test_a_bulk_load_that_finds_duplicates_ends_exactly_like_an_incremental_one(
    make_database: Callable[[], str], tmp_path: Path
) -> None:
    # Given a file that repeats an event_id (for an empty table) and an identical row (a second event), and a second
    # file overlapping the first, as large as the table by then
    first = write_csv(
        tmp_path,
        "first.csv",
        "u1,login,2024-01-05T10:00:00Z,,\n"
        "u2,buy,2024-01-05T11:00:00Z,1,ev-1\n"
        "u1,login,2024-01-05T11:00:00+01:00,,\n"  # the first row again, in another zone: a second event
        "u2,buy,2024-01-05T11:00:00Z,2,ev-1\n"  # the same event_id with other content: the first row wins
        "u3,login,2024-01-06T10:00:00Z,,\n"
        ",login,2024-01-06T10:00:00Z,,\n"
        "u4,buy,2024-01-07T10:00:00Z,-0.0,\n",
    )
    second = write_parquet(
        tmp_path,
        "second.parquet",
        {
            "user_id": pa.array(["u4", "u3", "u5", "u5", "u6", "u7"]),
            "event_type": pa.array(["buy", "login", "login", "login", "login", "login"]),
            "event_timestamp": pa.array(
                [utc(2024, 1, 7, 10), utc(2024, 1, 6, 10), *(utc(2024, 1, day) for day in (8, 9, 10, 11))],
                pa.timestamp("us", "UTC"),
            ),
            "value": pa.array([0.0, None, None, None, None, None]),  # 0.0 and -0.0 are the same amount
        },
    )
    with_bulk, incremental = make_database(), make_database()

    # When both load into one database with bulk loads allowed, and into another incrementally
    tried = [ingest_events(with_bulk, path, now=NOW) for path in (first, second)]
    plain = [ingest_events(incremental, path, now=NOW, allow_bulk=False) for path in (first, second)]

    # Then each bulk load was rolled back for its duplicates and the file loaded incrementally
    assert [summary.method for summary in tried] == ["incremental after bulk"] * 2
    assert [summary.method for summary in plain] == ["incremental"] * 2
    # With the same counts, the first occurrence kept, and the same end state to the last index
    expected = [(7, 5, 1, 1), (6, 4, 2, 0)]
    assert [_counts(summary) for summary in tried] == [_counts(summary) for summary in plain] == expected
    assert ("u2", "buy", utc(2024, 1, 5, 11), 1.0, "ev-1") in stored_events(with_bulk)
    assert _end_state(with_bulk) == _end_state(incremental)


def test_a_file_as_large_as_the_table_appends_in_bulk_and_keeps_the_indexes(
    make_database: Callable[[], str], tmp_path: Path
) -> None:
    # Given a database loaded in bulk, and a file of new events at least as large as the table
    url, fresh = make_database(), make_database()
    first = ingest_events(url, write_csv(tmp_path, "a.csv", "u1,login,2024-01-05T10:00:00Z,,\n"), now=NOW)
    more = write_csv(tmp_path, "b.csv", "u1,login,2024-01-06T10:00:00Z,,\nu2,buy,2024-01-06T11:00:00Z,3.5,ord-1\n")

    # When it is loaded, then it is appended in bulk
    second = ingest_events(url, more, now=NOW)
    assert [(s.method, *_counts(s)) for s in (first, second)] == [("bulk", 1, 1, 0, 0), ("bulk", 2, 2, 0, 0)]
    assert query_rows(url, "SELECT load_id, count(*) FROM raw.events GROUP BY 1 ORDER BY 1") == [
        (first.load_id, 1),
        (second.load_id, 2),
    ]
    # And raw.events has the indexes of the schema, and its primary key makes a repeated load duplicates
    assert query_rows(url, INDEXES) == query_rows(fresh, INDEXES)
    again = ingest_events(url, more, now=NOW)  # now smaller than the table
    assert (again.method, *_counts(again)) == ("incremental", 2, 0, 2, 0)


def test_choosing_a_path_estimates_the_table_without_locking_it(database_url: str, tmp_path: Path) -> None:
    # Given a table of five events
    ingest_events(database_url, six_rows_with_a_bad_one(tmp_path), now=NOW)

    with psycopg.connect(database_url) as conn:
        # When a load compares it with its file, then a file of 5 rows is at least as large, one of 4 is not
        assert (stored_events_at_most(conn, 5), stored_events_at_most(conn, 4)) == (True, False)
        # And the transaction holds no lock on it yet: two bulk loads queue on the exclusive lock, never deadlock
        own_locks = "SELECT count(*) FROM pg_locks WHERE relation = 'raw.events'::regclass AND pid = pg_backend_pid()"
        assert conn.execute(own_locks).fetchone() == (0,)
