"""Vectorised validation of one chunk of a user's file against a contract.

Every column is parsed with Arrow kernels into its contract type; a value that cannot be stored becomes a
`Problem` (a boolean mask over the chunk and a reason). A row with a problem goes to quarantine under the first
problem in contract column order. Python loops only over the bad rows, to build their quarantine records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from churn_platform.data.arrow_copy import TIMESTAMP_UTC
from churn_platform.data.ingest.contract import Column, Contract, ContractError, ValueType

# ISO-8601 with a UTC offset, as Arrow's parser reads it (up to 6 fractional digits: PostgreSQL keeps µs).
AWARE_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)$"
# The same without an offset, or a bare date: a local time, meaningful only with a time zone.
NAIVE_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?$"
NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# Year 1 in Arrow's microseconds since 1970: earlier values are data errors (and partly beyond PostgreSQL).
EARLIEST_US = -62_135_596_800_000_000

TARGET_TYPES = {ValueType.TEXT: pa.string(), ValueType.FLOAT: pa.float64(), ValueType.TIMESTAMP: TIMESTAMP_UTC}


@dataclass(frozen=True)
class ChunkContext:
    """Where a chunk comes from and the rules that depend on the load, for values and messages."""

    source: str
    first_row: int  # 1-based data row number of the chunk's first row
    timezone: str | None = None  # IANA zone of naive timestamps; None rejects them
    now: datetime | None = None  # timestamps after this are quarantined; None disables the check


@dataclass(frozen=True)
class Problem:
    """Rows of a chunk whose value in `column` cannot be loaded, and why."""

    column: str
    reason: str
    mask: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ValidatedChunk:
    """A chunk parsed into contract types, with the first problem of every bad row."""

    values: dict[str, pa.Array]  # every contract column, for every row of the chunk (NULL where bad)
    good: npt.NDArray[np.bool_]
    bad_rows: npt.NDArray[np.int64]  # indices in the chunk
    bad_columns: list[str]
    bad_reasons: list[str]

    def good_values(self) -> dict[str, pa.Array]:
        """The columns restricted to the good rows (no copy when every row is good)."""
        if self.good.all():
            return self.values
        keep = pa.array(self.good)
        return {name: array.filter(keep) for name, array in self.values.items()}


def _mask(condition: pa.Array) -> npt.NDArray[np.bool_]:
    result: npt.NDArray[np.bool_] = condition.fill_null(False).to_numpy(zero_copy_only=False)
    return result


def _plain(array: pa.Array) -> pa.Array:
    """Dictionary-decoded, with 32-bit offsets for text."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_large_string(array.type) or pa.types.is_string_view(array.type):
        array = array.cast(pa.string())
    return array


def _is_text(array: pa.Array) -> bool:
    return bool(pa.types.is_string(array.type))


def cast_or_null(array: pa.Array, target: pa.DataType) -> tuple[pa.Array, npt.NDArray[np.bool_]]:
    """Cast, turning the values Arrow refuses into NULL; also return the mask of refused values.

    Arrow's cast fails the whole array on one bad value; halving the failing array isolates the bad values in
    O(k log n) vectorised casts, so a chunk with a few bad dates does not fall back to a Python loop.
    """
    try:
        return pc.cast(array, target), np.zeros(len(array), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(array) == 1:
            return pa.nulls(1, target), np.ones(1, dtype=bool)
        half = len(array) // 2
        left, left_bad = cast_or_null(array.slice(0, half), target)
        right, right_bad = cast_or_null(array.slice(half), target)
        return pa.concat_arrays([left, right]), np.concatenate([left_bad, right_bad])


def parse_text(column: Column, array: pa.Array) -> tuple[pa.Array, list[Problem]]:
    """Text as given; an empty value is NULL for an optional column and a problem for a non-empty one."""
    array = _plain(array)
    if not _is_text(array):
        array = array.cast(pa.string())  # integer ids, or an all-null column
    problems = []
    blank = _mask(pc.or_kleene(array.is_null(), pc.equal(pc.utf8_trim_whitespace(array), "")))
    if column.non_empty:
        problems.append(Problem(column.name, f"{column.name} is empty", blank))
    elif blank.any():
        array = pc.if_else(pa.array(blank), pa.scalar(None, pa.string()), array)
    nul = _mask(pc.match_substring(array, "\x00"))
    if nul.any():
        problems.append(Problem(column.name, f"{column.name} contains a NUL character", nul))
        array = pc.if_else(pa.array(nul), pa.scalar(None, pa.string()), array)
    return array, problems


def parse_float(column: Column, array: pa.Array) -> tuple[pa.Array, list[Problem]]:
    """A number; text is parsed (empty is NULL), and NaN or infinity is a problem."""
    array = _plain(array)
    problems = []
    if _is_text(array):
        text = pc.utf8_trim_whitespace(array)
        numeric = _mask(pc.match_substring_regex(text, NUMBER))
        empty = _mask(pc.or_kleene(text.is_null(), pc.equal(text, "")))
        text = pc.if_else(pa.array(numeric), text, pa.scalar(None, pa.string()))
        values, refused = cast_or_null(text, pa.float64())
        problems.append(Problem(column.name, f"{column.name} is not a number", (~numeric & ~empty) | refused))
    else:
        values = pc.cast(array, pa.float64(), safe=False)
    finite = _mask(pc.is_finite(values)) | _mask(values.is_null())
    problems.append(Problem(column.name, f"{column.name} is not a finite number", ~finite))
    if not finite.all():
        values = pc.if_else(pa.array(finite), values, pa.scalar(None, pa.float64()))
    return values, problems


def _localise(naive: pa.Array, column: str, ctx: ChunkContext) -> tuple[pa.Array, list[Problem]]:
    """Naive timestamps read in `ctx.timezone`; a local time a DST change skips or repeats is a problem."""
    assert ctx.timezone is not None
    earliest = pc.assume_timezone(naive, ctx.timezone, ambiguous="earliest", nonexistent="earliest")
    latest = pc.assume_timezone(naive, ctx.timezone, ambiguous="latest", nonexistent="latest")
    unclear = _mask(pc.not_equal(earliest, latest))
    reason = f"{column} is a local time that a daylight-saving change skips or repeats in {ctx.timezone}"
    values = pc.if_else(pa.array(unclear), pa.scalar(None, TIMESTAMP_UTC), earliest.cast(TIMESTAMP_UTC))
    return values, [Problem(column, reason, unclear)]


def _parse_timestamp_text(
    column: str, array: pa.Array, ctx: ChunkContext
) -> tuple[pa.Array, npt.NDArray[np.bool_], list[Problem]]:
    """ISO-8601 text into UTC timestamps; returns values, the missing mask and the problems."""
    text = pc.utf8_trim_whitespace(array)
    missing = _mask(pc.or_kleene(text.is_null(), pc.equal(text, "")))
    aware = _mask(pc.match_substring_regex(text, AWARE_TIMESTAMP))
    naive = _mask(pc.match_substring_regex(text, NAIVE_TIMESTAMP))
    if naive.any() and ctx.timezone is None:
        index = int(np.flatnonzero(naive)[0])
        raise ContractError(
            f"{ctx.source}: {column} value {text[index].as_py()!r} on row {ctx.first_row + index} has no UTC "
            "offset; write offsets (e.g. 2024-01-31T12:00:00Z) or give the zone the file is in (--timezone)"
        )
    null_text = pa.scalar(None, pa.string())
    values, refused = cast_or_null(pc.if_else(pa.array(aware), text, null_text), TIMESTAMP_UTC)
    problems: list[Problem] = []
    if naive.any():
        local, naive_refused = cast_or_null(pc.if_else(pa.array(naive), text, null_text), pa.timestamp("us"))
        refused |= naive_refused
        localised, problems = _localise(local, column, ctx)
        values = pc.if_else(pa.array(naive), localised, values)
    unparseable = (~aware & ~naive & ~missing) | refused
    reason = f"{column} is not an ISO-8601 timestamp (e.g. 2024-01-31T12:00:00Z)"
    return values, missing, [Problem(column, reason, unparseable), *problems]


def parse_timestamp(column: Column, array: pa.Array, ctx: ChunkContext) -> tuple[pa.Array, list[Problem]]:
    """A UTC timestamp from a timestamp, date or ISO-8601 text value; naive values need `ctx.timezone`."""
    array = _plain(array)
    problems: list[Problem] = []
    if _is_text(array):
        values, missing, problems = _parse_timestamp_text(column.name, array, ctx)
    elif pa.types.is_null(array.type):
        values, missing = pa.nulls(len(array), TIMESTAMP_UTC), np.ones(len(array), dtype=bool)
    elif pa.types.is_timestamp(array.type) and array.type.tz is not None:
        values, missing = pc.cast(array, TIMESTAMP_UTC, safe=False), _mask(array.is_null())
    else:  # naive timestamps and dates: the schema check made sure a time zone was given
        local = pc.cast(array, pa.timestamp("us"), safe=False)
        values, problems = _localise(local, column.name, ctx)
        missing = _mask(array.is_null())
    if column.required:
        problems.insert(0, Problem(column.name, f"{column.name} is missing", missing))
    micros = values.cast(pa.int64())
    too_early = _mask(pc.less(micros, EARLIEST_US))
    problems.append(Problem(column.name, f"{column.name} is before the year 1", too_early))
    if ctx.now is not None:
        future = _mask(pc.greater(values, pa.scalar(ctx.now, TIMESTAMP_UTC)))
        reason = f"{column.name} is in the future (after {ctx.now.isoformat()})"
        problems.append(Problem(column.name, reason, future))
    return values, problems


def validate_chunk(contract: Contract, batch: pa.RecordBatch, ctx: ChunkContext) -> ValidatedChunk:
    """Parse every contract column of `batch` (absent optional columns are NULL) and find the bad rows."""
    rows = batch.num_rows
    values: dict[str, pa.Array] = {}
    problems: list[Problem] = []
    for column in contract.columns:
        index = batch.schema.get_field_index(column.name)
        if index < 0:
            values[column.name] = pa.nulls(rows, TARGET_TYPES[column.type])
            continue
        array = batch.column(index)
        if column.type is ValueType.TEXT:
            parsed, found = parse_text(column, array)
        elif column.type is ValueType.FLOAT:
            parsed, found = parse_float(column, array)
        else:
            parsed, found = parse_timestamp(column, array, ctx)
        values[column.name] = parsed
        problems.extend(p for p in found if p.mask.any())
    first_problem = np.full(rows, -1, dtype=np.int64)
    for number, problem in enumerate(problems):
        first_problem[(first_problem < 0) & problem.mask] = number
    bad_rows = np.flatnonzero(first_problem >= 0)
    return ValidatedChunk(
        values=values,
        good=first_problem < 0,
        bad_rows=bad_rows,
        bad_columns=[problems[first_problem[i]].column for i in bad_rows],
        bad_reasons=[problems[first_problem[i]].reason for i in bad_rows],
    )


def _jsonable(value: object) -> object:
    """A JSON value keeping what the file said: times as ISO text, NaN and infinity as text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, str):
        # jsonb cannot hold U+0000; keep it visible as the six characters \u0000.
        return value.replace("\x00", "\\u0000")
    return value


def quarantine_records(batch: pa.RecordBatch, chunk: ValidatedChunk, first_row: int) -> pa.Table:
    """The bad rows of a chunk as `raw.quarantine` rows: row number, column, reason and the original record."""
    originals = batch.take(pa.array(chunk.bad_rows)).to_pylist()
    records = [json.dumps({k: _jsonable(v) for k, v in record.items()}) for record in originals]
    return pa.table(
        {
            "row_number": pa.array(chunk.bad_rows + first_row, pa.int64()),
            "column_name": pa.array(chunk.bad_columns, pa.string()),
            "reason": pa.array(chunk.bad_reasons, pa.string()),
            "raw_record": pa.array(records, pa.string()),
        }
    )
