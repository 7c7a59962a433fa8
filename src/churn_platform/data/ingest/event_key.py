"""The idempotency key of a user's event, computed in Python over Arrow columns before the rows are COPYed.

An event's key is the 128-bit MurmurHash3 (x64 variant, seed 0) of its canonical bytes:

- with an event_id: ``b"id" + US + event_id``;
- without one, the row's content: ``user_id + US + event_type + US + timestamp + US + value``, where the texts are
  UTF-8, US is the unit separator 0x1F, the timestamp is the int64 big-endian count of microseconds since
  1970-01-01 UTC, and the value is the big-endian IEEE-754 float64 (-0.0 written as 0.0), or nothing when NULL;
- without one, for the k-th repeat (k >= 1) of an identical row earlier in the same file (same content bytes):
  the content bytes + US + k as an int64 big-endian. Two real purchases exported at day resolution, same day and
  amount, are two events; the first occurrence keeps the plain content key.

The 16 bytes are stored as `raw.events.event_key uuid` (a binary COPY of a uuid is its 16 bytes). Loading the
same event twice, from one file or from two in other formats or time zones, gives the same key; a file that
repeats a row n times has the keys of occurrences 0..n-1, so a second file adds only the repeats beyond those.
The hash is not cryptographic, it only has to tell distinct events apart: collisions become likely around 2^64
events. Hashing here costs ~0.2 s per 1.4M events, where an md5 key computed by PostgreSQL cost ~2 s of server
time. Numbering the repeats (`FileEventKeys`) keeps 24 bytes per event without an event_id until the file ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mmh3
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from churn_platform.data.arrow_copy import TIMESTAMP_UTC, binary_cells

__all__ = ["KEY_BYTES", "FileEventKeys", "RepeatCounter", "canonical_event_bytes", "event_keys"]

KEY_BYTES = 16
UNIT_SEPARATOR = pa.scalar(b"\x1f", pa.large_binary())
EVENT_ID_PREFIX = b"id"


def _content_bytes(user_id: pa.Array, event_type: pa.Array, event_timestamp: pa.Array, value: pa.Array) -> pa.Array:
    micros = event_timestamp.cast(TIMESTAMP_UTC).cast(pa.int64()).to_numpy()
    floats = value.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    # -0.0 == 0.0 is the same amount: one key for both.
    value_bytes = binary_cells(np.where(floats == 0.0, 0.0, floats).astype(">f8"))
    if value.null_count:
        value_bytes = pc.if_else(value.is_null(), pa.scalar(None, pa.large_binary()), value_bytes)
    # The separator goes between the four fields; a NULL value becomes an empty last field.
    return pc.binary_join_element_wise(
        user_id.cast(pa.large_binary()),
        event_type.cast(pa.large_binary()),
        binary_cells(micros.astype(">i8")),
        value_bytes,
        UNIT_SEPARATOR,
        null_handling="replace",
        null_replacement=b"",
    )


def _numbered(content: pa.Array, occurrence: npt.NDArray[np.int64] | None) -> pa.Array:
    """The content bytes, followed by US and the occurrence number where it is at least 1."""
    if occurrence is None or not occurrence.any():
        return content
    repeated = pc.binary_join_element_wise(content, binary_cells(occurrence.astype(">i8")), UNIT_SEPARATOR)
    return pc.if_else(pa.array(occurrence > 0), repeated, content)


def canonical_event_bytes(
    user_id: pa.Array,
    event_type: pa.Array,
    event_timestamp: pa.Array,
    value: pa.Array,
    event_id: pa.Array,
    occurrence: npt.NDArray[np.int64] | None = None,
) -> pa.Array:
    """The bytes an event's key hashes, one large_binary value per event (see the module docstring).

    Args:
        user_id, event_type: text, without NULLs.
        event_timestamp: timestamps of any unit and zone, without NULLs.
        value: float64, NULL when the event has none.
        event_id: text, NULL when the source gave none.
        occurrence: for each event, how many identical rows without an event_id came before it in its file
            (ignored where there is an event_id); None when none did.
    """
    if user_id.null_count or event_type.null_count or event_timestamp.null_count:
        raise ValueError("user_id, event_type and event_timestamp of a keyed event cannot be NULL")
    if event_id.null_count == len(event_id):
        return _numbered(_content_bytes(user_id, event_type, event_timestamp, value), occurrence)
    by_id = pc.binary_join_element_wise(
        pa.scalar(EVENT_ID_PREFIX, pa.large_binary()), event_id.cast(pa.large_binary()), UNIT_SEPARATOR
    )  # NULL where there is no event_id
    if event_id.null_count == 0:
        return by_id
    content = _numbered(_content_bytes(user_id, event_type, event_timestamp, value), occurrence)
    return pc.coalesce(by_id, content)


def _hash(canonical: pa.Array) -> pa.FixedSizeBinaryArray:
    # One C call per event: ~0.15 us each, mostly the Python iteration.
    digests = b"".join(map(mmh3.hash_bytes, canonical.to_pylist()))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(KEY_BYTES), len(canonical), [None, pa.py_buffer(digests)])


def event_keys(
    user_id: pa.Array,
    event_type: pa.Array,
    event_timestamp: pa.Array,
    value: pa.Array,
    event_id: pa.Array,
    occurrence: npt.NDArray[np.int64] | None = None,
) -> pa.FixedSizeBinaryArray:
    """The 16-byte key of every event: MurmurHash3 x64 128 (seed 0) of `canonical_event_bytes`."""
    return _hash(canonical_event_bytes(user_id, event_type, event_timestamp, value, event_id, occurrence))


def _digests(keys: pa.FixedSizeBinaryArray) -> npt.NDArray[np.void]:
    """The keys as a numpy array of 16-byte values (no copy)."""
    return np.frombuffer(keys.buffers()[1], dtype=f"V{KEY_BYTES}", count=len(keys), offset=keys.offset * KEY_BYTES)


@dataclass(frozen=True)
class _Run:
    """Keys seen earlier in the file as two 8-byte halves, sorted by the first (`fingerprint`)."""

    fingerprint: npt.NDArray[np.uint64]
    rest: npt.NDArray[np.uint64]

    def count(self, fingerprint: npt.NDArray[np.uint64], rest: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """How many times the run holds each key (exact: the keys of equal fingerprints are compared in full)."""
        left = np.searchsorted(self.fingerprint, fingerprint, side="left")
        width = np.searchsorted(self.fingerprint, fingerprint, side="right") - left
        which = np.repeat(np.arange(len(rest)), width)
        position = left[which] + np.arange(len(which)) - np.repeat(np.cumsum(width) - width, width)
        same = self.rest[position] == rest[which]
        return np.bincount(which[same], minlength=len(rest)).astype(np.int64)

    def merged(self, other: _Run) -> _Run:
        """Both runs in one, by a merge pass: `other`'s keys go after this run's equal fingerprints."""
        size = len(self.fingerprint) + len(other.fingerprint)
        at = np.searchsorted(self.fingerprint, other.fingerprint, side="right") + np.arange(len(other.fingerprint))
        mine = np.ones(size, dtype=bool)
        mine[at] = False
        fingerprint, rest = np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.uint64)
        fingerprint[at], rest[at] = other.fingerprint, other.rest
        fingerprint[mine], rest[mine] = self.fingerprint, self.rest
        return _Run(fingerprint, rest)


@dataclass
class RepeatCounter:
    """Numbers each content key by how many identical ones came before it in the file, across calls in file order.

    A chunk's keys are sorted by fingerprint (their first 8 bytes, uniformly distributed) and kept as a run; runs
    of equal size are merged as in a binary counter, so a file keeps O(log n) of them. Only the rows whose fingerprint
    repeats within the chunk or appears in a run, nearly always genuine repeats, are compared in full.
    """

    _runs: list[_Run] = field(default_factory=list)
    repeats: int = 0  # rows numbered 1 or more so far

    def occurrences(self, keys: pa.FixedSizeBinaryArray) -> npt.NDArray[np.int64] | None:
        """The occurrence number of each content key, counting the keys of earlier calls and those earlier in
        `keys`; None when every one is 0 (no key was seen before)."""
        digest = _digests(keys)
        halves = digest.view(">u8").astype(np.uint64)
        fingerprint, rest = halves[::2], halves[1::2]
        order = np.argsort(fingerprint)
        in_order = fingerprint[order]
        same_as_next = in_order[1:] == in_order[:-1]
        candidate = np.zeros(len(order), dtype=bool)
        candidate[1:] = same_as_next
        candidate[:-1] |= same_as_next
        for run in self._runs:
            at = np.minimum(np.searchsorted(run.fingerprint, in_order), len(run.fingerprint) - 1)
            candidate |= run.fingerprint[at] == in_order
        occurrence = None
        if candidate.any():
            rows = np.sort(order[candidate])  # in file order
            occurrence = np.zeros(len(digest), dtype=np.int64)
            occurrence[rows] = self._seen_before(fingerprint[rows], rest[rows], digest[rows])
            self.repeats += int(np.count_nonzero(occurrence))
        if len(order):
            self._push(_Run(in_order, rest[order]))
        return occurrence if occurrence is not None and occurrence.any() else None

    def _seen_before(
        self, fingerprint: npt.NDArray[np.uint64], rest: npt.NDArray[np.uint64], digest: npt.NDArray[np.void]
    ) -> npt.NDArray[np.int64]:
        """For keys in file order: how many equal ones the runs hold, plus how many came earlier among them."""
        earlier = sum((run.count(fingerprint, rest) for run in self._runs), np.zeros(len(digest), dtype=np.int64))
        order = np.argsort(digest, kind="stable")  # equal digests keep their file order
        in_order = digest[order]
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = in_order[1:] != in_order[:-1]
        position = np.arange(len(order))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = position - np.maximum.accumulate(np.where(starts, position, 0))
        return earlier + rank

    def _push(self, run: _Run) -> None:
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2].fingerprint) <= len(self._runs[-1].fingerprint):
            last = self._runs.pop()
            self._runs[-1] = self._runs[-1].merged(last)


def _from_digests(digests: npt.NDArray[np.void]) -> pa.FixedSizeBinaryArray:
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(KEY_BYTES), len(digests), [None, pa.py_buffer(digests.tobytes())]
    )


@dataclass
class FileEventKeys:
    """The keys of one file's events, given chunk by chunk in file order: a row without an event_id that repeats
    an identical earlier row of the file, in this chunk or an earlier one, gets the key of its occurrence."""

    counter: RepeatCounter = field(default_factory=RepeatCounter)

    @property
    def rows_repeated(self) -> int:
        """Rows so far that repeat an identical earlier row of the file (kept as events of their own)."""
        return self.counter.repeats

    def keys(
        self, user_id: pa.Array, event_type: pa.Array, event_timestamp: pa.Array, value: pa.Array, event_id: pa.Array
    ) -> pa.FixedSizeBinaryArray:
        """The keys of the file's next rows (arguments as for `event_keys`)."""
        keys = event_keys(user_id, event_type, event_timestamp, value, event_id)
        if event_id.null_count == 0:
            return keys
        by_content = event_id.is_null().to_numpy(zero_copy_only=False)
        occurrence = self.counter.occurrences(keys if by_content.all() else keys.filter(pa.array(by_content)))
        if occurrence is None:
            return keys
        numbered = np.zeros(len(keys), dtype=np.int64)
        numbered[by_content] = occurrence
        rows = pa.array(np.flatnonzero(numbered))
        user, kind, at, amount, ids = (c.take(rows) for c in (user_id, event_type, event_timestamp, value, event_id))
        repeats = event_keys(user, kind, at, amount, ids, occurrence=numbered[numbered > 0])
        digests = _digests(keys).copy()
        digests[numbered > 0] = _digests(repeats)
        return _from_digests(digests)
