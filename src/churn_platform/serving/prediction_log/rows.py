"""A prediction-log row: its columns, its request id, and its form as a line of COPY text.

Requests format their rows in bulk (`copy_lines`: a request's shared fields once, each distinct route once), so the
buffer and the writer only move strings.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

COLUMNS = (
    "request_id", "predicted_at", "user_id", "experiment", "arm", "model_alias", "model_version",
    "churn_probability", "feature_hash", "snapshot_at", "latency_ms", "endpoint", "shadow_version",
    "shadow_probability",
)  # fmt: skip
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
Shadow = tuple[str, float]  # the other arm's model version and its score of the same features
NO_SHADOW = f"\t{NULL}\t{NULL}"


def copy_lines(
    request_id: uuid.UUID, predicted_at: datetime, latency_ms: float, endpoint: str, user_ids: Sequence[str],
    routes: Sequence[RouteFields], probabilities: Sequence[float | None], hashes: Sequence[str],
    snapshots: Sequence[datetime | None], shadows: Sequence[Shadow | None] | None = None,
) -> list[str]:  # fmt: skip
    """COPY text lines of one request's rows, given as columns (a probability of None: no score; a hash in hex; the
    snapshot time of the features scored, None without features; the shadow score, None, or no `shadows` at all
    outside an experiment); raises TypeError for a value the table could not hold.

    The request's shared fields are formatted once, each distinct route once (rows routed alike share one tuple)
    and each distinct snapshot time once (a batch's users mostly share one); user ids are escaped only if one of
    them needs it.
    """
    head = f"{request_id}\t{predicted_at.isoformat()}\t"
    if len(snapshots) != len(user_ids):
        raise ValueError(f"{len(snapshots)} snapshot times for {len(user_ids)} rows")
    if shadows is None or all(shadow is None for shadow in shadows):
        tail = f"\t{_number(latency_ms)}\t{copy_text(endpoint)}{NO_SHADOW}\n"
        shadow_texts: Iterable[str] = itertools.repeat("", len(user_ids))
    else:
        if len(shadows) != len(user_ids):
            raise ValueError(f"{len(shadows)} shadow scores for {len(user_ids)} rows")
        tail = f"\t{_number(latency_ms)}\t{copy_text(endpoint)}"
        shadow_texts = [_shadow(shadow) + "\n" for shadow in shadows]
    distinct_times = {id(at): at for at in snapshots}
    if len(distinct_times) == 1:  # the usual batch: every user's features from one snapshot, formatted once
        tail = f"\t{_time(snapshots[0])}{tail}"
        stamped_hashes: Sequence[str] = hashes
    else:
        times = {key: _time(at) for key, at in distinct_times.items()}
        stamped_hashes = [f"{hashed}\t{times[id(at)]}" for hashed, at in zip(hashes, snapshots, strict=True)]
    distinct = {id(route): route for route in routes}
    texts = {key: "\t" + "\t".join(map(copy_text, route)) + "\t" for key, route in distinct.items()}
    if len(texts) == 1:
        middles: Iterable[str] = itertools.repeat(next(iter(texts.values())), len(routes))
    else:
        middles = [texts[id(route)] for route in routes]
    if _ESCAPED.search("".join(user_ids)):
        user_ids = [copy_text(user_id) for user_id in user_ids]
    scores = map(repr, probabilities) if None not in probabilities else [_score(p) for p in probabilities]
    columns = zip(user_ids, middles, scores, stamped_hashes, shadow_texts, strict=True)
    return [
        f"{head}{user_id}{middle}{score}\t{hashed}{tail}{shadow}" for user_id, middle, score, hashed, shadow in columns
    ]


def _shadow(shadow: Shadow | None) -> str:
    if shadow is None:
        return NO_SHADOW
    version, probability = shadow
    return f"\t{copy_text(version)}\t{_number(probability)}"


def _time(at: datetime | None) -> str:
    if at is None:
        return NULL
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise TypeError(f"expected an aware datetime, got {type(at).__name__}: {at!r}")
    return at.isoformat()


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
    snapshot_at: datetime | None  # the snapshot the features came from (monitoring joins on it); None without
    latency_ms: float
    endpoint: str  # predict / predict_batch
    shadow_version: str | None = None  # inside an experiment: the other arm's model, which scored the same features
    shadow_probability: float | None = None

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
            self.request_id, self.predicted_at, self.latency_ms, self.endpoint, [self.user_id], [route], [p], [hashed],
            [self.snapshot_at],
            None if self.shadow_version is None else [(self.shadow_version, self.shadow_probability)],  # type: ignore[list-item]
        )[0]  # fmt: skip


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: one log line per refused row or failed write."""
    return (str(exc).strip().splitlines() or [""])[0]
