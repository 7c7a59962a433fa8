"""The glue a user would write without the platform: Feast's feature server, then MLflow's model server.

For each `POST /predict {"user_id": ...}` it asks `feast serve` for the user's features of the feature service
(`/get-online-features`), sends them to `mlflow models serve` as a one-row `dataframe_split` (`/invocations`), and
answers the churn probability. `bench/serving.py` runs it under uvicorn with one worker, given the two servers'
URLs and the feature service in PEER_FEATURES_URL, PEER_MODEL_URL and PEER_FEATURE_SERVICE.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ENTITY = "user_id"


class Gateway:
    """One shared HTTP client to both servers, opened and closed with the app."""

    def __init__(self, features_url: str, model_url: str, feature_service: str) -> None:
        self.features_url = features_url
        self.model_url = model_url
        self.feature_service = feature_service
        self.client = httpx.AsyncClient(trust_env=False, timeout=30)

    async def features(self, user_id: str) -> tuple[list[str], list[Any]]:
        """The feature service's feature names and this user's values, without the entity column."""
        response = await self.client.post(
            f"{self.features_url}/get-online-features",
            json={"feature_service": self.feature_service, "entities": {ENTITY: [user_id]}},
        )
        response.raise_for_status()
        body = response.json()
        names = body["metadata"]["feature_names"]
        values = [result["values"][0] for result in body["results"]]
        kept = [(name, value) for name, value in zip(names, values, strict=True) if name != ENTITY]
        return [name for name, _ in kept], [value for _, value in kept]

    async def churn_probability(self, names: list[str], values: list[Any]) -> float:
        response = await self.client.post(
            f"{self.model_url}/invocations", json={"dataframe_split": {"columns": names, "data": [values]}}
        )
        response.raise_for_status()
        return float(response.json()["predictions"][0][1])  # the model answers [P(stays), P(churns)]

    async def predict(self, request: Request) -> JSONResponse:
        user_id = str((await request.json())[ENTITY])
        names, values = await self.features(user_id)
        return JSONResponse({"user_id": user_id, "churn_probability": await self.churn_probability(names, values)})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app() -> Starlette:
    """The app, configured from the environment when uvicorn calls it (`--factory`)."""
    gateway = Gateway(os.environ["PEER_FEATURES_URL"], os.environ["PEER_MODEL_URL"], os.environ["PEER_FEATURE_SERVICE"])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gateway.client.aclose()

    routes = [Route("/predict", gateway.predict, methods=["POST"]), Route("/health", health)]
    return Starlette(routes=routes, lifespan=lifespan)
