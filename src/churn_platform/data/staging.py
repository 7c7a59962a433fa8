"""Stream a user's file into TEMP staging tables: validated rows in one, quarantined rows in another.

The good rows of every chunk go into one binary COPY that stays open across chunks and is written by psycopg's
queued writer thread, so PostgreSQL parses a chunk while Python reads and validates the next one. Quarantined
rows (usually few) are encoded as they are found into a spool file (in memory up to a size, then on disk) and
COPYed after. TEMP tables need no WAL, have no index, and are dropped at commit or rollback.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import psycopg
import pyarrow as pa
from psycopg.copy import QueuedLibpqWriter

from churn_platform.data.arrow_copy import HEADER, TRAILER, encode_rows
from churn_platform.data.contract import Contract
from churn_platform.data.sources import SourceFile, iter_chunks
from churn_platform.data.validation import ChunkContext, quarantine_records, validate_chunk

# Temp tables live in session-local buffers: sized so a whole file's staged rows stay in memory (it is only used
# as rows arrive). Must be set before the session's first temp table.
STAGING_TEMP_BUFFERS = "SET temp_buffers = '512MB'"

CREATE_EVENTS_STAGING = """
CREATE TEMP TABLE events_staging (
    user_id text, event_type text, event_timestamp timestamptz, value double precision, event_id text
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


@dataclass(frozen=True)
class StagingTable:
    """A staging table for one contract; with row numbers, rows keep their place in the file."""

    create: str
    copy: str
    with_row_numbers: bool


EVENTS_STAGING = StagingTable(CREATE_EVENTS_STAGING, COPY_EVENTS_STAGING, with_row_numbers=False)
USERS_STAGING = StagingTable(CREATE_USERS_STAGING, COPY_USERS_STAGING, with_row_numbers=True)


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


def stage_file(
    conn: psycopg.Connection,
    source: SourceFile,
    contract: Contract,
    table: StagingTable,
    *,
    chunk_rows: int,
    timezone: str | None,
    now: datetime | None,
    progress: Callable[[int], None] | None,
) -> StagedFile:
    """Create the staging tables and fill them from the file, in the connection's open transaction."""
    conn.execute(table.create)
    conn.execute(CREATE_QUARANTINE_STAGING)
    rows_read = rows_quarantined = 0
    with conn.cursor() as cursor, tempfile.SpooledTemporaryFile(max_size=QUARANTINE_SPOOL_BYTES) as spool:
        with cursor.copy(table.copy, writer=QueuedLibpqWriter(cursor)) as copy:
            copy.write(HEADER)
            for batch in iter_chunks(source, chunk_rows):
                chunk = validate_chunk(contract, batch, ChunkContext(source.name, rows_read + 1, timezone, now))
                good = chunk.good_values()
                columns = [good[name] for name in contract.names]
                if table.with_row_numbers:
                    columns.insert(0, pa.array(np.flatnonzero(chunk.good) + rows_read + 1, pa.int64()))
                copy.write(memoryview(encode_rows(columns)))
                if len(chunk.bad_rows):
                    records = quarantine_records(batch, chunk, rows_read + 1)
                    spool.write(memoryview(encode_rows([column.combine_chunks() for column in records.columns])))
                    rows_quarantined += len(chunk.bad_rows)
                rows_read += batch.num_rows
                if progress is not None:
                    progress(batch.num_rows)
            copy.write(TRAILER)
        if rows_quarantined:
            _copy_spool(cursor, spool)
    return StagedFile(rows_read, rows_quarantined)
