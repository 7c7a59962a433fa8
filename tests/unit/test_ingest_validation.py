"""The events and users contracts on their own: shape checks, value parsing, quarantine records, binary COPY."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from churn_platform.data.arrow_copy import HEADER, TRAILER, encode_rows
from churn_platform.data.ingest.contract import EVENTS, USERS, Contract, ContractError, check_columns, check_schema
from churn_platform.data.ingest.sources import estimate_rows, iter_chunks, open_source
from churn_platform.data.ingest.validation import (
    ChunkContext,
    Problem,
    ValidatedChunk,
    cast_or_null,
    parse_float,
    parse_text,
    parse_timestamp,
    quarantine_records,
    validate_chunk,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)
TIMESTAMP = EVENTS.column("event_timestamp")


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]


def _ctx(timezone: str | None = None, now: datetime | None = None, first_row: int = 1) -> ChunkContext:
    return ChunkContext("events.csv", first_row, timezone, now)


def _bad(problems: list[Problem], rows: int) -> dict[str, list[int]]:
    """reason -> rows it flags, for the problems that flag any (all masks cover the `rows` values)."""
    assert all(len(p.mask) == rows for p in problems)
    return {p.reason: np.flatnonzero(p.mask).tolist() for p in problems if p.mask.any()}


# --- shape -------------------------------------------------------------------------------------------------------


def test_a_header_without_a_required_column_is_rejected_naming_it() -> None:
    with pytest.raises(ContractError, match=r"events\.csv: required column\(s\) user_id missing"):
        check_columns(EVENTS, ["event_type", "event_timestamp"], "events.csv")


def test_an_unknown_column_is_rejected_naming_it() -> None:
    with pytest.raises(ContractError, match=r"unknown column\(s\) country; the events contract only has"):
        check_columns(EVENTS, ["user_id", "event_type", "event_timestamp", "country"], "events.csv")


def test_a_repeated_column_is_rejected() -> None:
    with pytest.raises(ContractError, match=r"column\(s\) user_id appear more than once"):
        check_columns(USERS, ["user_id", "plan", "user_id"], "users.csv")


def _read(path: Path, contract: Contract, timezone: str | None = None) -> ValidatedChunk:
    """A file checked and read as a load reads it: its shape, then its one chunk parsed into contract types."""
    source = open_source(path, contract, timezone=timezone)
    (batch,) = list(iter_chunks(source, chunk_rows=1_000))
    return validate_chunk(contract, batch, ChunkContext(source.name, 1, timezone, NOW))


def test_optional_columns_may_be_absent(tmp_path: Path) -> None:
    # Given files with only the required columns (in another order than the contract's)
    events = tmp_path / "events.csv"
    events.write_text(
        "event_timestamp,user_id,event_type\n2024-01-05T10:00:00Z,u1,login\n2024-01-06T10:00+01:00,42,cancel\n"
    )
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu1\n42\n")

    # When they are read
    read_events, read_users = _read(events, EVENTS), _read(users, USERS)

    # Then every row loads with its values, and each absent optional column is there as NULL
    assert read_events.good.tolist() == [True, True]
    assert read_events.values["user_id"].to_pylist() == ["u1", "42"]
    assert read_events.values["event_type"].to_pylist() == ["login", "cancel"]
    assert read_events.values["event_timestamp"].to_pylist() == [_utc(2024, 1, 5, 10), _utc(2024, 1, 6, 9)]
    assert read_events.values["value"].to_pylist() == [None, None]
    assert read_events.values["event_id"].to_pylist() == [None, None]
    assert read_users.good.tolist() == [True, True]
    assert read_users.values["user_id"].to_pylist() == ["u1", "42"]
    optional = [c.name for c in USERS.columns if not c.required]
    assert {name: read_users.values[name].to_pylist() for name in optional} == {name: [None, None] for name in optional}


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (pa.field("event_timestamp", pa.int64()), "column event_timestamp has type int64; expected a timestamp"),
        (pa.field("event_timestamp", pa.timestamp("us")), "has no time zone"),
        (pa.field("event_timestamp", pa.date32()), "has no time zone"),
        (pa.field("event_type", pa.int32()), "column event_type has type int32; expected text"),
        (pa.field("event_timestamp", pa.null()), "required column event_timestamp has no values"),
    ],
)
def test_a_parquet_column_of_the_wrong_type_is_rejected(field: pa.Field, message: str) -> None:
    fields = {"user_id": pa.string(), "event_type": pa.string(), "event_timestamp": pa.timestamp("us", "UTC")}
    fields[field.name] = field.type
    with pytest.raises(ContractError, match=message):
        check_schema(EVENTS, pa.schema(fields), "events.parquet", timezone=None)


def test_parquet_types_the_contract_can_hold_are_accepted(tmp_path: Path) -> None:
    # Given a Parquet file whose columns are not text or UTC timestamps, but types the contract can hold
    table = pa.table(
        {
            "user_id": pa.array([42, 7], pa.int64()),  # integer ids load as their decimal text
            "event_type": pa.array(["login", "cancel"]).dictionary_encode(),
            "event_timestamp": pa.array([datetime(2024, 1, 5, 10), datetime(2024, 7, 5, 10)], pa.timestamp("ns"))
            .cast(pa.timestamp("ns", "UTC"))
            .cast(pa.timestamp("ns", "Europe/Paris")),
            "value": pa.array([Decimal("12.50"), None], pa.decimal128(10, 2)),
            "event_id": pa.array(["e1", "e2"], pa.large_string()),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")

    # When it is read, the values are the file's, in the contract's types
    read = _read(tmp_path / "events.parquet", EVENTS)
    assert read.good.tolist() == [True, True]
    assert read.values["user_id"].to_pylist() == ["42", "7"]
    assert read.values["event_type"].to_pylist() == ["login", "cancel"]
    assert read.values["event_timestamp"].to_pylist() == [_utc(2024, 1, 5, 10), _utc(2024, 7, 5, 10)]
    assert read.values["value"].to_pylist() == [12.5, None]
    assert read.values["event_id"].to_pylist() == ["e1", "e2"]

    # And naive timestamps, with the zone they are in, are read in that zone (winter and summer offsets)
    naive = table.set_column(
        2, "event_timestamp", pa.array([datetime(2024, 1, 5, 10), datetime(2024, 7, 5, 10)], pa.timestamp("us"))
    )
    pq.write_table(naive, tmp_path / "naive.parquet")
    read_naive = _read(tmp_path / "naive.parquet", EVENTS, timezone="Europe/Paris")
    assert read_naive.good.tolist() == [True, True]
    assert read_naive.values["event_timestamp"].to_pylist() == [_utc(2024, 1, 5, 9), _utc(2024, 7, 5, 8)]


# --- timestamps --------------------------------------------------------------------------------------------------


def test_iso_timestamps_with_an_offset_are_read_as_utc() -> None:
    text = pa.array(
        ["2024-01-05T10:00:00Z", "2024-01-05 10:00:00+01:00", "2024-01-05T10:00:00.123456+0100", "2024-01-05T10:00-05"]
    )
    values, problems = parse_timestamp(TIMESTAMP, text, _ctx(now=NOW))
    assert values.to_pylist() == [
        _utc(2024, 1, 5, 10),
        _utc(2024, 1, 5, 9),
        _utc(2024, 1, 5, 9, 0, 0, 123456),
        _utc(2024, 1, 5, 15),
    ]
    assert _bad(problems, 4) == {}


def test_bad_timestamps_are_problems_with_their_reason() -> None:
    text = pa.array(["2024-01-05T10:00:00Z", "", "yesterday", "2024-02-30T10:00:00Z", "2025-06-01T00:00:00Z", None])
    values, problems = parse_timestamp(TIMESTAMP, text, _ctx(now=NOW))
    assert _bad(problems, 6) == {
        "event_timestamp is missing": [1, 5],
        "event_timestamp is not an ISO-8601 timestamp (e.g. 2024-01-31T12:00:00Z)": [2, 3],
        "event_timestamp is in the future (after 2025-01-01T00:00:00+00:00)": [4],
    }
    assert values[0].as_py() == _utc(2024, 1, 5, 10)


def test_naive_text_timestamps_reject_the_file_without_a_time_zone() -> None:
    text = pa.array(["2024-01-05T10:00:00Z", "2024-01-05T11:00:00"])
    with pytest.raises(ContractError, match=r"events\.csv: event_timestamp value '2024-01-05T11:00:00' on row 12"):
        parse_timestamp(TIMESTAMP, text, _ctx(first_row=11))


def test_naive_text_timestamps_are_read_in_the_given_zone() -> None:
    text = pa.array(["2024-01-05T10:00:00", "2024-07-05 10:00", "2024-01-05", "2024-01-05T10:00:00Z"])
    values, problems = parse_timestamp(TIMESTAMP, text, _ctx(timezone="Europe/Paris"))
    assert values.to_pylist() == [
        _utc(2024, 1, 5, 9),  # CET, UTC+1
        _utc(2024, 7, 5, 8),  # CEST, UTC+2
        _utc(2024, 1, 4, 23),  # a bare date is local midnight
        _utc(2024, 1, 5, 10),  # an explicit offset wins over the zone
    ]
    assert _bad(problems, 4) == {}


def test_local_times_a_dst_change_skips_or_repeats_are_problems() -> None:
    text = pa.array(["2024-03-10T02:30:00", "2024-11-03T01:30:00", "2024-11-03T03:30:00"])
    values, problems = parse_timestamp(TIMESTAMP, text, _ctx(timezone="America/New_York"))
    reason = "event_timestamp is a local time that a daylight-saving change skips or repeats in America/New_York"
    assert _bad(problems, 3) == {reason: [0, 1]}
    assert values.to_pylist() == [None, None, _utc(2024, 11, 3, 8, 30)]


def test_typed_parquet_timestamps_are_converted_to_utc_and_checked() -> None:
    paris = pa.array([datetime(2024, 1, 5, 10), datetime(2030, 1, 1), None], pa.timestamp("ns", "Europe/Paris"))
    values, problems = parse_timestamp(TIMESTAMP, paris, _ctx(now=NOW))
    assert values[0].as_py() == _utc(2024, 1, 5, 10)  # Arrow stores UTC instants; the zone is display only
    assert _bad(problems, 3) == {
        "event_timestamp is missing": [2],
        "event_timestamp is in the future (after 2025-01-01T00:00:00+00:00)": [1],
    }


# Dates that look right to a regular expression but that no calendar has.
_DATES = st.one_of(
    st.dates().map(lambda d: f"{d.isoformat()}T12:00:00Z"),
    st.sampled_from(["2024-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-01-01T25:00Z"]),
)


@given(st.lists(_DATES, max_size=60))
def test_cast_or_null_matches_casting_each_value_alone(texts: list[str]) -> None:
    def alone(text: str) -> datetime | None:
        try:
            return pa.array([text]).cast(pa.timestamp("us", "UTC"))[0].as_py()  # type: ignore[no-any-return]
        except pa.ArrowInvalid:
            return None

    values, refused = cast_or_null(pa.array(texts, pa.string()), pa.timestamp("us", "UTC"))
    expected = [alone(t) for t in texts]
    assert values.to_pylist() == expected
    assert refused.tolist() == [e is None for e in expected]


# --- numbers and text --------------------------------------------------------------------------------------------


def test_numeric_text_is_parsed_and_anything_else_is_a_problem() -> None:
    text = pa.array(["1.5", " 2 ", "-1e3", "", ".5", "abc", "12 EUR", "nan", "inf", None])
    values, problems = parse_float(EVENTS.column("value"), text)
    assert values.to_pylist() == [1.5, 2.0, -1000.0, None, 0.5, None, None, None, None, None]
    assert _bad(problems, 10) == {"value is not a number": [5, 6, 7, 8]}


def test_non_finite_parquet_floats_are_problems() -> None:
    values, problems = parse_float(EVENTS.column("value"), pa.array([1.0, float("nan"), float("-inf"), None]))
    assert _bad(problems, 4) == {"value is not a finite number": [1, 2]}
    assert values.to_pylist() == [1.0, None, None, None]


def test_an_empty_required_text_is_a_problem_and_an_empty_optional_one_is_null() -> None:
    user_ids, user_problems = parse_text(EVENTS.column("user_id"), pa.array(["u1", "", "  ", None, "u\x00"]))
    assert user_ids.to_pylist()[:4] == ["u1", "", "  ", None]  # kept as given; the problem decides
    assert _bad(user_problems, 5) == {"user_id is empty": [1, 2, 3], "user_id contains a NUL character": [4]}
    event_ids, id_problems = parse_text(EVENTS.column("event_id"), pa.array(["e1", "", None]))
    assert event_ids.to_pylist() == ["e1", None, None]
    assert _bad(id_problems, 3) == {}
    integer_ids, _ = parse_text(EVENTS.column("user_id"), pa.array([42, 7], pa.int64()))
    assert integer_ids.to_pylist() == ["42", "7"]


# --- a whole chunk -----------------------------------------------------------------------------------------------


def test_a_row_is_quarantined_under_its_first_problem_in_contract_order() -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "user_id": ["u1", "", "u3", "u4"],
            "event_type": ["login", "login", "buy", "buy"],
            "event_timestamp": ["2024-01-05T10:00:00Z", "bad", "2024-01-05T10:00:00Z", "bad"],
            "value": ["", "", "x", "x"],
        }
    )
    chunk = validate_chunk(EVENTS, batch, _ctx(now=NOW, first_row=101))
    assert chunk.good.tolist() == [True, False, False, False]
    assert chunk.bad_rows.tolist() == [1, 2, 3]
    assert chunk.bad_columns == ["user_id", "value", "event_timestamp"]
    assert chunk.bad_reasons[1] == "value is not a number"
    assert set(chunk.values) == set(EVENTS.names)  # absent optional columns are all NULL
    assert chunk.good_values()["event_id"].to_pylist() == [None]

    records = quarantine_records(batch, chunk, first_row=101).to_pylist()
    assert [r["row_number"] for r in records] == [102, 103, 104]
    assert json.loads(records[0]["raw_record"]) == {
        "user_id": "",
        "event_type": "login",
        "event_timestamp": "bad",
        "value": "",
    }


def test_quarantine_records_keep_typed_values_as_json() -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "user_id": pa.array(["u\x00"]),
            "event_type": pa.array(["buy"]),
            "event_timestamp": pa.array([_utc(2024, 1, 5, 10)], pa.timestamp("us", "UTC")),
            "value": pa.array([float("nan")]),
        }
    )
    chunk = validate_chunk(EVENTS, batch, _ctx(now=NOW))
    (record,) = quarantine_records(batch, chunk, first_row=1).to_pylist()
    assert (record["column_name"], record["reason"]) == ("user_id", "user_id contains a NUL character")
    assert json.loads(record["raw_record"]) == {
        "user_id": "u\\u0000",  # jsonb cannot hold U+0000: kept visible as text
        "event_type": "buy",
        "event_timestamp": "2024-01-05T10:00:00+00:00",
        "value": "nan",
    }


# --- binary COPY and row counts ----------------------------------------------------------------------------------


def test_binary_copy_rows_follow_postgres_wire_format() -> None:
    payload = encode_rows(
        [
            pa.array(["ab", None], pa.string()),
            pa.array([_utc(2000, 1, 1, 0, 0, 1), None], pa.timestamp("us", "UTC")),
            pa.array([None, 1.5], pa.float64()),
            pa.array([7, None], pa.int64()),
        ]
    )
    first = (
        struct.pack(">h", 4)
        + struct.pack(">i", 2) + b"ab"
        + struct.pack(">iq", 8, 1_000_000)  # microseconds since 2000-01-01
        + struct.pack(">i", -1)
        + struct.pack(">iq", 8, 7)
    )  # fmt: skip
    second = struct.pack(">hi", 4, -1) + struct.pack(">i", -1) + struct.pack(">id", 8, 1.5) + struct.pack(">i", -1)
    assert payload.to_pybytes() == first + second
    assert HEADER.startswith(b"PGCOPY\n\xff\r\n\x00") and TRAILER == b"\xff\xff"


def test_row_estimates_are_exact_for_parquet_and_small_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "events.csv"
    csv_path.write_text("user_id,event_type,event_timestamp\n" + "u1,login,2024-01-05T10:00:00Z\n" * 7)
    parquet_path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"user_id": ["u"] * 12}), parquet_path)
    assert estimate_rows(csv_path) == 7
    assert estimate_rows(parquet_path) == 12


def test_fixed_width_fields_packed_side_by_side_follow_the_wire_format() -> None:
    payload = encode_rows(
        [
            pa.array([1, 2], pa.int64()),
            pa.array([0.5, -1.0], pa.float64()),
            pa.array(["é", ""], pa.string()),
            pa.array([b"k" * 16, b"\x00" * 16], pa.binary(16)),
        ]
    )
    assert payload.to_pybytes() == (
        struct.pack(">hiqid", 4, 8, 1, 8, 0.5) + struct.pack(">i", 2) + "é".encode() + struct.pack(">i", 16) + b"k" * 16
        + struct.pack(">hiqid", 4, 8, 2, 8, -1.0) + struct.pack(">i", 0) + struct.pack(">i", 16) + b"\x00" * 16
    )  # fmt: skip
