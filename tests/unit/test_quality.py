"""Data quality of served features on a fixed example: missing, out of range, new categories, stale, per day."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from churn_platform.monitoring import quality


def test_quality_per_feature_and_day_on_a_fixed_example() -> None:
    reference = pd.DataFrame({"logins": [0.0, 5.0, 10.0, np.nan], "plan": ["basic", "pro", None, "pro"]})
    current = pd.DataFrame({
        "event_timestamp": pd.to_datetime(["2026-03-01", "2026-03-01", "2026-03-01", "2026-03-01", "2026-03-02"],
                                          utc=True),
        "logins": [np.nan, 11.0, -1.0, 5.0, 10.0],
        "plan": ["basic", "team", "team", None, "enterprise"],
    })  # fmt: skip
    found = quality.feature_quality(reference, current, ["logins"], ["plan"], {date(2026, 3, 1): 0.25})
    by_key = {(q.feature, q.day): q for q in found}
    logins = by_key[("logins", date(2026, 3, 1))]
    assert (logins.rows, logins.missing_share, logins.reference_missing) == (4, 0.25, 0.25)
    assert logins.out_of_range == 0.5 and logins.new_categories is None and logins.stale_share == 0.25
    plan = by_key[("plan", date(2026, 3, 1))]
    assert plan.missing_share == 0.25 and plan.reference_missing == 0.25 and plan.new_categories == ["team"]
    assert plan.out_of_range is None
    second = by_key[("plan", date(2026, 3, 2))]
    assert second.new_categories == ["enterprise"] and second.stale_share is None and second.rows == 1  # unjudged
    assert by_key[("logins", date(2026, 3, 2))].out_of_range == 0.0  # the reference's maximum is inside
    [logins_window, plan_window] = quality.window_summary(found)
    assert (logins_window.missing_share, logins_window.reference_missing) == pytest.approx((0.2, 0.25))
    assert logins_window.worst_out_of_range == 0.5 and logins_window.worst_stale == 0.25
    assert plan_window.new_categories == ["enterprise", "team"] and plan_window.worst_out_of_range is None
