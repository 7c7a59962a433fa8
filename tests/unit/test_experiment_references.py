"""What an experiment's arguments mean: a reference to a model version, and a planned end written as text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from churn_platform.experiments.records import planned_end
from churn_platform.model.aliases import ModelReferences

HELD = ModelReferences("churn", frozenset({"1", "2", "10"}), {"champion": "1", "challenger": "10"})


@pytest.mark.parametrize(
    ("reference", "version"),
    [("champion", "1"), ("challenger", "10"), ("2", "2"), ("10", "10"), ("3", None), ("previous", None), ("02", None)],
)
def test_a_reference_is_a_version_the_model_holds_or_an_alias(reference: str, version: str | None) -> None:
    assert HELD.resolve(reference) == version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-07-01T18:00", datetime(2026, 7, 1, 18, tzinfo=UTC)),
        ("2026-07-01", datetime(2026, 7, 1, tzinfo=UTC)),
        ("2026-07-01T18:00Z", datetime(2026, 7, 1, 18, tzinfo=UTC)),
        (" 2026-07-01T18:00+02:00 ", datetime(2026, 7, 1, 18, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_a_planned_end_without_a_zone_is_utc_and_one_with_a_zone_keeps_it(text: str, expected: datetime) -> None:
    parsed = planned_end(text)

    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()


def test_a_planned_end_that_is_not_a_time_names_the_parameter() -> None:
    with pytest.raises(ValueError, match=r"ends_at must be an ISO 8601 time .* got 'next friday'"):
        planned_end("next friday")
