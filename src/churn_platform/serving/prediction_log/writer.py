"""The prediction log's writer: one background thread COPYs the buffer's batches into PostgreSQL.

The thread keeps one connection and COPYs each batch straight into the table, in a transaction whose id it asks for
first. If the connection breaks, the batch stays in flight; before writing it again on a new connection, the writer
asks PostgreSQL whether that transaction committed (`pg_xact_status`), so a batch whose commit went through but was
never acknowledged is not written twice, and one that was rolled back is written once. While PostgreSQL is
unreachable new rows wait in the buffer and the writer retries with exponential backoff. A batch refused for its
content is retried row by row: the rows the table refuses are counted in `rejected` and logged, the others are
written.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from churn_platform import db
from churn_platform.serving.prediction_log.buffer import PredictionLogBuffer
from churn_platform.serving.prediction_log.rows import COLUMNS, PredictionRecord, RouteFields, Shadow, first_line

log = logging.getLogger(__name__)

_COLUMN_LIST = ", ".join(COLUMNS)
COPY_SQL = f"COPY serving.prediction_log ({_COLUMN_LIST}) FROM STDIN"
XACT_ID_SQL = "SELECT pg_current_xact_id()::text, pg_backend_pid()"  # the transaction's id, assigned now
XACT_STATUS_SQL = "SELECT pg_xact_status(%(xid)s::xid8)"  # committed / aborted / in progress / NULL (forgotten)
CONNECT_TIMEOUT_S = 5
REJECTED_ROWS_LOGGED = 5  # per batch: a flood of bad rows must not flood the log too


@dataclass(frozen=True)
class _Outcome:
    inserted: int
    duplicates: int
    rejected: list[tuple[Any, BaseException]]


class PredictionLogWriter:
    """A bounded buffer of prediction-log rows (`buffer`) and the daemon thread that writes it to PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        max_buffer: int = 100_000,
        batch_rows: int = 2_000,
        flush_interval_s: float = 0.2,
        retry_max_s: float = 5.0,
    ) -> None:
        if max_buffer < 1 or batch_rows < 1 or flush_interval_s <= 0 or retry_max_s <= 0:
            raise ValueError("max_buffer and batch_rows must be positive, flush_interval_s and retry_max_s > 0")
        self.buffer = PredictionLogBuffer(max_rows=max_buffer, batch_rows=batch_rows, flush_interval_s=flush_interval_s)
        self._conninfo = _with_defaults(url)
        self._interval = flush_interval_s
        self._retry_max_s = retry_max_s
        self._retry_at = 0.0  # the writer thread's alone, as everything below
        # The in-flight batch's transaction, while it may have committed: its id, its backend, what it wrote.
        self._unconfirmed: str | None = None
        self._unconfirmed_pid = 0
        self._unconfirmed_outcome: _Outcome | None = None
        self._conn: psycopg.Connection | None = None
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the writer thread (once; rows submitted before are kept and written)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="churn-prediction-log", daemon=True)
                self._thread.start()

    def submit(self, record: PredictionRecord) -> None:
        """Queue one row (`PredictionLogBuffer.submit`)."""
        self.buffer.submit(record)

    def submit_many(self, records: Sequence[PredictionRecord]) -> None:
        """Queue rows (`PredictionLogBuffer.submit_many`)."""
        self.buffer.submit_many(records)

    def submit_rows(
        self, request_id: uuid.UUID, predicted_at: datetime, latency_ms: float, endpoint: str,
        user_ids: Sequence[str], routes: Sequence[RouteFields], probabilities: Sequence[float | None],
        hashes: Sequence[str], snapshots: Sequence[datetime | None], shadows: Sequence[Shadow | None] | None = None,
    ) -> None:  # fmt: skip
        """Queue one request's rows (`PredictionLogBuffer.submit_rows`)."""
        self.buffer.submit_rows(
            request_id, predicted_at, latency_ms, endpoint, user_ids, routes, probabilities, hashes, snapshots, shadows
        )

    def submit_lines(self, lines: Sequence[str]) -> None:
        """Queue rows already formatted as COPY text (`PredictionLogBuffer.submit_lines`)."""
        self.buffer.submit_lines(lines)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write now, and wait until no row submitted before this call is pending (written, rejected or dropped)."""
        return self.buffer.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Flush for at most `timeout_s`, then stop the thread; rows still pending are dropped (and logged)."""
        deadline = time.monotonic() + timeout_s
        flushed = self.buffer.flush(timeout_s) if self._thread is not None else False
        self.buffer.stop()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0.5))
            if self._thread.is_alive():
                log.warning("the prediction-log writer is still busy after close(); it is a daemon thread")
                return flushed
        lost = self.buffer.discard()
        if lost:
            maybe = " (the last batch's commit was not confirmed: it may be in the table)" if self._unconfirmed else ""
            log.error("prediction log closed with %d rows not written%s (%s)", lost, maybe, self.buffer.last_error())
        return flushed

    def stats(self) -> dict[str, Any]:
        """Counters for health checks: written (duplicates included: rows whose commit went through without being
        acknowledged, found written on the next connection), dropped, rejected, pending, last error."""
        return self.buffer.counts()

    def _run(self) -> None:
        try:
            while (batch := self.buffer.next_batch(self._retry_at)) is not None:
                self._write(batch)
                self.buffer.report_drops()
        finally:
            self._disconnect()

    def _write(self, lines: list[str]) -> None:
        try:
            conn = self._connection()
            outcome = self._confirmed(conn, lines) or self._write_batch(conn, lines)
        except Exception as exc:  # whatever broke, the rows stay: nothing submitted is lost to a bug or an outage
            self._disconnect()
            self._on_failure(exc)
        else:
            self._on_success(outcome)

    def _confirmed(self, conn: psycopg.Connection, lines: list[str]) -> _Outcome | None:
        """After a broken connection: the batch's outcome if its transaction committed after all, None if it must
        be written (rolled back, or nothing sent)."""
        if self._unconfirmed is None:
            return None
        xid = self._unconfirmed
        try:
            status = conn.execute(XACT_STATUS_SQL, {"xid": xid}).fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # ask again on the next connection
        except psycopg.Error as exc:  # e.g. an id "in the future": another cluster (restored, failed over)
            log.warning("prediction log: cannot tell whether transaction %s committed (%s)", xid, first_line(exc))
            status = None
        state = None if status is None else status[0]
        if state == "in progress":  # its backend has not noticed the broken connection: end it, then ask again
            conn.execute("SELECT pg_terminate_backend(%(pid)s)", {"pid": self._unconfirmed_pid})
            raise psycopg.OperationalError(f"transaction {xid} of the last batch was still in progress")
        if state is None:
            log.warning("prediction log: the outcome of transaction %s is unknown; writing its batch again", xid)
        outcome = self._unconfirmed_outcome or _Outcome(0, len(lines), [])
        self._unconfirmed, self._unconfirmed_outcome = None, None
        if state != "committed":
            return None
        return _Outcome(0, outcome.inserted + outcome.duplicates, outcome.rejected)

    def _write_batch(self, conn: psycopg.Connection, lines: list[str]) -> _Outcome:
        """One COPY into the table; row by row if the table refuses the batch."""
        try:
            with conn.transaction(), conn.cursor() as cur:
                self._begin(cur)
                with cur.copy(COPY_SQL) as copy:
                    copy.write("".join(lines))
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the connection, not the rows: retry the batch (`_unconfirmed` says whether it may be in)
        except Exception as exc:
            self._unconfirmed = None  # the server refused it: rolled back
            log.warning("prediction log: a batch of %d rows was refused (%s); row by row", len(lines), first_line(exc))
            return self._write_rows(conn, lines)
        self._unconfirmed = None
        return _Outcome(len(lines), 0, [])

    def _begin(self, cur: psycopg.Cursor[Any]) -> None:
        """Note the transaction's id before anything in it can commit: a broken connection leaves it to ask about."""
        row = cur.execute(XACT_ID_SQL).fetchone()
        self._unconfirmed, self._unconfirmed_pid = (None, 0) if row is None else row
        self._unconfirmed_outcome = None  # a whole batch

    def _write_rows(self, conn: psycopg.Connection, lines: list[str]) -> _Outcome:
        """Each row under its own savepoint in one transaction: the rows the table refuses are set aside."""
        inserted = 0
        rejected: list[tuple[Any, BaseException]] = []
        with conn.transaction(), conn.cursor() as cur:
            self._begin(cur)
            for line in lines:
                try:
                    with conn.transaction(), cur.copy(COPY_SQL) as copy:
                        copy.write(line)
                except Exception as exc:
                    if not _is_content_error(exc):
                        raise
                    rejected.append((line, exc))
                else:
                    inserted += 1
            self._unconfirmed_outcome = _Outcome(inserted, 0, rejected)  # what the commit writes, if it goes through
        self._unconfirmed = None
        return _Outcome(inserted, 0, rejected)

    def _on_success(self, outcome: _Outcome) -> None:
        self._retry_at = 0.0
        self.buffer.batch_written(outcome.inserted, outcome.duplicates, len(outcome.rejected))
        if outcome.duplicates:
            log.info(
                "prediction log: %d rows were written before the connection broke (not written again)",
                outcome.duplicates,
            )
        for record, exc in outcome.rejected[:REJECTED_ROWS_LOGGED]:
            log.error("prediction log: row rejected (%r): %s", record, first_line(exc))
        if len(outcome.rejected) > REJECTED_ROWS_LOGGED:
            log.error("prediction log: %d more rows rejected", len(outcome.rejected) - REJECTED_ROWS_LOGGED)

    def _on_failure(self, exc: Exception) -> None:
        """Keep the batch in flight and back off exponentially (from the flush interval up to `retry_max_s`)."""
        message = f"{type(exc).__name__}: {first_line(exc)}"
        failures, pending = self.buffer.batch_failed(message, maybe_written=self._unconfirmed is not None)
        delay = min(self._retry_max_s, self._interval * 2 ** min(failures - 1, 30))
        self._retry_at = time.monotonic() + delay
        log.warning("prediction log: write failed (%s); %d rows wait, retry in %.2fs", message, pending, delay)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self._conninfo, autocommit=True)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _is_content_error(exc: BaseException) -> bool:
    """A row's own fault: a value the table refuses, or one psycopg cannot send (raised before reaching the server)."""
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return True
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate is None
    return isinstance(exc, TypeError | ValueError | AttributeError)


def _with_defaults(url: str) -> str:
    """The URL with a connect timeout (a dead host must not hang the writer) and a name in pg_stat_activity."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    defaults: dict[str, str | int] = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "churn-prediction-log"}
    extra = {key: value for key, value in defaults.items() if key not in params}
    return psycopg.conninfo.make_conninfo(url, **extra) if extra else url
