"""A flow task retries a failure that a retry can mend, never a refusal of what it was asked."""

from __future__ import annotations

from flows.common import retry_unless

from churn_platform.experiments.records import ExperimentError
from churn_platform.monitoring.drift_runs import MonitoringError


class State:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def result(self) -> None:
        if self.error is not None:
            raise self.error


def test_a_refusal_is_not_retried_and_any_other_failure_is() -> None:
    condition = retry_unless(MonitoringError, ExperimentError)
    assert not condition(None, None, State(MonitoringError("nothing served")))
    assert not condition(None, None, State(ExperimentError("no experiment named 'x'")))
    assert condition(None, None, State(ConnectionError("PostgreSQL went away")))
    assert condition(None, None, State(None))
