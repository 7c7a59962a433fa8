"""Ingestion of a user's own files into a real PostgreSQL: contract errors, quarantine, idempotency, users."""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mmh3
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


def test_rows_repeated_within_a_file_collapse_and_the_first_wins(database_url: str, tmp_path: Path) -> None:
    body = (
        "u1,login,2024-01-05T10:00:00Z,,\n"
        "u1,login,2024-01-05T10:00:00.000Z,,\n"  # the same instant written differently
        "u2,buy,2024-01-05T11:00:00Z,1,ev-1\n"
        "u2,buy,2024-01-05T11:00:00Z,2,ev-1\n"  # the same event_id with other content
    )
    summary = ingest_events(database_url, write_csv(tmp_path, "repeats.csv", body), now=NOW)

    assert (summary.rows_read, summary.rows_loaded, summary.rows_duplicate) == (4, 2, 2)
    assert stored_events(database_url) == [
        ("u1", "login", utc(2024, 1, 5, 10), None, None),
        ("u2", "buy", utc(2024, 1, 5, 11), 1.0, "ev-1"),
    ]


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
    assert "│         3 │      1 │          1 │           1 │" in result.stdout
    assert len(stored_events(platform_database)) == 1


def test_the_cli_reports_a_contract_error_in_one_line_and_exits_1(platform_database: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "bad.csv", "u1,login\n", header="user_id,event_type\n")

    result = CliRunner().invoke(cli.app, ["ingest", "events", str(path)])

    assert result.exit_code == 1
    assert "error:" in result.stderr and "required column(s) event_timestamp missing" in result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert query_rows(platform_database, "SELECT count(*) FROM raw.loads") == [(0,)]


def test_summaries_render_as_markdown() -> None:
    summary = LoadSummary(7, "events", "/data/e.csv", 1_000, 900, 50, 50, 2.0, "bulk")
    assert summary.rows_per_second == 500
    assert "### events load 7 (bulk)" in summary.to_markdown()
    assert "| 1,000 | 900 | 50 | 50 | 2.00 | 500 |" in summary.to_markdown()
    assert json.dumps(summary.__dict__)  # plain values: loggable and serialisable as a flow result
