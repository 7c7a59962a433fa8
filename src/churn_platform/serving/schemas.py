"""The prediction service's HTTP contract: request and response bodies (they make its OpenAPI document).

Requests refuse unknown fields (`extra="forbid"`), so a misspelt field is a 400 naming it, not a silent default.
Response keys are read by outside scripts: rename nothing without a new route.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.responses import Response

from churn_platform.features.feature_batch import FeatureVector
from churn_platform.serving.predictor import BatchPrediction, Prediction
from churn_platform.serving.routing import Route, per_route

# As ingestion accepts them: non-empty text without NUL (PostgreSQL text cannot hold it).
USER_ID_PATTERN = r"^[^\x00]+$"
UserId = Field(min_length=1, max_length=256, pattern=USER_ID_PATTERN, description="The user's id, as in the events.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = UserId


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = UserId


def batch_request_model(max_users: int) -> type[BaseModel]:
    """`{"user_ids": [...], "include_features": false}` with the configured most users per request."""
    model: type[BaseModel] = create_model(
        "PredictBatchRequest",
        __config__=ConfigDict(extra="forbid"),
        user_ids=(
            list[Annotated[str, Field(min_length=1, max_length=256, pattern=USER_ID_PATTERN)]],
            Field(min_length=1, max_length=max_users, description=f"1 to {max_users} user ids."),
        ),
        include_features=(
            bool,
            Field(default=False, strict=True, description="Return each user's feature values too."),
        ),
    )
    return model


class FeatureValue(BaseModel):
    value: float | int | str | None
    status: Literal["present", "missing", "stale"]


class PredictResponse(BaseModel):
    user_id: str
    status: Literal["ok", "no_features", "unknown_user"]
    churn_probability: float | None = Field(description="P(churn within the label horizon); null without features.")
    risk_band: Literal["low", "medium", "high", "unknown"]
    model_version: str
    model_alias: str
    experiment: str | None
    arm: str = Field(
        description="control / variant in an experiment, champion without one, fallback if the"
        " variant's model is not loaded (the champion answered)."
    )
    features: dict[str, FeatureValue] | None
    snapshot_at: datetime | None
    request_id: str
    message: str | None


class PredictBatchResponse(BaseModel):
    request_id: str
    count: int
    results: list[PredictResponse]


class Contribution(BaseModel):
    feature: str
    value: float | int | str | None
    contribution: float = Field(description="Log-odds this feature adds to the score, against the base value.")


class ExplainResponse(BaseModel):
    user_id: str
    churn_probability: float | None
    model_version: str
    model_alias: str
    experiment: str | None
    arm: str
    method: str | None
    base_value: float | None = Field(description="Log-odds of the model's reference (average) user.")
    contributions: list[Contribution]
    message: str | None


def json_response(body: dict[str, Any]) -> Response:
    """The documented body, serialized by orjson (a validated pydantic model per result costs more than the
    prediction itself); the shapes are the response models above, which the tests check against the document."""
    return Response(orjson.dumps(body), media_type="application/json")


def features_body(vector: FeatureVector) -> dict[str, dict[str, Any]]:
    status = vector.status
    return {name: {"value": _plain(value), "status": status[name]} for name, value in vector.values.items()}


def prediction_body(prediction: Prediction, *, with_features: bool = True) -> dict[str, Any]:
    vector = prediction.features
    route = (prediction.model_version, prediction.model_alias, prediction.experiment, prediction.arm)
    return _results(
        prediction.request_id, [prediction.user_id], [prediction.outcome], [prediction.churn_probability],
        [prediction.risk_band], [route], [features_body(vector) if with_features else None], [vector.snapshot_at],
        [prediction.message],
    )[0]  # fmt: skip


def batch_body(result: BatchPrediction, *, with_features: bool) -> dict[str, Any]:
    """The `/predict_batch` body, straight from the prediction's columns (feature values decoded only if asked)."""
    features: Iterable[dict[str, Any] | None]
    if with_features:
        vectors = result.batch.vectors()
        features = [features_body(vector) for vector in vectors]
    else:
        features = itertools.repeat(None, len(result.routes))
    routes = per_route(result.routes, lambda route: (route.model.version, route.reference, route.experiment, route.arm))
    results = _results(
        result.request_id, result.user_ids, result.outcomes, result.probabilities, result.risk_bands, routes,
        features, result.batch.snapshot_times(), result.messages,
    )  # fmt: skip
    return {"request_id": result.request_id, "count": len(results), "results": results}


RouteColumn = tuple[str, str, str | None, str]  # model version, model alias, experiment, arm


def _results(
    request_id: str, user_ids: Iterable[str], statuses: Iterable[str], probabilities: Iterable[float | None],
    bands: Iterable[str], routes: Iterable[RouteColumn], features: Iterable[dict[str, Any] | None],
    snapshots: Iterable[datetime | None], messages: Iterable[str | None],
) -> list[dict[str, Any]]:  # fmt: skip
    """Predictions under the documented keys (PredictResponse), from columns: one dict literal per user, the
    cheapest way CPython builds them."""
    columns = zip(user_ids, statuses, probabilities, bands, routes, features, snapshots, messages, strict=True)
    # fmt: off
    return [
        {
            "user_id": user_id,
            "status": status,
            "churn_probability": probability,
            "risk_band": band,
            "model_version": version,
            "model_alias": alias,
            "experiment": experiment,
            "arm": arm,
            "features": values,
            "snapshot_at": snapshot_at,
            "request_id": request_id,
            "message": message,
        }
        for user_id, status, probability, band, (version, alias, experiment, arm), values, snapshot_at, message
        in columns
    ]
    # fmt: on


def _plain(value: Any) -> float | int | str | None:
    """A JSON-safe feature value: NaN and infinities are not JSON, they read as missing."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if value is None or isinstance(value, (int, float, str)):
        return value
    return str(value)


def explain_body(user_id: str, route: Route, vector: FeatureVector, explanation: Any) -> ExplainResponse:
    """The explanation of the model that answers this user (None when the user has no features to explain)."""
    common: dict[str, Any] = {
        "user_id": user_id,
        "model_version": route.model.version,
        "model_alias": route.reference,
        "experiment": route.experiment,
        "arm": route.arm,
    }
    if explanation is None:
        return ExplainResponse(
            **common, churn_probability=None, method=None, base_value=None, contributions=[],
            message=f"user {user_id!r} has no features in the online store (not materialized yet): nothing to explain",
        )  # fmt: skip
    contributions = [
        Contribution(feature=name, value=_plain(vector.values.get(name)), contribution=value)
        for name, value in explanation.contributions
    ]
    return ExplainResponse(
        **common, churn_probability=explanation.probability, method=explanation.method,
        base_value=explanation.base_value, contributions=contributions, message=None,
    )  # fmt: skip
