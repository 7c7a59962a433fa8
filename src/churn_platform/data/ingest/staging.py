"""Stream a user's file into PostgreSQL: validated rows into a COPY target, quarantined rows into a TEMP table.

The target is a TEMP staging table, or `raw.events` itself for a bulk load (`event_loads`). The good rows of
every chunk go into one binary COPY that stays open across chunks and is written by psycopg's queued writer
thread, so PostgreSQL parses a chunk while Python reads and validates the next one. Quarantined rows (usually
few) are encoded as they are found into a spool file (in memory up to a size, then on disk) and COPYed after.
TEMP tables need no WAL, have no index, and are dropped at commit or rollback.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg.copy import QueuedLibpqWriter

from churn_platform.data.arrow_copy import HEADER, TRAILER, encode_rows
from churn_platform.data.ingest.contract import EVENTS, USERS, Contract
from churn_platform.data.ingest.event_key import FileEventKeys
from churn_platform.data.ingest.sources import SourceFile, iter_chunks
from churn_platform.data.ingest.validation import ChunkContext, ValidatedChunk, quarantine_records, validate_chunk

# Temp tables live in session-local buffers: sized so a whole file's staged rows stay in memory (it is only used
# as rows arrive). Must be set before the session's first temp table.
STAGING_TEMP_BUFFERS = "SET temp_buffers = '512MB'"

CREATE_EVENTS_STAGING = """
CREATE TEMP TABLE events_staging (
    event_key uuid, user_id text, event_type text, event_timestamp timestamptz, value double precision, event_id text
) ON COMMIT DROP"""
CREATE_USERS_STAGING = """
CREATE TEMP TABLE users_staging (
    row_number bigint, user_id text, signup_at timestamptz, plan text, plan_price double precision,
    channel text, region text
) ON COMMIT DROP"""
CREATE_QUARANTINE_STAGING = """
CREATE TEMP TABLE quarantine_staging (row_number bigint, column_name text, reason text, raw_record text)
ON COMMIT DROP"""
COPY_EVENTS_STAGING = "COPY pg_temp.events_staging FROM STDIN (FORMAT binary)"
COPY_USERS_STAGING = "COPY pg_temp.users_staging FROM STDIN (FORMAT binary)"
COPY_QUARANTINE_STAGING = "COPY pg_temp.quarantine_staging FROM STDIN (FORMAT binary)"

# Quarantined rows beyond this many bytes of COPY payload wait on disk instead of in memory.
QUARANTINE_SPOOL_BYTES = 64 << 20
SPOOL_READ_BYTES = 1 << 20


# The COPY columns of a chunk's good rows, given the chunk and the file row number of its first row.
ChunkColumns = Callable[[ValidatedChunk, int], Sequence[pa.Array]]


@dataclass(frozen=True)
class CopyTarget:
    """Where the good rows of a file go: a COPY statement, its columns, and the TEMP table to create first."""

    copy: str
    columns: ChunkColumns
    create: str | None = None


@dataclass
class KeyedEvents:
    """The COPY columns of one file's events, chunk by chunk in file order: event_key, then the events contract's
    columns (the columns of the events staging table). Keys number the in-file repeats of identical rows across
    chunks, so a file needs its own instance; the file's user ids are gathered on the way."""

    keys: FileEventKeys = field(default_factory=FileEventKeys)
    user_ids: set[str] = field(default_factory=set)

    def __call__(self, chunk: ValidatedChunk, first_row: int) -> list[pa.Array]:
        good = chunk.good_values()
        user_id = good["user_id"]
        key = self.keys.keys(user_id, good["event_type"], good["event_timestamp"], good["value"], good["event_id"])
        self.user_ids.update(pc.unique(user_id).to_pylist())
        return [key, *(good[name] for name in EVENTS.names)]


def numbered_users(chunk: ValidatedChunk, first_row: int) -> list[pa.Array]:
    """The row's number in the file (the last row of a user wins), then the users contract's columns."""
    good = chunk.good_values()
    numbers = pa.array(np.flatnonzero(chunk.good) + first_row, pa.int64())
    return [numbers, *(good[name] for name in USERS.names)]


def events_staging(events: KeyedEvents) -> CopyTarget:
    """The TEMP events staging table as the COPY target of a file's `events`."""
    return CopyTarget(COPY_EVENTS_STAGING, events, CREATE_EVENTS_STAGING)


USERS_STAGING = CopyTarget(COPY_USERS_STAGING, numbered_users, CREATE_USERS_STAGING)


@dataclass(frozen=True)
class FileReading:
    """How a file is read: its source and contract, the chunk size, the time rules, and the progress callback."""

    source: SourceFile
    contract: Contract
    chunk_rows: int
    timezone: str | None
    now: datetime | None  # rows after it are quarantined; None disables the check
    progress: Callable[[int], None] | None = None  # called with the rows of each chunk, once it is COPYed


@dataclass(frozen=True)
class StagedFile:
    """What staging read: every row is either staged or quarantined."""

    rows_read: int
    rows_quarantined: int


def _copy_spool(cursor: psycopg.Cursor[tuple[object, ...]], spool: tempfile.SpooledTemporaryFile[bytes]) -> None:
    spool.seek(0)
    with cursor.copy(COPY_QUARANTINE_STAGING) as copy:
        copy.write(HEADER)
        while block := spool.read(SPOOL_READ_BYTES):
            copy.write(block)
        copy.write(TRAILER)


def stage_file(conn: psycopg.Connection, reading: FileReading, target: CopyTarget) -> StagedFile:
    """COPY the file's good rows into `target` and its bad rows into quarantine staging, in the open transaction.

    Creates the TEMP tables (the target's, if it has one, and quarantine staging) first.
    """
    if target.create is not None:
        conn.execute(target.create)
    conn.execute(CREATE_QUARANTINE_STAGING)
    source, contract = reading.source, reading.contract
    rows_read = rows_quarantined = 0
    with conn.cursor() as cursor, tempfile.SpooledTemporaryFile(max_size=QUARANTINE_SPOOL_BYTES) as spool:
        with cursor.copy(target.copy, writer=QueuedLibpqWriter(cursor)) as copy:
            copy.write(HEADER)
            for batch in iter_chunks(source, reading.chunk_rows):
                context = ChunkContext(source.name, rows_read + 1, reading.timezone, reading.now)
                chunk = validate_chunk(contract, batch, context)
                copy.write(memoryview(encode_rows(target.columns(chunk, rows_read + 1))))
                if len(chunk.bad_rows):
                    records = quarantine_records(batch, chunk, rows_read + 1)
                    spool.write(memoryview(encode_rows([column.combine_chunks() for column in records.columns])))
                    rows_quarantined += len(chunk.bad_rows)
                rows_read += batch.num_rows
                if reading.progress is not None:
                    reading.progress(batch.num_rows)
            copy.write(TRAILER)
        if rows_quarantined:
            _copy_spool(cursor, spool)
    return StagedFile(rows_read, rows_quarantined)
