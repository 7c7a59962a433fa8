"""The churn prediction service: BentoML's HTTP front door over the platform's serving library.

Routing, model loading and hot swaps, feature reads and the prediction log are library calls
(`churn_platform.serving`); this file only maps them to HTTP. Start it with `churn up` (or
`bentoml serve service:ChurnService` in this folder with the platform's environment set).
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import bentoml
from starlette.responses import JSONResponse
from threadpoolctl import threadpool_limits

from churn_platform import stack
from churn_platform.serving import schemas
from churn_platform.serving.http_fixes import ApiContractMiddleware, cancel_request_timers, require_request_bodies
from churn_platform.serving.metrics import prometheus_text
from churn_platform.serving.predictor import ChurnPredictor, UnknownUserError
from churn_platform.serving.routing import ServiceUnavailableError
from churn_platform.serving.service_config import PREDICTION_ROUTES, REGISTRY_CLIENT_ENVIRONMENT, service_options
from churn_platform.settings import get_settings

log = logging.getLogger("churn_platform.service")
settings = get_settings()
for _name, _value in REGISTRY_CLIENT_ENVIRONMENT.items():  # short registry polls during an outage
    os.environ.setdefault(_name, _value)
cancel_request_timers()  # BentoML 1.4's per-request timer leak: see churn_platform.serving.http_fixes
require_request_bodies()  # and its OpenAPI document's optional request bodies
# One request scores one user (or a batch) on one core: OpenMP threads in scikit-learn's predict only add
# hand-offs (one row through a 300-tree model: p50 / p99 1.7 / 9.9 ms on one thread, 2.2 / 12.9 ms with the pool).
threadpool_limits(limits=1)
PredictBatchRequest = schemas.batch_request_model(settings.serve_max_batch)


@bentoml.service(**service_options(settings))
class ChurnService:
    """Churn predictions by user id, with sticky A/B routing between the registry's champion and a variant."""

    def __init__(self) -> None:
        # `churn up` starts the service with every URL configured: this resolves them once, starting nothing.
        self.predictor = ChurnPredictor(settings, stack.connect(settings, redis=True, mlflow=True))
        self.predictor.start()
        self._not_ready_reason: str | None = None

    @bentoml.on_startup
    def freeze_startup_heap(self) -> None:
        # Models and libraries loaded at start never die: moving them out of the collector's generations keeps
        # full collections short under load (with the timer fix above).
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    def close(self) -> None:
        self.predictor.close()

    def __is_ready__(self) -> bool:
        ready, reason = self.predictor.ready()
        if not ready and reason != self._not_ready_reason:
            log.warning("not ready: %s", reason)
        self._not_ready_reason = None if ready else reason
        return ready

    def __metrics__(self, content: str) -> str:
        """BentoML's metrics, then the models served, the registry's reachability and the prediction log's rows."""
        return content + prometheus_text(self.predictor)

    @bentoml.api(route="/predict", input_spec=schemas.PredictRequest, output_spec=schemas.PredictResponse)
    async def predict(self, user_id: str) -> Any:
        """Churn probability, risk band and the features used for one user; which model and arm answered."""
        try:
            prediction = (await self.predictor.predict_async([user_id], endpoint="predict", unknown_is_error=True))[0]
        except UnknownUserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except ServiceUnavailableError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return schemas.json_response(schemas.prediction_body(prediction))

    @bentoml.api(route="/predict_batch", input_spec=PredictBatchRequest, output_spec=schemas.PredictBatchResponse)
    async def predict_batch(self, user_ids: list[str], include_features: bool = False) -> Any:
        """One result per user (an unknown user is a result with status `unknown_user`, not an error)."""
        try:
            result = await self.predictor.predict_batch_async(user_ids, endpoint="predict_batch")
        except ServiceUnavailableError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return schemas.json_response(schemas.batch_body(result, with_features=include_features))

    @bentoml.api(route="/explain", input_spec=schemas.ExplainRequest, output_spec=schemas.ExplainResponse)
    def explain(self, user_id: str) -> Any:
        """Each feature's contribution to this user's score (log-odds), largest first, and the method used."""
        try:
            route, vector, explanation = self.predictor.explain(user_id)
        except UnknownUserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except ServiceUnavailableError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return schemas.explain_body(user_id, route, vector, explanation)


# @bentoml.service turned the class into a bentoml Service, which takes ASGI middleware.
ChurnService.add_asgi_middleware(ApiContractMiddleware, routes=PREDICTION_ROUTES)  # type: ignore[attr-defined]
