"""A request's rows of the prediction log: one per answered user, handed to the log's buffer as columns.

Every scored or unscored prediction becomes a row; an unknown user gets an answer but no row. The rows' route
fields are built once per distinct route, and the buffer formats the request's rows in bulk: no I/O here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from churn_platform.serving.batch_scoring import Outcome
from churn_platform.serving.prediction_log import PredictionLogBuffer, RouteFields, Shadow
from churn_platform.serving.routing import Route, per_route


def log_fields(route: Route) -> RouteFields:
    """A route as the log's columns: experiment, arm, model alias (the reference it was loaded for), version."""
    return route.experiment, route.arm, route.reference, route.model.version


class RequestLog:
    """Submits each request's rows to a prediction-log buffer."""

    def __init__(self, buffer: PredictionLogBuffer) -> None:
        self.buffer = buffer

    def submit(
        self, request_id: uuid.UUID, latency_ms: float, endpoint: str, user_ids: Sequence[str], routes: Sequence[Route],
        probabilities: Sequence[float | None], hashes: Sequence[str], snapshots: Sequence[datetime | None],
        outcomes: Sequence[Outcome], unknown: set[str], shadows: Sequence[Shadow | None] | None = None,
    ) -> None:  # fmt: skip
        """Queue the rows of one request's answers, in order (`unknown`: the users answered `unknown_user`;
        `snapshots`: the snapshot time of each user's features; `shadows`: each user's shadow score, if any)."""
        route_fields = per_route(routes, log_fields)
        if unknown:  # an unknown user gets an answer but no log row
            kept = [i for i, outcome in enumerate(outcomes) if outcome != "unknown_user"]
            user_ids, probabilities = [user_ids[i] for i in kept], [probabilities[i] for i in kept]
            route_fields, hashes = [route_fields[i] for i in kept], [hashes[i] for i in kept]
            snapshots = [snapshots[i] for i in kept]
            shadows = None if shadows is None else [shadows[i] for i in kept]
        self.buffer.submit_rows(
            request_id, datetime.now(UTC), latency_ms, endpoint, user_ids, route_fields, probabilities, hashes,
            snapshots, shadows,
        )  # fmt: skip
