"""Ingestion of a user's own files into a real PostgreSQL: contract errors, quarantine, idempotency, users."""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mmh3
import psycopg
import pyarrow as pa
import pytest
from tests.integration.ingest_files import (
    NOW,
    query_rows,
    six_rows_with_a_bad_one,
    snapshot,
    stored_events,
    utc,
    write_csv,
    write_parquet,
)
from typer.testing import CliRunner

from churn_platform import cli, db
from churn_platform.data.ingest.loads import ContractError, LoadSummary, ingest_events, ingest_users
from churn_platform.serving.predictor import KNOWN_USERS_SQL


def _key(canonical: bytes) -> uuid.UUID:
    """The documented event key of hand-built canonical bytes: MurmurHash3 x64 128, seed 0."""
    return uuid.UUID(bytes=mmh3.hash_bytes(canonical))


def _content_key(user: str, kind: str, at: datetime, value: float | None) -> uuid.UUID:
    """The key of an event without an event_id, its canonical bytes built by hand from the documented layout."""
    micros = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    amount = b"" if value is None else struct.pack(">d", value)
    return _key(b"\x1f".join([user.encode(), kind.encode(), struct.pack(">q", micros), amount]))


# --- the whole file is rejected ----------------------------------------------------------------------------------


def test_a_file_without_a_required_column_writes_nothing(database_url: str, tmp_path: Path) -> None:
    # Given a database with one load already, and a file without user_id
    ingest_events(database_url, write_csv(tmp_path, "ok.csv", "u1,login,2024-01-05T10:00:00Z,,\n"), now=NOW)
    before = snapshot(database_url)
    path = write_csv(tmp_path, "no_user.csv", "login,2024-01-05T10:00:00Z\n", header="event_type,event_timestamp\n")

    # When it is ingested, then it is rejected naming the file and the column
    with pytest.raises(ContractError, match=r"no_user\.csv: required column\(s\) user_id missing"):
        ingest_events(database_url, path, now=NOW)
    # And nothing was written, not even a raw.loads row
    assert snapshot(database_url) == before


def test_a_parquet_file_with_a_mistyped_column_writes_nothing(database_url: str, tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path,
        "int_time.parquet",
        {"user_id": pa.array(["u1"]), "event_type": pa.array(["login"]), "event_timestamp": pa.array([1_704_448_800])},
    )
    before = snapshot(database_url)

    with pytest.raises(ContractError, match=r"int_time\.parquet: column event_timestamp has type int64"):
        ingest_events(database_url, path, now=NOW)
    assert snapshot(database_url) == before


def test_a_file_with_an_unknown_column_is_rejected_naming_it(database_url: str, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "extra.csv",
        "u1,login,2024-01-05T10:00:00Z,FR\n",
        header="user_id,event_type,event_timestamp,country\n",
    )

    with pytest.raises(ContractError, match=r"unknown column\(s\) country"):
        ingest_events(database_url, path, now=NOW)
    assert query_rows(database_url, "SELECT count(*) FROM raw.loads") == [(0,)]


def test_a_csv_row_with_too_many_fields_rejects_the_file(database_url: str, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path, "ragged.csv", "u1,login,2024-01-05T10:00:00Z,,\nu2,login,2024-01-05T10:00:00Z,,,surplus\n"
    )

    with pytest.raises(ContractError, match=r"ragged\.csv: malformed CSV: .*Expected 5 columns, got 6"):
        ingest_events(database_url, path, now=NOW)
    assert query_rows(database_url, "SELECT count(*) FROM raw.loads") == [(0,)]


def test_naive_timestamps_reject_the_file_even_after_earlier_chunks_were_staged(
    database_url: str, tmp_path: Path
) -> None:
    # Given five rows read two at a time, the fifth without a UTC offset
    body = "".join(f"u{i},login,2024-01-0{i}T10:00:00Z,,\n" for i in range(1, 5)) + "u5,login,2024-01-05T10:00:00,,\n"
    path = write_csv(tmp_path, "naive.csv", body)
    before = snapshot(database_url)

    # When it is ingested without a time zone, then the file is rejected at row 5
    with pytest.raises(
        ContractError, match=r"naive\.csv: event_timestamp value '2024-01-05T10:00:00' on row 5.*--timezone"
    ):
        ingest_events(database_url, path, chunk_rows=2, now=NOW)
    # And the four good rows already staged were rolled back with everything else
    assert snapshot(database_url) == before


def test_naive_timestamps_are_read_in_the_given_time_zone(database_url: str, tmp_path: Path) -> None:
    body = (
        "u1,login,2024-01-05T10:00:00,,\n"  # winter: UTC+1
        "u1,login,2024-07-05 10:00:00,,\n"  # summer: UTC+2
        "u1,login,2024-07-05T10:00:00Z,,\n"  # an explicit offset wins
        "u1,login,2024-03-31T02:30:00,,\n"  # skipped by the spring DST change
    )
    path = write_csv(tmp_path, "paris.csv", body)

    summary = ingest_events(database_url, path, timezone="Europe/Paris", now=NOW)

    assert [row[2] for row in stored_events(database_url)] == [
        utc(2024, 1, 5, 9),
        utc(2024, 7, 5, 8),
        utc(2024, 7, 5, 10),
    ]
    assert (summary.rows_loaded, summary.rows_quarantined) == (3, 1)
    assert query_rows(database_url, "SELECT row_number, reason FROM raw.quarantine") == [
        (4, "event_timestamp is a local time that a daylight-saving change skips or repeats in Europe/Paris")
    ]


def test_a_parquet_file_of_naive_timestamps_needs_a_time_zone(database_url: str, tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path,
        "naive.parquet",
        {
            "user_id": pa.array(["u1"]),
            "event_type": pa.array(["login"]),
            "event_timestamp": pa.array([datetime(2024, 1, 5, 10)], pa.timestamp("us")),
        },
    )

    with pytest.raises(ContractError, match=r"event_timestamp has type timestamp.*no time zone"):
        ingest_events(database_url, path, now=NOW)
    assert query_rows(database_url, "SELECT count(*) FROM raw.loads") == [(0,)]

    ingest_events(database_url, path, timezone="America/New_York", now=NOW)
    assert [row[2] for row in stored_events(database_url)] == [utc(2024, 1, 5, 15)]


# --- bad rows are quarantined, good rows load --------------------------------------------------------------------


def test_each_kind_of_bad_row_is_quarantined_with_where_why_and_the_whole_record(
    database_url: str, tmp_path: Path
) -> None:
    # Given a file with two good rows and one bad row of each kind
    body = (
        "u1,login,2024-01-05T10:00:00Z,,\n"
        ",login,2024-01-05T11:00:00Z,,\n"
        "u2,login,yesterday,,\n"
        "u2,purchase,2024-01-05T12:00:00Z,12 EUR,\n"
        "u3,login,2025-06-01T00:00:00Z,,\n"
        "u3,purchase,2024-01-06T09:30:00+02:00,9.99,\n"
    )
    path = write_csv(tmp_path, "mixed.csv", body)

    # When it is ingested
    summary = ingest_events(database_url, path, now=NOW)

    # Then the good rows are loaded, with the documented keys
    bought = utc(2024, 1, 6, 7, 30)
    assert (summary.rows_read, summary.rows_loaded, summary.rows_duplicate, summary.rows_quarantined) == (6, 2, 0, 4)
    assert query_rows(
        database_url, "SELECT event_key, user_id, event_type, event_timestamp, value FROM raw.events ORDER BY 4"
    ) == [
        (_content_key("u1", "login", utc(2024, 1, 5, 10), None), "u1", "login", utc(2024, 1, 5, 10), None),
        (_content_key("u3", "purchase", bought, 9.99), "u3", "purchase", bought, 9.99),
    ]
    # And each bad row is in quarantine with its file, row number, column, reason and original values
    source, sha256 = str(path.resolve()), hashlib.sha256(path.read_bytes()).hexdigest()

    def record(user: str, kind: str, time: str, value: str) -> dict[str, str]:
        return {"user_id": user, "event_type": kind, "event_timestamp": time, "value": value, "event_id": ""}

    assert query_rows(
        database_url,
        "SELECT source, source_sha256, kind, load_id, row_number, column_name, reason, raw_record"
        " FROM raw.quarantine ORDER BY row_number",
    ) == [
        (source, sha256, "events", summary.load_id, 2, "user_id", "user_id is empty",
         record("", "login", "2024-01-05T11:00:00Z", "")),
        (source, sha256, "events", summary.load_id, 3, "event_timestamp",
         "event_timestamp is not an ISO-8601 timestamp (e.g. 2024-01-31T12:00:00Z)",
         record("u2", "login", "yesterday", "")),
        (source, sha256, "events", summary.load_id, 4, "value", "value is not a number",
         record("u2", "purchase", "2024-01-05T12:00:00Z", "12 EUR")),
        (source, sha256, "events", summary.load_id, 5, "event_timestamp",
         "event_timestamp is in the future (after 2025-01-01T00:00:00+00:00)",
         record("u3", "login", "2025-06-01T00:00:00Z", "")),
    ]  # fmt: skip
    # And the load is logged with the same counts
    assert query_rows(
        database_url,
        "SELECT kind, source, source_sha256, rows_read, rows_loaded, rows_duplicate, rows_quarantined,"
        " finished_at IS NOT NULL FROM raw.loads",
    ) == [("events", source, sha256, 6, 2, 0, 4, True)]


def test_bad_parquet_rows_keep_their_typed_values(database_url: str, tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path,
        "typed.parquet",
        {
            "user_id": pa.array(["u1", "u2", "u3"]),
            "event_type": pa.array(["purchase"] * 3),
            "event_timestamp": pa.array(
                [utc(2024, 1, 5, 10), utc(2024, 1, 5, 11), utc(2026, 1, 1)], pa.timestamp("ms", "UTC")
            ),
            "value": pa.array([1.25, float("nan"), 3.0]),
        },
    )

    summary = ingest_events(database_url, path, now=NOW)

    assert (summary.rows_loaded, summary.rows_quarantined) == (1, 2)
    quarantined = "SELECT row_number, column_name, reason, raw_record FROM raw.quarantine ORDER BY 1"
    assert query_rows(database_url, quarantined) == [
        (2, "value", "value is not a finite number",
         {"user_id": "u2", "event_type": "purchase", "event_timestamp": "2024-01-05T11:00:00+00:00", "value": "nan"}),
        (3, "event_timestamp", "event_timestamp is in the future (after 2025-01-01T00:00:00+00:00)",
         {"user_id": "u3", "event_type": "purchase", "event_timestamp": "2026-01-01T00:00:00+00:00", "value": 3.0}),
    ]  # fmt: skip
    assert stored_events(database_url) == [("u1", "purchase", utc(2024, 1, 5, 10), 1.25, None)]


# --- idempotency -------------------------------------------------------------------------------------------------


def test_the_same_file_twice_adds_no_event_and_no_quarantine_row(database_url: str, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path, "twice.csv", "u1,login,2024-01-05T10:00:00Z,,\nu1,buy,2024-01-05T10:01:00Z,5,\n,login,x,,\n"
    )
    first = ingest_events(database_url, path, now=NOW)
    content = db.checksums(database_url)

    second = ingest_events(database_url, path, now=NOW)

    assert (first.rows_loaded, first.rows_duplicate, first.rows_quarantined) == (2, 0, 1)
    assert (second.rows_loaded, second.rows_duplicate, second.rows_quarantined) == (0, 2, 1)
    assert db.checksums(database_url) == content
    assert query_rows(database_url, "SELECT load_id, rows_loaded, rows_duplicate FROM raw.loads ORDER BY 1") == [
        (first.load_id, 2, 0),
        (second.load_id, 0, 2),
    ]


def test_overlapping_files_in_different_formats_never_duplicate_an_event(database_url: str, tmp_path: Path) -> None:
    # Given a CSV of events 1-3, and a Parquet file of events 2-5 where the shared ones are written differently
    ingest_events(
        database_url,
        write_csv(
            tmp_path,
            "first.csv",
            "u1,login,2024-01-05T10:00:00Z,,\n"
            "u1,buy,2024-01-05T11:00:00+01:00,20.5,\n"  # = 10:00 UTC
            "u2,login,2024-01-05T12:00:00Z,,ev-9\n",
        ),
        now=NOW,
    )
    second = write_parquet(
        tmp_path,
        "second.parquet",
        {
            "user_id": pa.array(["u1", "u2", "u3", "u3"]),
            "event_type": pa.array(["buy", "login", "login", "login"]),
            "event_timestamp": pa.array(
                [utc(2024, 1, 5, 10), utc(2024, 1, 5, 12), utc(2024, 1, 6), utc(2024, 1, 7)],
                pa.timestamp("us", "UTC"),
            ),
            "value": pa.array([20.5, None, None, None]),
            "event_id": pa.array([None, "ev-9", None, None]),
        },
    )

    # When the second file is ingested
    summary = ingest_events(database_url, second, now=NOW)

    # Then only its two new events are added
    assert (summary.rows_loaded, summary.rows_duplicate) == (2, 2)
    assert len(stored_events(database_url)) == 5
    # And every stored key is the documented formula over the stored row
    stored = query_rows(
        database_url, "SELECT event_key, user_id, event_type, event_timestamp, value, event_id FROM raw.events"
    )
    assert len(stored) == 5
    for key, user, kind, at, value, event_id in stored:
        assert key == (_key(b"id\x1f" + event_id.encode()) if event_id else _content_key(user, kind, at, value))
    assert query_rows(database_url, "SELECT event_key FROM raw.events WHERE event_id = 'ev-9'") == [
        (_key(b"id\x1fev-9"),)
    ]


def _repeat_key(user: str, kind: str, at: datetime, value: float | None, occurrence: int) -> uuid.UUID:
    """The documented key of the k-th repeat (k >= 1) of an identical row without an event_id."""
    if occurrence == 0:
        return _content_key(user, kind, at, value)
    micros = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    amount = b"" if value is None else struct.pack(">d", value)
    parts = [user.encode(), kind.encode(), struct.pack(">q", micros), amount, struct.pack(">q", occurrence)]
    return _key(b"\x1f".join(parts))


def _keys(url: str) -> set[uuid.UUID]:
    return {key for (key,) in query_rows(url, "SELECT event_key FROM raw.events")}


REPEATS = (
    "u1,login,2024-01-05T10:00:00Z,,\n"
    "u1,buy,2024-01-05T00:00:00Z,5,\n"  # two purchases of 5 on the same day, at day resolution: two events
    "u1,login,2024-01-05T11:00:00.000+01:00,,\n"  # the first row again, written differently
    "u1,buy,2024-01-05T00:00:00Z,5,\n"
    "u2,buy,2024-01-05T11:00:00Z,1,ev-1\n"
    "u2,buy,2024-01-05T11:00:00Z,2,ev-1\n"  # the same event_id with other content: one event, the first row
    "u1,buy,2024-01-05T00:00:00Z,5,\n"
)
REPEAT_KEYS = {
    _repeat_key("u1", "login", utc(2024, 1, 5, 10), None, 0),
    _repeat_key("u1", "login", utc(2024, 1, 5, 10), None, 1),
    *(_repeat_key("u1", "buy", utc(2024, 1, 5), 5.0, k) for k in range(3)),
    _key(b"id\x1fev-1"),
}


def test_identical_rows_of_a_file_are_each_an_event_and_a_repeated_event_id_is_one(
    database_url: str, tmp_path: Path
) -> None:
    path = write_csv(tmp_path, "repeats.csv", REPEATS)

    # When a file with identical rows is loaded
    first = ingest_events(database_url, path, now=NOW)

    # Then each row without an event_id is an event, keyed by its occurrence, and the summary counts the repeats
    assert (first.rows_read, first.rows_loaded, first.rows_duplicate, first.rows_repeated) == (7, 6, 1, 3)
    assert _keys(database_url) == REPEAT_KEYS
    assert ("u2", "buy", utc(2024, 1, 5, 11), 1.0, "ev-1") in stored_events(database_url)

    # And loading it again stores nothing more: each row is stored once
    content = db.checksums(database_url)
    again = ingest_events(database_url, path, now=NOW)
    assert (again.rows_loaded, again.rows_duplicate, again.rows_repeated) == (0, 7, 3)
    assert db.checksums(database_url) == content
    assert query_rows(database_url, "SELECT rows_repeated FROM raw.loads ORDER BY load_id") == [(3,), (3,)]


def test_a_second_file_adds_only_the_repeats_beyond_the_first(database_url: str, tmp_path: Path) -> None:
    # Given a CSV with a purchase twice, then a Parquet file with it three times (the instant in another zone)
    ingest_events(database_url, write_csv(tmp_path, "two.csv", "u1,buy,2024-01-05T00:00:00Z,5,\n" * 2), now=NOW)
    three = write_parquet(
        tmp_path,
        "three.parquet",
        {
            "user_id": pa.array(["u1"] * 3),
            "event_type": pa.array(["buy"] * 3),
            "event_timestamp": pa.array([utc(2024, 1, 5)] * 3, pa.timestamp("ms", "Asia/Tokyo")),
            "value": pa.array([5.0] * 3),
        },
    )

    # When the second file is loaded, then it adds the third occurrence only
    summary = ingest_events(database_url, three, now=NOW)

    assert (summary.rows_loaded, summary.rows_duplicate, summary.rows_repeated) == (1, 2, 2)
    assert _keys(database_url) == {_repeat_key("u1", "buy", utc(2024, 1, 5), 5.0, k) for k in range(3)}


def test_a_repeat_in_a_later_chunk_is_counted_once_per_repeat(make_database: Callable[[], str], tmp_path: Path) -> None:
    # Given rows A B A C A B read two at a time, so every repeat is in another chunk than the row it repeats
    rows = {name: f"u{name},login,2024-01-05T10:00:00Z,,\n" for name in "ABC"}
    path = write_csv(tmp_path, "chunks.csv", "".join(rows[name] for name in "ABACAB"))
    chunked, whole = make_database(), make_database()

    # When it is loaded in chunks of 2, and in one chunk elsewhere
    summaries = [ingest_events(chunked, path, now=NOW, chunk_rows=2), ingest_events(whole, path, now=NOW)]

    # Then both count the same three repeats, store the six rows, and give them the same keys
    assert [(s.rows_loaded, s.rows_repeated) for s in summaries] == [(6, 3), (6, 3)]
    at = utc(2024, 1, 5, 10)
    expected = {_repeat_key("uA", "login", at, None, k) for k in range(3)}
    expected |= {_repeat_key("uB", "login", at, None, k) for k in range(2)} | {_content_key("uC", "login", at, None)}
    assert _keys(chunked) == _keys(whole) == expected


def test_csv_and_parquet_of_the_same_rows_give_the_same_keys(make_database: Callable[[], str], tmp_path: Path) -> None:
    # Given the same five rows, two of them repeated, as a CSV in UTC+1 and as a Parquet file in UTC
    csv_path = write_csv(
        tmp_path,
        "same.csv",
        "u1,buy,2024-01-05T11:00:00+01:00,9.5,\n"
        "u1,buy,2024-01-05T11:00:00+01:00,9.5,\n"
        "u2,login,2024-01-06T01:00:00+01:00,,\n"
        "u1,buy,2024-01-05T10:00:00Z,9.5,\n"
        "u2,login,2024-01-06T01:00:00+01:00,,e-1\n",
    )
    parquet_path = write_parquet(
        tmp_path,
        "same.parquet",
        {
            "user_id": pa.array(["u1", "u1", "u2", "u1", "u2"]),
            "event_type": pa.array(["buy", "buy", "login", "buy", "login"]),
            "event_timestamp": pa.array(
                [utc(2024, 1, 5, 10)] * 2 + [utc(2024, 1, 6)] + [utc(2024, 1, 5, 10), utc(2024, 1, 6)],
                pa.timestamp("us", "UTC"),
            ),
            "value": pa.array([9.5, 9.5, None, 9.5, None]),
            "event_id": pa.array([None, None, None, None, "e-1"]),
        },
    )
    from_csv, from_parquet = make_database(), make_database()

    csv_load = ingest_events(from_csv, csv_path, now=NOW)
    parquet_load = ingest_events(from_parquet, parquet_path, now=NOW)

    assert csv_load.rows_repeated == parquet_load.rows_repeated == 2
    assert _keys(from_csv) == _keys(from_parquet)
    assert len(_keys(from_csv)) == 5


# --- users -------------------------------------------------------------------------------------------------------

USERS_HEADER = "user_id,signup_at,plan,plan_price,channel,region\n"


def _users(url: str) -> list[tuple[Any, ...]]:
    return query_rows(
        url, "SELECT user_id, signup_at, plan, plan_price, channel, region, load_id FROM raw.users ORDER BY 1"
    )


def test_users_are_upserted_and_a_reload_changes_nothing(database_url: str, tmp_path: Path) -> None:
    # Given a users file, with one user twice (the later row wins) and one bad row
    first_file = write_csv(
        tmp_path,
        "users_v1.csv",
        "u1,2024-01-01T00:00:00Z,basic,9.99,ads,EU\n"
        "u2,2024-02-01T00:00:00Z,basic,9.99,seo,US\n"
        "u2,2024-02-01T00:00:00Z,pro,19.99,seo,US\n"
        "u3,2024-03-01T00:00:00Z,basic,cheap,seo,US\n",
        header=USERS_HEADER,
    )
    first = ingest_users(database_url, first_file)
    assert (first.rows_read, first.rows_loaded, first.rows_duplicate, first.rows_quarantined) == (4, 2, 1, 1)
    assert _users(database_url) == [
        ("u1", utc(2024, 1, 1), "basic", 9.99, "ads", "EU", first.load_id),
        ("u2", utc(2024, 2, 1), "pro", 19.99, "seo", "US", first.load_id),
    ]
    assert query_rows(database_url, "SELECT row_number, kind, column_name, reason FROM raw.quarantine") == [
        (4, "users", "plan_price", "plan_price is not a number")
    ]

    # When the same file is loaded again, then nothing changes (not even the rows' load ids)
    again = ingest_users(database_url, first_file)
    assert (again.rows_loaded, again.rows_duplicate) == (0, 3)
    assert [row[-1] for row in _users(database_url)] == [first.load_id, first.load_id]

    # When a newer file with some of the columns arrives
    newer = ingest_users(
        database_url,
        write_csv(tmp_path, "users_v2.csv", "u1,pro,19.99\nu4,,\n", header="user_id,plan,plan_price\n"),
    )

    # Then its columns overwrite (an empty value clears), the others are kept, and new users are added
    assert (newer.rows_loaded, newer.rows_duplicate) == (2, 0)
    assert _users(database_url) == [
        ("u1", utc(2024, 1, 1), "pro", 19.99, "ads", "EU", newer.load_id),
        ("u2", utc(2024, 2, 1), "pro", 19.99, "seo", "US", first.load_id),
        ("u4", None, None, None, None, None, newer.load_id),
    ]


def test_users_with_naive_signup_times_need_a_time_zone(database_url: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "users.csv", "u1,2024-01-05 10:00\n", header="user_id,signup_at\n")

    with pytest.raises(ContractError, match="signup_at value '2024-01-05 10:00' on row 1 has no UTC offset"):
        ingest_users(database_url, path)
    ingest_users(database_url, path, timezone="Asia/Tokyo")

    assert [row[:2] for row in _users(database_url)] == [("u1", utc(2024, 1, 5, 1))]


def test_a_file_of_events_alone_makes_its_users_known(database_url: str, tmp_path: Path) -> None:
    # Given no users file, and events of two customers (the first load into an empty table goes in bulk)
    events = write_csv(tmp_path, "buys.csv", "c1,buy,2024-01-05T00:00:00Z,5,\nc2,buy,2024-01-06T00:00:00Z,7,\n")

    # When the events are loaded
    first = ingest_events(database_url, events, now=NOW)

    # Then both customers are users without attributes, known to serving, added by that load
    assert (first.method, first.users_added) == ("bulk", 2)
    assert _users(database_url) == [
        ("c1", None, None, None, None, None, first.load_id),
        ("c2", None, None, None, None, None, first.load_id),
    ]
    assert query_rows(database_url, "SELECT users_added FROM raw.loads") == [(2,)]
    known = query_rows(database_url, KNOWN_USERS_SQL.replace("%(ids)s", "ARRAY['c1', 'c2', 'c9']"))
    assert sorted(known) == [("c1",), ("c2",)]

    # And a users file fills one in, which a later events file (incremental) leaves alone while adding a new user
    users = write_csv(tmp_path, "u.csv", "c1,2023-12-01T00:00:00Z,basic,9,ads,EU\n", USERS_HEADER)
    filled = ingest_users(database_url, users)
    more = write_csv(tmp_path, "more.csv", "c1,buy,2024-02-01T00:00:00Z,3,\nc3,buy,2024-02-01T00:00:00Z,4,\n")
    later = ingest_events(database_url, more, now=NOW, allow_bulk=False)
    assert (filled.rows_loaded, later.method, later.users_added) == (1, "incremental", 1)
    assert _users(database_url) == [
        ("c1", utc(2023, 12, 1), "basic", 9.0, "ads", "EU", filled.load_id),
        ("c2", None, None, None, None, None, first.load_id),
        ("c3", None, None, None, None, None, later.load_id),
    ]
    assert ingest_events(database_url, events, now=NOW).users_added == 0


# --- versions of user attributes -------------------------------------------------------------------------------


def _versions(url: str) -> list[tuple[Any, ...]]:
    return query_rows(
        url,
        "SELECT user_id, valid_from, plan, plan_price, channel, region, load_id FROM raw.user_attributes"
        " ORDER BY user_id, valid_from",
    )


def _started_at(url: str, load_id: int) -> datetime:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT started_at FROM raw.loads WHERE load_id = %s", (load_id,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_a_users_file_gives_first_versions_from_signup_and_a_reload_adds_none(
    database_url: str, tmp_path: Path
) -> None:
    # Given users known from events only (no attributes), and a users file naming one with a signup time, one
    # without, and leaving the third out
    ingest_events(
        database_url,
        write_csv(tmp_path, "e.csv", "u1,buy,2024-01-05T00:00:00Z,5,\nu9,buy,2024-01-06T00:00:00Z,7,\n"),
        now=NOW,
    )
    assert _versions(database_url) == []
    path = write_csv(
        tmp_path, "users.csv", "u1,2023-12-01T00:00:00Z,basic,9,ads,EU\nu2,,pro,19,seo,US\n", header=USERS_HEADER
    )

    # When it is loaded, then each user it names gets a version: from signup, else from the load
    first = ingest_users(database_url, path)
    assert _versions(database_url) == [
        ("u1", utc(2023, 12, 1), "basic", 9.0, "ads", "EU", first.load_id),
        ("u2", _started_at(database_url, first.load_id), "pro", 19.0, "seo", "US", first.load_id),
    ]
    # And loading the same file again adds no version (nor a differently ordered copy of it)
    before = db.checksums(database_url)
    ingest_users(database_url, path)
    ingest_users(database_url, write_csv(tmp_path, "same.csv", "u2,pro\nu1,basic\n", header="user_id,plan\n"))
    assert db.checksums(database_url) == before


def test_a_changed_attribute_adds_a_version_valid_from_its_load(database_url: str, tmp_path: Path) -> None:
    # Given a user on basic since signup
    first = ingest_users(
        database_url, write_csv(tmp_path, "v1.csv", "u1,2023-12-01T00:00:00Z,basic,9,ads,EU\n", header=USERS_HEADER)
    )

    # When a later file moves them to pro, and another changes only the signup time
    changed = ingest_users(
        database_url, write_csv(tmp_path, "v2.csv", "u1,pro,19\n", header="user_id,plan,plan_price\n")
    )
    ingest_users(database_url, write_csv(tmp_path, "v3.csv", "u1,2023-11-01T00:00:00Z\n", header="user_id,signup_at\n"))

    # Then the plan change is a version valid from the start of its load, the old one is kept, and a signup time
    # is no attribute version
    assert _versions(database_url) == [
        ("u1", utc(2023, 12, 1), "basic", 9.0, "ads", "EU", first.load_id),
        ("u1", _started_at(database_url, changed.load_id), "pro", 19.0, "ads", "EU", changed.load_id),
    ]
    # And clearing every attribute is a change too
    cleared = ingest_users(
        database_url, write_csv(tmp_path, "v4.csv", "u1,,,,\n", header="user_id,plan,plan_price,channel,region\n")
    )
    assert _versions(database_url)[-1] == (
        "u1",
        _started_at(database_url, cleared.load_id),
        None,
        None,
        None,
        None,
        cleared.load_id,
    )


def test_applying_the_schema_gives_users_of_an_older_database_one_version_once(
    database_url: str, tmp_path: Path
) -> None:
    # Given users loaded before attributes had versions (one with a signup time, one without, one from events)
    ingest_events(database_url, write_csv(tmp_path, "e.csv", "u3,buy,2024-01-05T00:00:00Z,5,\n"), now=NOW)
    load = ingest_users(
        database_url,
        write_csv(
            tmp_path, "u.csv", "u1,2023-12-01T00:00:00Z,basic,9,ads,EU\nu2,,pro,19,seo,US\n", header=USERS_HEADER
        ),
    )
    expected = _versions(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM raw.user_attributes")

    # When the schema is applied, twice
    db.init_schema(database_url)
    db.init_schema(database_url)

    # Then each user with attributes has one version, valid from signup, else from its load
    assert _versions(database_url) == expected
    assert [v[:2] for v in expected] == [("u1", utc(2023, 12, 1)), ("u2", _started_at(database_url, load.load_id))]


# --- progress and the command line -------------------------------------------------------------------------------


def test_progress_reports_every_row_once(database_url: str, tmp_path: Path) -> None:
    seen: list[int] = []
    summary = ingest_events(
        database_url, six_rows_with_a_bad_one(tmp_path), chunk_rows=4, now=NOW, progress=seen.append
    )
    assert seen == [4, 2]
    assert sum(seen) == summary.rows_read == 6


def test_the_cli_loads_a_good_file_and_prints_the_summary(platform_database: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "good.csv", "u1,login,2024-01-05T10:00:00Z,,\nu1,login,2024-01-05T10:00:00Z,,\n,x,y,,\n")

    result = CliRunner().invoke(cli.app, ["ingest", "events", str(path)])

    assert result.exit_code == 0, result.output
    assert "rows read" in result.stdout and "quarantined" in result.stdout
    assert "│         3 │      2 │          0 │           1 │" in result.stdout
    assert "in-file repeats: 1 " in result.stdout and "new users from events: 1" in result.stdout
    assert len(stored_events(platform_database)) == 2


def test_the_cli_reports_a_contract_error_in_one_line_and_exits_1(platform_database: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "bad.csv", "u1,login\n", header="user_id,event_type\n")

    result = CliRunner().invoke(cli.app, ["ingest", "events", str(path)])

    assert result.exit_code == 1
    assert "error:" in result.stderr and "required column(s) event_timestamp missing" in result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert query_rows(platform_database, "SELECT count(*) FROM raw.loads") == [(0,)]


def test_summaries_render_as_markdown() -> None:
    summary = LoadSummary(7, "events", "/data/e.csv", 1_000, 900, 50, 50, 2.0, "bulk", rows_repeated=30, users_added=4)
    assert summary.rows_per_second == 500
    assert "### events load 7 (bulk)" in summary.to_markdown()
    assert "| 1,000 | 900 | 50 | 50 | 30 | 4 | 2.00 | 500 |" in summary.to_markdown()
    assert json.dumps(summary.__dict__)  # plain values: loggable and serialisable as a flow result
