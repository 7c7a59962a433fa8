"""The event key against a reference built row by row from the documented byte layout."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import mmh3
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from churn_platform.data.arrow_copy import encode_rows
from churn_platform.data.ingest.event_key import FileEventKeys, RepeatCounter, canonical_event_bytes, event_keys

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = b"\x1f"


def _reference_key(
    user: str, kind: str, at: datetime, value: float | None, event_id: str | None, occurrence: int = 0
) -> bytes:
    """The documented key of one event, by hand: struct for the numbers, mmh3 for the hash."""
    if event_id is not None:
        return mmh3.hash_bytes(b"id" + US + event_id.encode())
    micros = (at - EPOCH) // timedelta(microseconds=1)
    amount = b"" if value is None else struct.pack(">d", 0.0 if value == 0 else value)
    content = user.encode() + US + kind.encode() + US + struct.pack(">q", micros) + US + amount
    return mmh3.hash_bytes(content + (US + struct.pack(">q", occurrence) if occurrence else b""))


def _keys(
    users: list[str], kinds: list[str], times: list[datetime], values: list[float | None], ids: list[str | None]
) -> list[bytes]:
    keys = event_keys(
        pa.array(users, pa.string()),
        pa.array(kinds, pa.string()),
        pa.array(times, pa.timestamp("us", "UTC")),
        pa.array(values, pa.float64()),
        pa.array(ids, pa.string()),
    )
    assert keys.type == pa.binary(16)
    return keys.to_pylist()  # type: ignore[no-any-return]


def test_a_key_hashes_the_documented_bytes() -> None:
    at = datetime(2024, 1, 5, 10, 0, 0, 250, tzinfo=UTC)
    micros = struct.pack(">q", 1_704_448_800_000_250)

    keys = _keys(["u1", "u2", "u3"], ["login", "buy", "buy"], [at] * 3, [None, 9.99, 1.0], [None, None, "ord-7"])

    assert keys == [
        mmh3.hash_bytes(b"u1\x1flogin\x1f" + micros + b"\x1f"),
        mmh3.hash_bytes(b"u2\x1fbuy\x1f" + micros + b"\x1f" + struct.pack(">d", 9.99)),
        mmh3.hash_bytes(b"id\x1ford-7"),  # with an event_id, only the id counts
    ]


def test_the_same_instant_and_amount_have_one_key_whatever_their_encoding() -> None:
    at = datetime(2024, 1, 5, 10, tzinfo=UTC)

    def key(times: pa.Array, value: float) -> bytes:
        one = event_keys(pa.array(["u1"]), pa.array(["buy"]), times, pa.array([value]), pa.array([None], pa.string()))
        return one[0].as_py()  # type: ignore[no-any-return]

    in_utc_micros = key(pa.array([at], pa.timestamp("us", "UTC")), 0.0)
    assert key(pa.array([at], pa.timestamp("ms", "Europe/Paris")), -0.0) == in_utc_micros


def test_a_null_value_and_a_zero_value_are_different_events() -> None:
    at = datetime(2024, 1, 5, tzinfo=UTC)
    null, zero = _keys(["u1"] * 2, ["buy"] * 2, [at] * 2, [None, 0.0], [None, None])
    assert null != zero


def test_an_event_without_a_user_cannot_be_keyed() -> None:
    with pytest.raises(ValueError, match="cannot be NULL"):
        canonical_event_bytes(
            pa.array([None], pa.string()),
            pa.array(["login"]),
            pa.array([datetime(2024, 1, 5, tzinfo=UTC)]),
            pa.array([None], pa.float64()),
            pa.array([None], pa.string()),
        )


def test_keys_are_copied_as_their_sixteen_bytes() -> None:
    keys = event_keys(
        pa.array(["u1"]),
        pa.array(["login"]),
        pa.array([datetime(2024, 1, 5, tzinfo=UTC)]),
        pa.array([None], pa.float64()),
        pa.array([None], pa.string()),
    )
    assert encode_rows([keys]).to_pybytes() == struct.pack(">hi", 1, 16) + keys[0].as_py()


texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
events = st.tuples(
    texts,
    texts,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)),
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
    st.none() | texts,
)


@given(st.lists(events, min_size=1, max_size=30))
def test_keys_match_the_row_by_row_reference(rows: list[tuple[str, str, datetime, float | None, str | None]]) -> None:
    users, kinds, times, values, ids = (list(column) for column in zip(*rows, strict=True))
    assert _keys(users, kinds, times, values, ids) == [_reference_key(*row) for row in rows]


Row = tuple[str, str, datetime, float | None, str | None]


def _columns(rows: list[Row]) -> list[pa.Array]:
    users, kinds, times, values, ids = (list(column) for column in zip(*rows, strict=True))
    return [
        pa.array(users, pa.string()),
        pa.array(kinds, pa.string()),
        pa.array(times, pa.timestamp("us", "UTC")),
        pa.array(values, pa.float64()),
        pa.array(ids, pa.string()),
    ]


def _reference_file_keys(rows: list[Row]) -> list[bytes]:
    """Row by row: a row without an event_id is numbered by the identical rows before it in the file."""
    seen: dict[tuple[str, str, datetime, float | None], int] = {}
    keys = []
    for user, kind, at, value, event_id in rows:
        occurrence = 0
        if event_id is None:
            content = (user, kind, at, 0.0 if value == 0 else value)
            occurrence = seen.get(content, 0)
            seen[content] = occurrence + 1
        keys.append(_reference_key(user, kind, at, value, event_id, occurrence))
    return keys


def test_a_repeat_key_hashes_the_content_then_its_occurrence() -> None:
    at = datetime(2024, 1, 5, tzinfo=UTC)
    content = b"u1\x1fbuy\x1f" + struct.pack(">q", 1_704_412_800_000_000) + b"\x1f" + struct.pack(">d", 5.0)

    keys = FileEventKeys().keys(*_columns([("u1", "buy", at, 5.0, None)] * 3))

    assert keys.to_pylist() == [
        mmh3.hash_bytes(content),  # the first occurrence keeps the plain content key
        mmh3.hash_bytes(content + b"\x1f" + struct.pack(">q", 1)),
        mmh3.hash_bytes(content + b"\x1f" + struct.pack(">q", 2)),
    ]


def test_a_repeated_event_id_keeps_one_key_and_is_no_repeat() -> None:
    at = datetime(2024, 1, 5, tzinfo=UTC)
    file = FileEventKeys()

    keys = file.keys(*_columns([("u1", "buy", at, 5.0, "ord-1"), ("u1", "buy", at, 5.0, "ord-1")]))

    assert keys.to_pylist() == [mmh3.hash_bytes(b"id\x1ford-1")] * 2
    assert file.rows_repeated == 0


def test_keys_that_share_a_fingerprint_but_differ_are_not_repeats() -> None:
    # Given two keys equal in their first 8 bytes (the sort fingerprint) and different after, in two calls
    counter = RepeatCounter()
    first, other = b"\x01" * 8 + b"\x02" * 8, b"\x01" * 8 + b"\x03" * 8

    def keys(*digests: bytes) -> pa.FixedSizeBinaryArray:
        return pa.array(list(digests), pa.binary(16))

    # Then neither is numbered, within a call or across calls; an equal key is
    assert counter.occurrences(keys(first, other)) is None
    assert counter.occurrences(keys(other)).tolist() == [1]  # type: ignore[union-attr]
    assert counter.occurrences(keys(first, other, first)).tolist() == [1, 2, 2]  # type: ignore[union-attr]
    assert counter.repeats == 4


repeated_events = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2"]),
        st.sampled_from(["buy", "login"]),
        st.sampled_from([datetime(2024, 1, day, tzinfo=UTC) for day in (1, 2)]),
        st.sampled_from([None, 0.0, -0.0, 5.0]),
        st.sampled_from([None, None, None, "e-1"]),
    ),
    min_size=1,
    max_size=40,
)


@given(repeated_events, st.integers(1, 9))
def test_a_file_keyed_chunk_by_chunk_numbers_repeats_across_chunks(rows: list[Row], chunk_rows: int) -> None:
    file = FileEventKeys()
    columns = _columns(rows)

    keys = [
        key
        for start in range(0, len(rows), chunk_rows)
        for key in file.keys(*(column.slice(start, chunk_rows) for column in columns)).to_pylist()
    ]

    assert keys == _reference_file_keys(rows)
    assert file.rows_repeated == sum(key != _reference_key(*row) for key, row in zip(keys, rows, strict=True))
