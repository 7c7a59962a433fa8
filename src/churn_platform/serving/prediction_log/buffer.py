"""The prediction log's bounded in-memory buffer: rows wait here, as lines of COPY text, for the writer thread.

Requests append under a lock nobody holds across I/O: no I/O and no exception on the request path. Beyond
`max_rows` the oldest rows are dropped and counted. Each row carries its submission number, so `flush` knows when
the rows submitted before it are out (written, rejected or dropped). The buffer also keeps what became of the rows
(the counters of `stats`), so one lock gives a consistent picture of them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from churn_platform.serving.prediction_log.rows import PredictionRecord, RouteFields, Shadow, copy_lines, first_line

log = logging.getLogger(__name__)


class PredictionLogBuffer:
    """Rows waiting to be written, the batch being written, and the counts of what became of them."""

    def __init__(self, *, max_rows: int, batch_rows: int, flush_interval_s: float) -> None:
        self.max_rows = max_rows
        self.batch_rows = min(batch_rows, max_rows)
        self.flush_interval_s = flush_interval_s
        self._cond = threading.Condition()
        # Guarded by _cond. Each row carries its submission number, so flush() knows when its rows are out.
        self._waiting: deque[tuple[int, str]] = deque()  # (submission number, COPY text line)
        self._in_flight: list[tuple[int, str]] = []
        self._doomed = 0  # oldest in-flight rows past the bound: dropped if their write surely failed, else kept
        self._next_seq = 0
        self._flush_waiters = 0
        self._next_tick = 0.0
        self._written = self._duplicates = self._dropped = self._rejected = 0
        self._dropped_reported = 0
        self._failures = 0
        self._last_error: str | None = None
        self._stopping = False

    # --- the request side ------------------------------------------------------------------------------------------

    def submit(self, record: PredictionRecord) -> None:
        """Queue one row: no I/O, no exception. Beyond `max_rows` rows the oldest are dropped and counted."""
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
                log.error("prediction log: row rejected (%r): %s", record, first_line(exc))
        if refused:
            with self._cond:
                self._rejected += refused
        self.submit_lines(lines)

    def submit_rows(
        self, request_id: uuid.UUID, predicted_at: datetime, latency_ms: float, endpoint: str,
        user_ids: Sequence[str], routes: Sequence[RouteFields], probabilities: Sequence[float | None],
        hashes: Sequence[str], snapshots: Sequence[datetime | None], shadows: Sequence[Shadow | None] | None = None,
    ) -> None:  # fmt: skip
        """Queue one request's rows (as `copy_lines` takes them); if they cannot be formatted they count as rejected."""
        try:
            lines = copy_lines(
                request_id, predicted_at, latency_ms, endpoint, user_ids, routes, probabilities, hashes, snapshots,
                shadows,
            )  # fmt: skip
        except (TypeError, ValueError, AttributeError) as exc:
            with self._cond:
                self._rejected += len(user_ids)
            log.error("prediction log: %d rows of request %s rejected: %s", len(user_ids), request_id, first_line(exc))
            return
        self.submit_lines(lines)

    def submit_lines(self, lines: Sequence[str]) -> None:
        """Queue rows already formatted as COPY text (`copy_lines`): one lock acquisition, no per-row work.

        Beyond `max_rows` rows the oldest are dropped and counted: first the rows being written (dropped only once
        that write has surely failed), then the oldest waiting, then, for a request larger than the whole buffer,
        its first rows.
        """
        with self._cond:
            count = len(lines)
            if self._stopping:
                self._dropped += count
                return
            overflow = len(self._waiting) + len(self._in_flight) - self._doomed + count - self.max_rows
            if overflow > 0:
                doom = min(overflow, len(self._in_flight) - self._doomed)
                self._doomed += doom
                overflow -= doom
                old = min(overflow, len(self._waiting))
                for _ in range(old):
                    self._waiting.popleft()
                self._dropped += old
                overflow -= old
            first = self._next_seq
            self._next_seq += count
            skip = max(overflow, 0)  # the buffer cannot hold this many: the request's own first rows go
            self._dropped += skip
            waiting = len(self._waiting)
            self._waiting.extend(zip(range(first + skip, first + count), lines[skip:], strict=True))
            if waiting < self.batch_rows <= len(self._waiting):  # a full batch waits: wake the writer once
                self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Ask for a write now, and wait until no row submitted before this call is pending (written, rejected or
        dropped)."""
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

    def stop(self) -> None:
        """Refuse (and count as dropped) every row submitted from now on; `next_batch` answers None."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def discard(self) -> int:
        """Drop every row still pending (counted); return how many."""
        with self._cond:
            lost = len(self._waiting) + len(self._in_flight)
            self._dropped += lost
            self._waiting.clear()
            self._in_flight = []
        return lost

    def counts(self) -> dict[str, Any]:
        """Rows written (duplicates included), duplicates, dropped, rejected and pending; the last write's error
        and how many writes in a row failed."""
        with self._cond:
            return {
                "written": self._written, "duplicates": self._duplicates, "dropped": self._dropped,
                "rejected": self._rejected, "pending": len(self._waiting) + len(self._in_flight),
                "last_error": self._last_error, "consecutive_failures": self._failures,
            }  # fmt: skip

    def _oldest_pending(self) -> int:
        if self._in_flight:
            return self._in_flight[0][0]
        return self._waiting[0][0] if self._waiting else self._next_seq

    # --- the writer side -------------------------------------------------------------------------------------------

    def next_batch(self, not_before: float) -> list[str] | None:
        """The batch to write (waiting for it): the one in flight again after a failure, else the next rows once a
        batch is full, the flush interval ticks or someone flushes; nothing before the monotonic time `not_before`
        (the writer's back-off). None once stopping."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._in_flight:  # a failed batch: retried as it was, since it may have been written
                    if now >= not_before:
                        return [line for _, line in self._in_flight]
                    self._cond.wait(max(not_before - now, 0.001))
                    continue
                due = len(self._waiting) >= self.batch_rows or now >= self._next_tick or self._flush_waiters > 0
                if self._waiting and due and now >= not_before:
                    size = min(self.batch_rows, len(self._waiting))
                    self._in_flight = [self._waiting.popleft() for _ in range(size)]
                    if size < self.batch_rows:
                        self._next_tick = now + self.flush_interval_s
                    return [line for _, line in self._in_flight]
                if not self._waiting:
                    wake_at = now + self.flush_interval_s
                else:
                    wake_at = not_before if now < not_before else self._next_tick
                self._cond.wait(max(wake_at - now, 0.001))
            return None

    def batch_written(self, inserted: int, duplicates: int, rejected: int) -> None:
        """The batch in flight is out: `inserted` rows written now, `duplicates` found written by a commit that
        was never acknowledged, `rejected` refused by the table."""
        with self._cond:
            self._written += inserted + duplicates
            self._duplicates += duplicates
            self._rejected += rejected
            self._in_flight, self._doomed = [], 0
            self._failures = 0
            self._cond.notify_all()

    def batch_failed(self, error: str, *, maybe_written: bool) -> tuple[int, int]:
        """The batch in flight stays for a retry; its rows past the bound are dropped unless it may be written.
        Returns how many writes in a row failed and how many rows are pending."""
        with self._cond:
            if not maybe_written and self._doomed:  # certainly not written: the overflow goes now
                del self._in_flight[: self._doomed]
                self._dropped += self._doomed
                self._doomed = 0
            self._failures += 1
            self._last_error = error
            self._cond.notify_all()
            return self._failures, len(self._waiting) + len(self._in_flight)

    def report_drops(self) -> None:
        """Log the rows dropped since the last report, if any."""
        with self._cond:
            new, self._dropped_reported = self._dropped - self._dropped_reported, self._dropped
        if new:
            log.warning("prediction log: buffer full (%d rows), dropped the %d oldest rows", self.max_rows, new)

    def last_error(self) -> str | None:
        with self._cond:
            return self._last_error
