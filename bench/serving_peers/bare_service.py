"""The floor under our service: BentoML 1.4 with one API that returns a constant, no fixes applied.

The bench runs it twice: stock (BARE_SERVICE_STOCK=1: BentoML's default access log and tracing, its own JSON
encoding of the returned dict, the floor a user would start from) and with the prediction service's BentoML
choices: its access-log and tracing options (`observability_options`), its request models (`schemas`) and its
answer encoded once by orjson (`schemas.json_response`). Against the second, ours differs only in what the
prediction service does per request.

`bench/serving.py` serves it with `bentoml serve bare_service:BareService` in this folder, with the same worker
count as the prediction service (BARE_SERVICE_WORKERS), and sends it the same requests as our `/predict` and
`/predict_batch`: the gap between the two is what reading features, predicting and logging cost on top of BentoML
itself.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml

from churn_platform.serving import schemas
from churn_platform.serving.service_config import observability_options
from churn_platform.settings import get_settings

ANSWER: dict[str, Any] = {
    "user_id": "constant",
    "status": "ok",
    "churn_probability": 0.1234,
    "risk_band": "medium",
    "model_version": "1",
    "model_alias": "champion",
    "experiment": None,
    "arm": "champion",
}


STOCK = os.environ.get("BARE_SERVICE_STOCK") == "1"


@bentoml.service(name="bare", workers=int(os.environ.get("BARE_SERVICE_WORKERS", "1")))
class StockBareService:
    """`/predict` and `/predict_batch` with the same inputs as ours, answering constants, all BentoML defaults."""

    @bentoml.api(route="/predict")  # type: ignore[untyped-decorator]
    async def predict(self, user_id: str) -> dict[str, Any]:
        return ANSWER

    @bentoml.api(route="/predict_batch")  # type: ignore[untyped-decorator]
    async def predict_batch(self, user_ids: list[str], include_features: bool = False) -> dict[str, Any]:
        """The constant answer once per user id, in the shape of ours (what BentoML alone costs per batch)."""
        return {"request_id": "constant", "count": len(user_ids), "results": [ANSWER] * len(user_ids)}


PredictBatchRequest = schemas.batch_request_model(get_settings().serve_max_batch)


@bentoml.service(
    name="bare", workers=int(os.environ.get("BARE_SERVICE_WORKERS", "1")), **observability_options(get_settings())
)
class SameSettingsBareService:
    """The same constants, through the prediction service's request models and orjson-encoded answers."""

    @bentoml.api(route="/predict", input_spec=schemas.PredictRequest)  # type: ignore[untyped-decorator]
    async def predict(self, user_id: str) -> Any:
        return schemas.json_response(ANSWER)

    @bentoml.api(route="/predict_batch", input_spec=PredictBatchRequest)  # type: ignore[untyped-decorator]
    async def predict_batch(self, user_ids: list[str], include_features: bool = False) -> Any:
        body = {"request_id": "constant", "count": len(user_ids), "results": [ANSWER] * len(user_ids)}
        return schemas.json_response(body)


BareService = StockBareService if STOCK else SameSettingsBareService
