"""The floor under our service: stock BentoML 1.4 with one API that returns a constant, no fixes applied.

`bench/serving.py` serves it with `bentoml serve bare_service:BareService` in this folder, with the same worker
count as the prediction service (BARE_SERVICE_WORKERS), and sends it the same requests as our `/predict`: the gap
between the two is what reading features, predicting and logging cost on top of BentoML itself.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml

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


@bentoml.service(name="bare", workers=int(os.environ.get("BARE_SERVICE_WORKERS", "1")))
class BareService:
    """One `/predict` route with the same input as ours (a user id), answering a constant dict."""

    @bentoml.api(route="/predict")  # type: ignore[untyped-decorator]
    async def predict(self, user_id: str) -> dict[str, Any]:
        return ANSWER
