"""The order a bulk load COPYs rows in: by user and time within windows of the file, never across them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from churn_platform.data.ingest.event_loads import user_time_order

rows = st.lists(st.tuples(st.sampled_from(["u1", "u10", "u2", "é", "a b"]), st.integers(0, 10**12)), max_size=60)


@given(rows, st.integers(1, 8))
def test_each_window_is_sorted_by_user_then_time_and_rows_stay_in_their_window(
    events: list[tuple[str, int]], window: int
) -> None:
    users = pa.array([user for user, _ in events], pa.string())
    times = pa.array([micros for _, micros in events], pa.int64()).cast(pa.timestamp("us", "UTC"))

    order = user_time_order(users, times, window)

    assert sorted(order.tolist()) == list(range(len(events)))
    assert (order // window == np.arange(len(events)) // window).all()
    for start in range(0, len(events), window):
        in_window = [events[i] for i in order[start : start + window]]
        assert in_window == sorted(in_window, key=lambda event: (event[0].encode(), event[1]))
