"""Many users' online features as columns: the serving path's read, without a dict per user.

`OnlineFeatures.read_batch` fetches every user's Redis hash with one pipelined HGETALL and arranges the stored
bytes in a users x features array. A `FeatureBatch` decodes from it only what its caller asks for: a float matrix
of the numeric features for a model (all doubles in one numpy call, other numbers through a cache of their
encodings), a categorical column as positions among the encoder's categories, or per-user `FeatureVector`s with
Python values for a response that shows them. States (present / stale / missing) are judged per user and feature
view, as arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from churn_platform.features.value_codec import CACHE_LIMIT, ValueDecoder

Status = Literal["present", "missing", "stale"]
PRESENT, STALE, MISSING = 0, 1, 2
STATUS_NAMES: tuple[Status, ...] = ("present", "stale", "missing")
FloatMatrix = npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FeatureVector:
    """One user's online features, with each feature's status and the snapshot time they come from."""

    user_id: str
    values: dict[str, Any]
    status: dict[str, Status]
    snapshot_at: datetime | None


@dataclass(frozen=True)
class ViewFields:
    """Where one feature view's values live in a user's Redis hash (Feast's layout)."""

    timestamp_field: bytes
    features: tuple[tuple[str, bytes, bool], ...]  # (feature name, hash field, stored as a double)


Column = tuple[Any, ...]  # one stored field across the batch's users: bytes, or None where absent


class HashArranger:
    """Stored hashes (HGETALL replies) -> one column per wanted field: its stored bytes per user, None if absent.

    Feast writes a view's fields together, so nearly every hash lists its fields in one order: the arranger takes
    the longest reply's order (with any wanted field it lacks appended) as the batch's, slices each reply's values
    in that order and transposes them in one call; a hash in any other order or with other fields (a view missing,
    another view's fields, another writer) goes through a dict.
    """

    def __init__(self, fields: Sequence[bytes]) -> None:
        self.fields = tuple(fields)
        self._takes: dict[tuple[bytes, ...], list[int]] = {}

    def arrange(self, replies: Sequence[Any]) -> list[Column]:
        replies = [reply if type(reply) is list else _pairs(reply) for reply in replies]
        longest: list[Any] = max(replies, key=len, default=[])
        if longest and all(len(reply) == len(longest) for reply in replies):
            arranged = self._arrange_uniform(replies)
            if arranged is not None:
                return arranged
        order = longest[0::2]
        listed = set(order)
        order += [name for name in self.fields if name not in listed]  # so a hash lacking one takes the dict path
        nothing = [None] * len(order)
        rows = []
        for reply in replies:
            if not reply:
                rows.append(nothing)
            elif reply[0::2] == order:
                rows.append(reply[1::2])
            else:
                stored = dict(zip(reply[0::2], reply[1::2], strict=True))
                rows.append([stored.get(name) for name in order])
        columns = list(zip(*rows, strict=True)) if order else []
        columns.append((None,) * len(replies))  # what an absent field reads as
        return [columns[i] for i in self._take(order)]

    def _arrange_uniform(self, replies: list[list[Any]]) -> list[Column] | None:
        """The common case, every user's hash in one layout: transpose all replies at once, then check that each
        name column holds one name throughout (None if not: the general path sorts it out)."""
        transposed = list(zip(*replies, strict=True))
        names = transposed[0::2]
        if any(column.count(column[0]) != len(column) for column in names):
            return None
        order = [column[0] for column in names]
        columns = transposed[1::2]
        columns.append((None,) * len(replies))  # what an absent field reads as
        return [columns[i] for i in self._take(order)]

    def _take(self, order: list[bytes]) -> list[int]:
        key = tuple(order)
        take = self._takes.get(key)
        if take is None:
            position = {name: i for i, name in enumerate(order)}
            take = [position.get(name, len(order)) for name in self.fields]
            if len(self._takes) < 64:  # a handful of layouts at most; never grow without bound
                self._takes[key] = take
        return take


def _pairs(reply: Any) -> list[Any]:
    """An HGETALL reply as a flat [field, value, ...] list (RESP2 gives one; RESP3 gives a dict)."""
    if isinstance(reply, dict):
        return [item for pair in reply.items() for item in pair]
    return list(reply)


class FeatureBatch:
    """The online features of `user_ids` as stored columns, decoded on demand; one per request."""

    def __init__(
        self,
        user_ids: Sequence[str],
        views: Sequence[ViewFields],
        stored: Sequence[Column],
        *,
        now: datetime,
        max_age: timedelta,
        decoder: ValueDecoder,
        timestamps: TimestampCache,
    ) -> None:
        self.user_ids = user_ids
        self.names = [name for view in views for name, _, _ in view.features]
        self._doubles = [doubles for view in views for _, _, doubles in view.features]
        self._view_of = np.array([v for v, view in enumerate(views) for _ in view.features], dtype=np.intp)
        self._column = {name: i for i, name in enumerate(self.names)}
        self._decoder = decoder
        self._timestamps = timestamps
        self._stamps = list(stored[: len(views)])  # per view: the stored `_ts` of each user
        self._values = list(stored[len(views) :])  # per feature: the stored value of each user
        limit = max_age.total_seconds()
        ages = np.array([timestamps.ages_s(stamps, now) for stamps in self._stamps]).reshape(len(views), len(self))
        # Each user's state per view: NaN age = never materialized for the user.
        self.view_states = np.where(np.isnan(ages), MISSING, np.where(ages > limit, STALE, PRESENT)).T
        self._partial = [i for i, values in enumerate(self._values) if None in values]  # features someone lacks
        self._numeric: dict[tuple[str, ...], FloatMatrix] = {}
        self._snapshots: list[datetime | None] | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def absent(self) -> npt.NDArray[np.bool_]:
        """Users x features: True where the user has no stored value."""
        absent = np.zeros((len(self), len(self.names)), dtype=bool)
        for i in self._partial:
            absent[:, i] = [value is None for value in self._values[i]]
        return absent

    @property
    def states(self) -> npt.NDArray[np.int_]:
        """Each user's state of each feature: PRESENT, STALE or MISSING (the feature has no stored value)."""
        states: npt.NDArray[np.int_] = np.where(self.absent, MISSING, self.view_states[:, self._view_of])
        return states

    @property
    def featureless(self) -> npt.NDArray[np.bool_]:
        """Users with no stored feature value at all (never materialized, or unknown)."""
        if len(self._partial) < len(self.names):  # some feature is stored for every user
            return np.zeros(len(self), dtype=bool)
        return np.asarray(self.absent.all(axis=1), dtype=bool)

    def numeric(self, names: Sequence[str], rows: npt.NDArray[np.intp] | None = None) -> FloatMatrix:
        """The named numeric features as float64 columns (NaN where missing), for `rows` or every user."""
        key = tuple(names)
        matrix = self._numeric.get(key)
        if matrix is None:
            matrix = self._numeric[key] = self._decode_numeric([self._column[name] for name in names])
        return matrix if rows is None else matrix[rows]

    def column(self, name: str, rows: npt.NDArray[np.intp] | None = None) -> list[Any]:
        """One feature's Python values (None where missing), as Feast's own read would give them."""
        i = self._column[name]
        raws = self._values[i]
        picked = list(raws) if rows is None else [raws[k] for k in rows.tolist()]
        return self._decoder.column(picked, doubles=self._doubles[i])

    def codes(
        self, name: str, positions: Mapping[str, int], cache: dict[bytes | None, int],
        rows: npt.NDArray[np.intp] | None = None,
    ) -> npt.NDArray[np.int64]:  # fmt: skip
        """One feature's values as their positions in `positions` (keyed by `str(value)`; -1 for any other value),
        without decoding each value: `cache` remembers each stored encoding's position (see ValueDecoder.codes)."""
        raws = self._values[self._column[name]]
        picked = raws if rows is None else [raws[k] for k in rows.tolist()]
        return self._decoder.codes(picked, positions, cache)

    def snapshot_times(self) -> list[datetime | None]:
        """Per user, the newest snapshot time among the views materialized for them (None for none)."""
        if self._snapshots is None:
            time = self._timestamps.time
            if len(self._stamps) == 1:
                self._snapshots = [None if raw is None else time(raw) for raw in self._stamps[0]]
            else:
                self._snapshots = [self._timestamps.newest(row) for row in zip(*self._stamps, strict=True)]
        return self._snapshots

    def vectors(self, rows: Sequence[int] | None = None) -> list[FeatureVector]:
        """Per-user feature vectors (values as Python objects, one status per feature)."""
        picked = np.arange(len(self), dtype=np.intp) if rows is None else np.asarray(rows, dtype=np.intp)
        columns = [self.column(name, picked) for name in self.names]
        states = self.states[picked].tolist()
        snapshots = self.snapshot_times()
        vectors = []
        for k, i in enumerate(picked.tolist()):
            values = {name: column[k] for name, column in zip(self.names, columns, strict=True)}
            status = {name: STATUS_NAMES[state] for name, state in zip(self.names, states[k], strict=True)}
            vectors.append(FeatureVector(self.user_ids[i], values, status, snapshots[i]))
        return vectors

    def _decode_numeric(self, columns: list[int]) -> FloatMatrix:
        """These feature columns as float64: all doubles in one numpy call, other numbers through a cache."""
        count = len(self)
        matrix = np.full((len(columns), count), np.nan)
        for doubles in (True, False):
            picked = [k for k, i in enumerate(columns) if self._doubles[i] == doubles]
            if not picked:
                continue
            raws = [raw for k in picked for raw in self._values[columns[k]]]
            decoded = self._decoder.double_floats(raws) if doubles else None
            if decoded is None:  # other numbers, or not all stored as doubles: their own conversion decides
                decoded = self._decoder.floats(raws)
            matrix[picked] = decoded.reshape(len(picked), count)
        return np.ascontiguousarray(matrix.T)


class TimestampCache:
    """Stored `_ts` protos -> times; a long-lived reader sees a handful of distinct snapshot times."""

    def __init__(self) -> None:
        self._times: dict[bytes, datetime] = {}
        self._seconds: dict[bytes | None, float] = {None: np.nan}

    def time(self, raw: bytes) -> datetime:
        try:
            return self._times[raw]
        except KeyError:
            from google.protobuf.timestamp_pb2 import Timestamp

            at: datetime = Timestamp.FromString(raw).ToDatetime(tzinfo=UTC)
            if len(self._times) < CACHE_LIMIT:
                self._times[raw] = at
                self._seconds[raw] = at.timestamp()
            return at

    def ages_s(self, stamps: Column, now: datetime) -> FloatArray:
        """Seconds from each stored time to `now` (NaN where there is none)."""
        seconds = self._seconds
        try:
            values = np.fromiter(map(seconds.__getitem__, stamps), np.float64, len(stamps))
        except KeyError:
            values = np.array([np.nan if raw is None else self.time(raw).timestamp() for raw in stamps])
        ages: FloatArray = now.timestamp() - values
        return ages

    def newest(self, raws: Sequence[bytes | None]) -> datetime | None:
        times = [self.time(raw) for raw in raws if raw is not None]
        return max(times) if times else None
