"""The prediction log: requests hand rows to a bounded in-memory buffer; one background thread COPYs them in batches.

The request path never waits on PostgreSQL: rows arrive as lines of COPY text (formatted in bulk, a request's
shared fields once) and are appended to a deque under a lock nobody holds across I/O. The writer thread keeps one
connection and COPYs each batch straight into the table, in a transaction whose id it asks for first. If the
connection breaks, the batch stays in flight; before writing it again on a new connection, the writer asks
PostgreSQL whether that transaction committed (`pg_xact_status`), so a batch whose commit went through but was
never acknowledged is not written twice, and one that was rolled back is written once. While PostgreSQL is
unreachable new rows wait in the buffer (the oldest dropped beyond `max_buffer`, and counted) and the writer retries
with exponential backoff. A batch refused for its content is retried row by row: the rows the table refuses are
counted in `rejected` and logged, the others are written.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from churn_platform import db

log = logging.getLogger(__name__)

COLUMNS = (
    "request_id", "predicted_at", "user_id", "experiment", "arm", "model_alias", "model_version",
    "churn_probability", "feature_hash", "latency_ms", "endpoint",
)  # fmt: skip
_COLUMN_LIST = ", ".join(COLUMNS)
COPY_SQL = f"COPY serving.prediction_log ({_COLUMN_LIST}) FROM STDIN"
XACT_ID_SQL = "SELECT pg_current_xact_id()::text, pg_backend_pid()"  # the transaction's id, assigned now
XACT_STATUS_SQL = "SELECT pg_xact_status(%(xid)s::xid8)"  # committed / aborted / in progress / NULL (forgotten)
CONNECT_TIMEOUT_S = 5
REJECTED_ROWS_LOGGED = 5  # per batch: a flood of bad rows must not flood the log too
NULL = "\\N"  # COPY text's NULL
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_ESCAPED = re.compile(r"[\\\t\n\r]")


def new_request_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): unix milliseconds first, then 74 random bits, so request ids ascend in time and a
    BRIN index on them finds a request's rows."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant 10
    return uuid.UUID(int=value)


def copy_text(value: str | None) -> str:
    """A text value as a COPY text field (NULL for None); refuses anything else, as the table would."""
    if value is None:
        return NULL
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}: {value!r}")
    return value.translate(_ESCAPES)


RouteFields = tuple[str | None, str, str | None, str]  # experiment, arm, model alias, model version


def copy_lines(
    request_id: uuid.UUID, predicted_at: datetime, latency_ms: float, endpoint: str, user_ids: Sequence[str],
    routes: Sequence[RouteFields], probabilities: Sequence[float | None], hashes: Sequence[str],
) -> list[str]:  # fmt: skip
    """COPY text lines of one request's rows, given as columns (a probability of None: no score; a hash in hex);
    raises TypeError for a value the table could not hold.

    The request's shared fields are formatted once, and each distinct route once (rows routed alike share one
    tuple); user ids are escaped only if one of them needs it.
    """
    head = f"{request_id}\t{predicted_at.isoformat()}\t"
    tail = f"\t{_number(latency_ms)}\t{copy_text(endpoint)}\n"
    distinct = {id(route): route for route in routes}
    texts = {key: "\t" + "\t".join(map(copy_text, route)) + "\t" for key, route in distinct.items()}
    if len(texts) == 1:
        middles: Iterable[str] = itertools.repeat(next(iter(texts.values())), len(routes))
    else:
        middles = [texts[id(route)] for route in routes]
    if _ESCAPED.search("".join(user_ids)):
        user_ids = [copy_text(user_id) for user_id in user_ids]
    scores = map(repr, probabilities) if None not in probabilities else [_score(p) for p in probabilities]
    columns = zip(user_ids, middles, scores, hashes, strict=True)
    return [f"{head}{user_id}{middle}{score}\t{hashed}{tail}" for user_id, middle, score, hashed in columns]


def _score(probability: float | None) -> str:
    return NULL if probability is None else repr(probability)


def _number(value: float) -> str:
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise TypeError(f"expected a number, got {type(value).__name__}: {value!r}")
    return repr(float(value))


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One row of `serving.prediction_log`: one user's prediction within one request."""

    request_id: uuid.UUID
    predicted_at: datetime
    user_id: str
    experiment: str | None
    arm: str  # control / variant / fallback inside an experiment, champion outside one
    model_alias: str | None
    model_version: str
    churn_probability: float | None  # None when the user had no features to score
    feature_hash: str
    latency_ms: float
    endpoint: str  # predict / predict_batch

    def as_row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, column) for column in COLUMNS)

    def copy_line(self) -> str:
        """This row as a line of COPY text; a value of the wrong type raises TypeError."""
        if not isinstance(self.request_id, uuid.UUID) or not isinstance(self.predicted_at, datetime):
            raise TypeError(f"request_id must be a UUID and predicted_at a datetime: {self!r}")
        route = (self.experiment, self.arm, self.model_alias, self.model_version)
        p = None if self.churn_probability is None else float(_number(self.churn_probability))
        if not isinstance(self.user_id, str):
            raise TypeError(f"user_id must be text: {self!r}")
        hashed = copy_text(self.feature_hash)  # copy_lines escapes user ids
        return copy_lines(
            self.request_id, self.predicted_at, self.latency_ms, self.endpoint, [self.user_id], [route], [p], [hashed]
        )[0]


@dataclass(frozen=True)
class _Outcome:
    inserted: int
    duplicates: int
    rejected: list[tuple[Any, BaseException]]


class PredictionLogWriter:
    """A bounded buffer of prediction-log rows and the daemon thread that writes it to PostgreSQL."""

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
        self._conninfo = _with_defaults(url)
        self._max_buffer = max_buffer
        self._batch_rows = min(batch_rows, max_buffer)
        self._interval = flush_interval_s
        self._retry_max_s = retry_max_s
        self._cond = threading.Condition()
        # Guarded by _cond. Each row carries its submission number, so flush() knows when its rows are out.
        self._buffer: deque[tuple[int, str]] = deque()  # (submission number, COPY text line)
        self._in_flight: list[tuple[int, str]] = []
        self._doomed = 0  # oldest in-flight rows past the bound: dropped if their write surely failed, else kept
        self._next_seq = 0
        self._flush_waiters = 0
        self._written = self._duplicates = self._dropped = self._rejected = 0
        self._dropped_reported = 0
        # The in-flight batch's transaction, while it may have committed: its id, its backend, what it wrote.
        self._unconfirmed: str | None = None
        self._unconfirmed_pid = 0
        self._unconfirmed_outcome: _Outcome | None = None
        self._failures = 0
        self._retry_at = self._next_tick = 0.0
        self._last_error: str | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None  # the writer thread's alone

    def start(self) -> None:
        """Start the writer thread (once; rows submitted before are kept and written)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="churn-prediction-log", daemon=True)
                self._thread.start()

    def submit(self, record: PredictionRecord) -> None:
        """Queue one row: no I/O, no exception. Beyond `max_buffer` rows the oldest are dropped and counted."""
        self.submit_many((record,))

    def submit_many(self, records: Sequence[PredictionRecord]) -> None:
        """Queue rows; a row that cannot be written at all (a value of the wrong type) is counted as rejected."""
        lines = []
        refused = 0
        for record in records:
            try:
                lines.append(record.copy_line())
            except (TypeError, ValueError, AttributeError) as exc:
                refused += 1
                log.error("prediction log: row rejected (%r): %s", record, _first_line(exc))
        if refused:
            with self._cond:
                self._rejected += refused
        self.submit_lines(lines)

    def submit_rows(
        self, request_id: uuid.UUID, predicted_at: datetime, latency_ms: float, endpoint: str,
        user_ids: Sequence[str], routes: Sequence[RouteFields], probabilities: Sequence[float | None],
        hashes: Sequence[str],
    ) -> None:  # fmt: skip
        """Queue one request's rows (as `copy_lines` takes them); if they cannot be formatted they count as rejected."""
        try:
            lines = copy_lines(request_id, predicted_at, latency_ms, endpoint, user_ids, routes, probabilities, hashes)
        except (TypeError, ValueError, AttributeError) as exc:
            with self._cond:
                self._rejected += len(user_ids)
            log.error("prediction log: %d rows of request %s rejected: %s", len(user_ids), request_id, _first_line(exc))
            return
        self.submit_lines(lines)

    def submit_lines(self, lines: Sequence[str]) -> None:
        """Queue rows already formatted as COPY text (`copy_lines`): one lock acquisition, no per-row work.

        Beyond `max_buffer` rows the oldest are dropped and counted: first the rows being written (dropped only once
        that write has surely failed), then the oldest waiting, then, for a request larger than the whole buffer,
        its first rows.
        """
        with self._cond:
            count = len(lines)
            if self._stopping:
                self._dropped += count
                return
            overflow = len(self._buffer) + len(self._in_flight) - self._doomed + count - self._max_buffer
            if overflow > 0:
                doom = min(overflow, len(self._in_flight) - self._doomed)
                self._doomed += doom
                overflow -= doom
                old = min(overflow, len(self._buffer))
                for _ in range(old):
                    self._buffer.popleft()
                self._dropped += old
                overflow -= old
            first = self._next_seq
            self._next_seq += count
            skip = max(overflow, 0)  # the buffer cannot hold this many: the request's own first rows go
            self._dropped += skip
            waiting = len(self._buffer)
            self._buffer.extend(zip(range(first + skip, first + count), lines[skip:], strict=True))
            if waiting < self._batch_rows <= len(self._buffer):  # a full batch waits: wake the writer once
                self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write now, and wait until no row submitted before this call is pending (written, rejected or dropped)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._next_seq
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                while self._oldest_pending() < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flush_waiters -= 1

    def close(self, timeout_s: float = 10.0) -> bool:
        """Flush for at most `timeout_s`, then stop the thread; rows still pending are dropped (and logged)."""
        deadline = time.monotonic() + timeout_s
        flushed = self.flush(timeout_s) if self._thread is not None else False
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0.5))
            if self._thread.is_alive():
                log.warning("the prediction-log writer is still busy after close(); it is a daemon thread")
                return flushed
        with self._cond:
            lost = len(self._buffer) + len(self._in_flight)
            self._dropped += lost
            self._buffer.clear()
            self._in_flight = []
        if lost:
            maybe = " (the last batch's commit was not confirmed: it may be in the table)" if self._unconfirmed else ""
            log.error("prediction log closed with %d rows not written%s (%s)", lost, maybe, self._last_error)
        return flushed

    def stats(self) -> dict[str, Any]:
        """Counters for health checks: written (duplicates included: rows whose commit went through without being
        acknowledged, found written on the next connection), dropped, rejected, pending, last error."""
        with self._cond:
            return {
                "written": self._written, "duplicates": self._duplicates, "dropped": self._dropped,
                "rejected": self._rejected, "pending": len(self._buffer) + len(self._in_flight),
                "last_error": self._last_error, "consecutive_failures": self._failures,
            }  # fmt: skip

    def _oldest_pending(self) -> int:
        if self._in_flight:
            return self._in_flight[0][0]
        return self._buffer[0][0] if self._buffer else self._next_seq

    def _run(self) -> None:
        try:
            while (batch := self._take_batch()) is not None:
                self._write(batch)
                self._report_drops()
        finally:
            self._disconnect()

    def _take_batch(self) -> list[str] | None:
        """The batch to write: the one in flight again after a failure (once the backoff ends), else the next rows
        once a batch is full, the interval ticks or someone flushes; None when stopping."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._in_flight:  # a failed batch: retried as it was, since it may have been written
                    if now >= self._retry_at:
                        return [line for _, line in self._in_flight]
                    self._cond.wait(max(self._retry_at - now, 0.001))
                    continue
                due = len(self._buffer) >= self._batch_rows or now >= self._next_tick or self._flush_waiters > 0
                if self._buffer and due and now >= self._retry_at:
                    size = min(self._batch_rows, len(self._buffer))
                    self._in_flight = [self._buffer.popleft() for _ in range(size)]
                    if size < self._batch_rows:
                        self._next_tick = now + self._interval
                    return [line for _, line in self._in_flight]
                if not self._buffer:
                    wake_at = now + self._interval
                else:
                    wake_at = self._retry_at if now < self._retry_at else self._next_tick
                self._cond.wait(max(wake_at - now, 0.001))
            return None

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
            log.warning("prediction log: cannot tell whether transaction %s committed (%s)", xid, _first_line(exc))
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
            log.warning("prediction log: a batch of %d rows was refused (%s); row by row", len(lines), _first_line(exc))
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
        with self._cond:
            self._written += outcome.inserted + outcome.duplicates
            self._duplicates += outcome.duplicates
            self._rejected += len(outcome.rejected)
            self._in_flight, self._doomed = [], 0
            self._failures, self._retry_at = 0, 0.0
            self._cond.notify_all()
        if outcome.duplicates:
            log.info(
                "prediction log: %d rows were written before the connection broke (not written again)",
                outcome.duplicates,
            )
        for record, exc in outcome.rejected[:REJECTED_ROWS_LOGGED]:
            log.error("prediction log: row rejected (%r): %s", record, _first_line(exc))
        if len(outcome.rejected) > REJECTED_ROWS_LOGGED:
            log.error("prediction log: %d more rows rejected", len(outcome.rejected) - REJECTED_ROWS_LOGGED)

    def _on_failure(self, exc: Exception) -> None:
        """Keep the batch in flight and back off; its rows past the bound are dropped unless it may be written."""
        message = f"{type(exc).__name__}: {_first_line(exc)}"
        with self._cond:
            if self._unconfirmed is None and self._doomed:  # certainly not written: the overflow goes now
                del self._in_flight[: self._doomed]
                self._dropped += self._doomed
                self._doomed = 0
            self._failures += 1
            delay = min(self._retry_max_s, self._interval * 2 ** min(self._failures - 1, 30))
            self._retry_at = time.monotonic() + delay
            self._last_error = message
            pending = len(self._buffer) + len(self._in_flight)
            self._cond.notify_all()
        log.warning("prediction log: write failed (%s); %d rows wait, retry in %.2fs", message, pending, delay)

    def _report_drops(self) -> None:
        with self._cond:
            new, self._dropped_reported = self._dropped - self._dropped_reported, self._dropped
        if new:
            log.warning("prediction log: buffer full (%d rows), dropped the %d oldest rows", self._max_buffer, new)

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


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _with_defaults(url: str) -> str:
    """The URL with a connect timeout (a dead host must not hang the writer) and a name in pg_stat_activity."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    defaults: dict[str, str | int] = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "churn-prediction-log"}
    extra = {key: value for key, value in defaults.items() if key not in params}
    return psycopg.conninfo.make_conninfo(url, **extra) if extra else url
