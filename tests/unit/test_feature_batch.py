"""Online feature batches: stored hashes in any layout become the same columns, states and model matrix."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from churn_platform.features.feature_batch import (
    MISSING,
    PRESENT,
    STALE,
    FeatureBatch,
    HashArranger,
    TimestampCache,
    ViewFields,
)
from churn_platform.features.value_codec import ValueDecoder
from churn_platform.model.encoding import FeatureEncoder

NOW = datetime(2025, 6, 1, tzinfo=UTC)
TS = b"_ts:view"
VIEW = ViewFields(TS, (("spend", b"f-spend", True), ("logins", b"f-logins", False), ("plan", b"f-plan", False)))


def stamp(at: datetime) -> bytes:
    proto = Timestamp()
    proto.FromDatetime(at)
    return proto.SerializeToString()


def stored_hash(at: datetime, spend: float | None, logins: int | None, plan: str | None) -> dict[bytes, bytes]:
    """A user's Redis hash as Feast writes it (a None feature is absent from the hash)."""
    fields = {TS: stamp(at)}
    if spend is not None:
        fields[b"f-spend"] = Value(double_val=spend).SerializeToString()
    if logins is not None:
        fields[b"f-logins"] = Value(int64_val=logins).SerializeToString()
    if plan is not None:
        fields[b"f-plan"] = Value(string_val=plan).SerializeToString()
    return fields


def flat(fields: dict[bytes, bytes], order: list[bytes] | None = None) -> list[bytes]:
    """An HGETALL reply (RESP2) listing the fields in `order` (default: as written)."""
    names = order or list(fields)
    return [item for name in names if name in fields for item in (name, fields[name])]


def make_batch(replies: list[Any], user_ids: list[str] | None = None) -> FeatureBatch:
    arranger = HashArranger([TS, *(field for _, field, _ in VIEW.features)])
    users = user_ids or [f"u{i}" for i in range(len(replies))]
    return FeatureBatch(
        users, [VIEW], arranger.arrange(replies), now=NOW, max_age=timedelta(hours=48),
        decoder=ValueDecoder(), timestamps=TimestampCache(),
    )  # fmt: skip


def test_every_layout_reads_as_the_same_columns() -> None:
    fresh = NOW - timedelta(hours=1)
    users = [stored_hash(fresh, 10.5 * i, i, "pro" if i % 2 else "basic") for i in range(6)]
    reversed_order = [b"f-plan", b"f-logins", b"f-spend", TS]
    replies: list[Any] = [flat(users[0]), flat(users[1]), flat(users[2], reversed_order), users[3], flat(users[4])]
    replies[4] = replies[4] + [b"other-view-field", b"ignored"]  # another view of the same entity in the hash
    replies.append(flat(users[5]))

    batch = make_batch(replies)

    assert batch.column("spend") == [10.5 * i for i in range(6)]
    assert batch.column("logins") == list(range(6))
    assert batch.column("plan") == ["basic", "pro", "basic", "pro", "basic", "pro"]
    assert (batch.states == PRESENT).all() and not batch.featureless.any()
    assert batch.snapshot_times() == [fresh] * 6


def test_missing_stale_and_unknown_users_are_told_apart() -> None:
    replies = [
        flat(stored_hash(NOW - timedelta(hours=1), 1.0, 3, "pro")),
        flat(stored_hash(NOW - timedelta(days=5), 2.0, 4, "basic")),  # materialized long ago
        flat(stored_hash(NOW - timedelta(hours=1), None, 5, None)),  # two features never written
        [],  # no hash at all
    ]

    batch = make_batch(replies)

    assert batch.states.tolist() == [
        [PRESENT] * 3, [STALE] * 3, [MISSING, PRESENT, MISSING], [MISSING] * 3,
    ]  # fmt: skip
    assert batch.featureless.tolist() == [False, False, False, True]
    assert batch.snapshot_times()[3] is None
    vectors = batch.vectors()
    assert vectors[2].values == {"spend": None, "logins": 5, "plan": None}
    assert vectors[2].status == {"spend": "missing", "logins": "present", "plan": "missing"}
    assert vectors[3].status == dict.fromkeys(["spend", "logins", "plan"], "missing")
    matrix = batch.numeric(["spend", "logins"])
    assert matrix[0].tolist() == [1.0, 3.0] and math.isnan(matrix[2, 0]) and np.isnan(matrix[3]).all()


def test_the_batch_encodes_as_the_feature_dicts_do() -> None:
    rng = np.random.default_rng(3)
    at = NOW - timedelta(hours=2)
    plans = ["basic", "pro", "team", None, "unseen"]
    rows = [
        (None if i % 7 == 0 else float(rng.normal()), None if i % 5 == 0 else int(rng.integers(0, 50)), plans[i % 5])
        for i in range(40)
    ]
    replies = [flat(stored_hash(at, *row)) for row in rows] + [[]]
    batch = make_batch(replies)
    frame = pd.DataFrame({"spend": [1.0, 2.0], "logins": [1, 2], "plan": ["basic", "pro"]})
    encoder = FeatureEncoder(numeric=["spend", "logins"], categorical=["plan"]).fit(frame)

    expected = encoder.transform_rows([vector.values for vector in batch.vectors()])

    np.testing.assert_array_equal(encoder.transform_batch(batch), expected)
    some = np.array([3, 0, 40, 17], dtype=np.intp)
    np.testing.assert_array_equal(encoder.transform_batch(batch, some), expected[some])


def test_a_value_that_is_not_a_double_falls_back_to_feasts_conversion() -> None:
    fields = stored_hash(NOW, 1.0, 2, "pro")
    fields[b"f-spend"] = Value(int64_val=7).SerializeToString()  # written by an older definition of the view

    batch = make_batch([flat(fields), flat(stored_hash(NOW, 2.5, 2, "pro"))])

    assert batch.numeric(["spend"]).ravel().tolist() == [7.0, 2.5]
    assert batch.column("spend") == [7, 2.5]


@pytest.mark.parametrize("reply", [[], {}])
def test_a_batch_of_nobody_has_no_features(reply: Any) -> None:
    batch = make_batch([reply, reply])

    assert batch.featureless.tolist() == [True, True]
    assert np.isnan(batch.numeric(["spend", "logins"])).all()


def test_a_longest_hash_without_a_wanted_field_does_not_hide_it_from_the_others() -> None:
    at = NOW - timedelta(hours=1)
    other_views = [b"o1", b"x", b"o2", b"x", b"o3", b"x"]  # fields of views this service does not read
    replies = [
        flat(stored_hash(at, None, 5, None)) + other_views,  # the longest reply, lacking two wanted fields
        flat(stored_hash(at, 1.0, 3, "pro")),
        other_views,  # only other views: no feature of ours
    ]

    batch = make_batch(replies)

    assert batch.column("spend") == [None, 1.0, None]
    assert batch.column("plan") == [None, "pro", None]
    assert batch.states.tolist() == [[MISSING, PRESENT, MISSING], [PRESENT] * 3, [MISSING] * 3]
    assert batch.featureless.tolist() == [False, False, True]


def test_one_layout_throughout_and_names_out_of_step_read_the_same() -> None:
    fresh = NOW - timedelta(hours=1)
    users = [stored_hash(fresh, 1.5 * i, i, "pro" if i % 2 else "basic") for i in range(4)]
    uniform = [flat(user) for user in users]
    # As long as the others, but with its fields in another order: the names disagree at the same position.
    shuffled = [*uniform[:3], flat(users[3], [b"f-logins", TS, b"f-plan", b"f-spend"])]
    # As long as the others, but one field is another view's: a wanted field is absent for that user.
    foreign = [*uniform[:3], [*flat(users[3])[:-2], b"other-view-field", b"x"]]

    for replies in (uniform, shuffled):
        batch = make_batch(replies)
        assert batch.column("spend") == [1.5 * i for i in range(4)]
        assert batch.column("plan") == ["basic", "pro", "basic", "pro"]
    batch = make_batch(foreign)
    assert batch.column("plan") == ["basic", "pro", "basic", None]
    assert batch.states[3].tolist() == [PRESENT, PRESENT, MISSING]
