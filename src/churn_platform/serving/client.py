"""A client of the prediction service's HTTP API, as any caller of the service would use it (standard library only):
`/predict_batch` in chunks of at most the service's batch limit, on loopback without a proxy."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class ServiceError(RuntimeError):
    """The service answered with an error, or did not answer."""


@dataclass
class BatchAnswers:
    """What the service answered to every chunk of one batch of users."""

    request_ids: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def count_by(self, key: str) -> dict[str, int]:
        """How many answers carry each value of `key` (e.g. `status`, `arm`, `model_version`)."""
        counts: dict[str, int] = {}
        for result in self.results:
            value = str(result.get(key))
            counts[value] = counts.get(value, 0) + 1
        return dict(sorted(counts.items()))


class ServiceClient:
    def __init__(self, base_url: str, *, max_batch: int = 10_000, timeout_s: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def predict_batch(self, user_ids: Sequence[str]) -> BatchAnswers:
        """Every user's prediction, a `/predict_batch` request per `max_batch` users."""
        answers = BatchAnswers()
        for first in range(0, len(user_ids), self.max_batch):
            body = self._post("/predict_batch", {"user_ids": list(user_ids[first : first + self.max_batch])})
            answers.request_ids.append(str(body["request_id"]))
            answers.results.extend(body["results"])
        return answers

    def _post(self, route: str, payload: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + route, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ServiceError(f"POST {self.base_url}{route} answered {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceError(f"the prediction service at {self.base_url} did not answer: {exc}") from exc
