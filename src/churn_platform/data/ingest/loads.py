"""Load a user's own events or users file (CSV or Parquet) into `raw.*`, in one transaction per file.

A load streams the file in chunks (`staging`): each chunk is validated with Arrow kernels (`validation`), its
good rows are keyed (`event_key`) and COPYed in binary format, its bad rows go to a TEMP quarantine table.
Events are COPYed straight into `raw.events` with its indexes rebuilt once when the file is large next to the
table, else into a TEMP staging table and inserted from there (`event_loads`); users are upserted from staging,
and the attributes a users file changes get a new version in `raw.user_attributes`.
Then the quarantined rows go to `raw.quarantine`, the `raw.loads` row is completed, and the transaction commits
once. Anything that goes wrong before the commit (a contract error, a crash, Ctrl-C, a killed process) leaves
every table as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
import zoneinfo
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from churn_platform import db
from churn_platform.data.ingest import event_loads, staging
from churn_platform.data.ingest.contract import EVENTS, USERS, Contract, ContractError
from churn_platform.data.ingest.event_loads import LoadedRows
from churn_platform.data.ingest.sources import SourceFile, estimate_rows, file_sha256, open_source

__all__ = [
    "ContractError",
    "LoadSummary",
    "estimate_rows",
    "ingest_events",
    "ingest_users",
]

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
# Loads the rows of a file into its raw table under a load id, in the open transaction.
LoadRows = Callable[[psycopg.Connection, staging.FileReading, int], LoadedRows]

# started_at is the clock when the row is written (not the transaction's start): a users load takes its lock
# first, so the versions of user attributes it adds are valid from a time after every earlier users load's.
INSERT_LOAD = """
INSERT INTO raw.loads (kind, source, started_at) VALUES (%(kind)s, %(source)s, clock_timestamp())
RETURNING load_id"""
# Users loads one at a time: each compares the file with the versions the previous one left.
USERS_LOAD_LOCK = "SELECT pg_advisory_xact_lock(hashtext('churn_platform.users_load'))"
# The file's sha256 is computed while it loads, so it is written with the counts.
FINISH_LOAD = """
UPDATE raw.loads
SET finished_at = clock_timestamp(), source_sha256 = %(sha256)s, rows_read = %(rows_read)s,
    rows_loaded = %(rows_loaded)s, rows_duplicate = %(rows_duplicate)s, rows_quarantined = %(rows_quarantined)s,
    rows_repeated = %(rows_repeated)s, users_added = %(users_added)s
WHERE load_id = %(load_id)s"""

INSERT_QUARANTINE = """
INSERT INTO raw.quarantine (source_sha256, row_number, kind, source, column_name, reason, raw_record, load_id)
SELECT %(sha256)s, row_number, %(kind)s, %(source)s, column_name, reason, raw_record::jsonb, %(load_id)s
FROM pg_temp.quarantine_staging
ON CONFLICT (source_sha256, row_number) DO NOTHING"""

# Users: the last row of a user in the file wins; the file's optional columns overwrite the stored ones (an empty
# value clears one), columns the file lacks are kept; a row equal to the stored one is left alone.
UPSERT_USERS = """
INSERT INTO raw.users AS u (user_id, {columns}, load_id)
SELECT DISTINCT ON (user_id) user_id, {columns}, %(load_id)s
FROM pg_temp.users_staging
ORDER BY user_id, row_number DESC
ON CONFLICT (user_id) DO UPDATE SET {assignments}, load_id = EXCLUDED.load_id
WHERE ({current}) IS DISTINCT FROM ({incoming})"""
INSERT_NEW_USERS = """
INSERT INTO raw.users (user_id, load_id)
SELECT DISTINCT user_id, %(load_id)s FROM pg_temp.users_staging
ON CONFLICT (user_id) DO NOTHING"""
# The versions a users load adds, once raw.users holds its rows (a row this load inserted or changed carries its
# load_id): a user whose attributes differ from their latest version (none: all NULL) gets a version valid from
# the load's start, or for a first version, from signup when that was earlier (what they had when they signed up).
ADD_ATTRIBUTE_VERSIONS = """
WITH touched AS (
    SELECT user_id, signup_at, plan, plan_price, channel, region FROM raw.users WHERE load_id = %(load_id)s
),
latest AS (
    SELECT DISTINCT ON (a.user_id) a.user_id, a.plan, a.plan_price, a.channel, a.region
    FROM raw.user_attributes a
    JOIN touched USING (user_id)
    ORDER BY a.user_id, a.valid_from DESC
)
INSERT INTO raw.user_attributes (user_id, valid_from, plan, plan_price, channel, region, load_id)
SELECT t.user_id, CASE WHEN v.user_id IS NULL THEN least(t.signup_at, l.started_at) ELSE l.started_at END,
       t.plan, t.plan_price, t.channel, t.region, l.load_id
FROM touched t
JOIN raw.loads l ON l.load_id = %(load_id)s
LEFT JOIN latest v USING (user_id)
WHERE (t.plan, t.plan_price, t.channel, t.region) IS DISTINCT FROM (v.plan, v.plan_price, v.channel, v.region)"""


@dataclass(frozen=True)
class LoadSummary:
    """What one load did: every row read is loaded, a duplicate of a stored row, or quarantined.

    Events loads also count the rows that repeat an identical earlier row of the file (kept as events of their
    own, so counted as loaded, or as duplicates when the file was loaded before), and the users of the file that
    `raw.users` did not know yet (added without attributes).
    """

    load_id: int
    kind: str
    source: str
    rows_read: int
    rows_loaded: int
    rows_duplicate: int
    rows_quarantined: int
    seconds: float
    method: str  # events: "bulk", "incremental" or "incremental after bulk"; users: "upsert"
    rows_repeated: int = 0
    users_added: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def to_markdown(self) -> str:
        """A small markdown table of the load, for a Prefect artifact or a report."""
        return "\n".join(
            [
                f"### {self.kind} load {self.load_id} ({self.method})",
                f"`{self.source}`",
                "",
                "| rows read | loaded | duplicates | quarantined | in-file repeats | new users | seconds | rows/s |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {self.rows_read:,} | {self.rows_loaded:,} | {self.rows_duplicate:,} | {self.rows_quarantined:,}"
                f" | {self.rows_repeated:,} | {self.users_added:,}"
                f" | {self.seconds:.2f} | {self.rows_per_second:,.0f} |",
            ]
        )


def _check_timezone(timezone: str | None) -> None:
    if timezone is None:
        return
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}: give an IANA name such as Europe/Paris") from None


@contextlib.contextmanager
def _load_transaction(url: str) -> Iterator[psycopg.Connection]:
    """One connection, one transaction: committed when the block ends, rolled back on any exception."""
    with db.connect(url) as conn:
        conn.execute(staging.STAGING_TEMP_BUFFERS)
        yield conn


def _insert_load(conn: psycopg.Connection, kind: str, source: SourceFile) -> int:
    if kind == USERS.kind:
        conn.execute(USERS_LOAD_LOCK)
    row = conn.execute(INSERT_LOAD, {"kind": kind, "source": source.name}).fetchone()
    assert row is not None
    return int(row[0])


def _finish(
    conn: psycopg.Connection,
    load_id: int,
    kind: str,
    source: SourceFile,
    sha256: str,
    loaded: LoadedRows,
    started: float,
) -> LoadSummary:
    """Quarantine the bad rows and complete the `raw.loads` row; return the summary (the caller commits)."""
    staged = loaded.staged
    conn.execute(INSERT_QUARANTINE, {"sha256": sha256, "kind": kind, "source": source.name, "load_id": load_id})
    duplicates = staged.rows_read - staged.rows_quarantined - loaded.rows_loaded
    conn.execute(
        FINISH_LOAD,
        {
            "load_id": load_id,
            "sha256": sha256,
            "rows_read": staged.rows_read,
            "rows_loaded": loaded.rows_loaded,
            "rows_duplicate": duplicates,
            "rows_quarantined": staged.rows_quarantined,
            "rows_repeated": loaded.rows_repeated,
            "users_added": loaded.users_added,
        },
    )
    return LoadSummary(
        load_id=load_id,
        kind=kind,
        source=source.name,
        rows_read=staged.rows_read,
        rows_loaded=loaded.rows_loaded,
        rows_duplicate=duplicates,
        rows_quarantined=staged.rows_quarantined,
        seconds=time.perf_counter() - started,
        method=loaded.method,
        rows_repeated=loaded.rows_repeated,
        users_added=loaded.users_added,
    )


def _load_file(
    url: str,
    path: Path,
    contract: Contract,
    load_rows: LoadRows,
    *,
    timezone: str | None,
    chunk_rows: int,
    now: datetime | None,
    progress: Progress | None,
) -> LoadSummary:
    """Load one file in one transaction: register the load, `load_rows`, quarantine the bad rows, complete the load.

    The file's sha256 is computed on another thread while it loads; the summary is timed up to after the commit.
    """
    started = time.perf_counter()
    _check_timezone(timezone)
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    source = open_source(path, contract, timezone=timezone)
    reading = staging.FileReading(source, contract, chunk_rows, timezone, now, progress)
    with ThreadPoolExecutor(max_workers=1) as pool, _load_transaction(url) as conn:
        sha256 = pool.submit(file_sha256, source.path)
        load_id = _insert_load(conn, contract.kind, source)
        loaded = load_rows(conn, reading, load_id)
        summary = _finish(conn, load_id, contract.kind, source, sha256.result(), loaded, started)
    summary = dataclasses.replace(summary, seconds=time.perf_counter() - started)
    log.info("%s load %d of %s: %s", contract.kind, summary.load_id, summary.source, summary)
    return summary


def ingest_events(
    url: str,
    path: Path,
    *,
    timezone: str | None = None,
    chunk_rows: int = 250_000,
    now: datetime | None = None,
    progress: Progress | None = None,
    allow_bulk: bool = True,
) -> LoadSummary:
    """Load an events file into `raw.events`, quarantining bad rows; all or nothing, and idempotent.

    Identical rows of the file are distinct events (numbered by occurrence, see `event_key`); the file's users
    that `raw.users` lacks get a row there without attributes, in the same transaction.

    Args:
        url: the platform database.
        path: a .csv or .parquet file with the columns of `contract.EVENTS`.
        timezone: IANA zone of timestamps without a UTC offset; None rejects the file if it has any.
        chunk_rows: rows read, validated and copied at a time (memory is bounded by this, not the file).
        now: events after this time are quarantined as "in the future"; default: the current time.
        progress: called with the number of rows just processed, after each chunk (each row once).
        allow_bulk: load a file at least as large as the table in bulk (`event_loads`), which is faster but
            locks `raw.events` against readers until the commit; the stored result is the same either way.

    Raises:
        ContractError: the file's shape breaks the contract; nothing was written.
    """
    load_rows = functools.partial(event_loads.load_events, allow_bulk=allow_bulk)
    now = now or datetime.now(UTC)
    return _load_file(
        url, path, EVENTS, load_rows, timezone=timezone, chunk_rows=chunk_rows, now=now, progress=progress
    )


def _upsert_users(conn: psycopg.Connection, source: SourceFile, load_id: int) -> int:
    """Insert new users and update changed ones from staging; return how many rows were inserted or changed."""
    present = [name for name in USERS.names if name != "user_id" and name in source.columns]
    if not present:
        return conn.execute(INSERT_NEW_USERS, {"load_id": load_id}).rowcount
    columns = [sql.Identifier(name) for name in present]
    statement = sql.SQL(UPSERT_USERS).format(
        columns=sql.SQL(", ").join(columns),
        assignments=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=c) for c in columns),
        current=sql.SQL(", ").join(sql.SQL("u.{c}").format(c=c) for c in columns),
        incoming=sql.SQL(", ").join(sql.SQL("EXCLUDED.{c}").format(c=c) for c in columns),
    )
    return conn.execute(statement, {"load_id": load_id}).rowcount


def ingest_users(
    url: str,
    path: Path,
    *,
    timezone: str | None = None,
    chunk_rows: int = 250_000,
    progress: Progress | None = None,
) -> LoadSummary:
    """Upsert a users file into `raw.users` on user_id, quarantining bad rows; all or nothing.

    A re-load of the same file changes nothing (its rows count as duplicates); a newer file updates the
    attributes it has, and a user whose attributes it changes gets a version of them in `raw.user_attributes`
    valid from this load (snapshots read the version valid at their time). Arguments and errors are those of
    `ingest_events`.
    """
    return _load_file(
        url, path, USERS, _load_users, timezone=timezone, chunk_rows=chunk_rows, now=None, progress=progress
    )


def _load_users(conn: psycopg.Connection, reading: staging.FileReading, load_id: int) -> LoadedRows:
    """Stage the users file, upsert it, then add the versions of the attributes it changed."""
    staged = staging.stage_file(conn, reading, staging.USERS_STAGING)
    upserted = _upsert_users(conn, reading.source, load_id)
    conn.execute(ADD_ATTRIBUTE_VERSIONS, {"load_id": load_id})
    return LoadedRows(staged, upserted, "upsert")
