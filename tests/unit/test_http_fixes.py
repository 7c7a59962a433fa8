"""The fixes to BentoML's HTTP layer: the per-request timer is cancelled, error bodies match the document."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from churn_platform.serving.http_fixes import ApiContractMiddleware, cancel_request_timers, error_message


async def _call(middleware: Any, path: str = "/predict") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware({"type": "http", "path": path, "headers": []}, receive, send)
    return sent


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_the_timeout_middleware_cancels_its_timer_when_the_request_completes() -> None:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    cancel_request_timers()

    async def scenario() -> int:
        middleware = TimeoutMiddleware(_ok, timeout=60)
        for _ in range(100):
            await _call(middleware)
        loop = asyncio.get_running_loop()
        return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == 0  # unpatched, 100 live timers would wait out their 60 s


def test_a_request_that_overruns_still_gets_a_504() -> None:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    cancel_request_timers()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(5)

    sent = asyncio.run(_call(TimeoutMiddleware(slow, timeout=0.05)))
    assert sent[0]["status"] == 504


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"error": "2 validation errors", "detail": [
                {"loc": ["user_ids"], "msg": "List should have at least 1 item"},
                {"loc": ["extra"], "msg": "Extra inputs are not permitted"},
            ]},
            "user_ids: List should have at least 1 item; extra: Extra inputs are not permitted",
        ),
        ([{"error": "unknown user 'x'"}], "unknown user 'x'"),  # BentoML's one-element list
        ({"error": "json", "detail": [{"loc": [], "msg": "Invalid JSON"}]}, "body: Invalid JSON"),
    ],
)  # fmt: skip
def test_error_bodies_become_strings_that_name_the_field(body: Any, expected: str) -> None:
    fixed = error_message(body)
    assert fixed is not None and expected in fixed["error"]
    assert all(isinstance(value, str) for value in fixed.values())


def test_a_4xx_body_is_rewritten_and_other_media_types_get_415() -> None:
    async def invalid(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps({"error": "x", "detail": [{"loc": ["user_id"], "msg": "Field required"}]}).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-length", b"99")]})
        await send({"type": "http.response.body", "body": body})

    sent = asyncio.run(_call(ApiContractMiddleware(invalid, routes=("/predict",))))
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"] == "invalid request: user_id: Field required"
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()

    async def form(middleware: Any) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/predict", "headers": [(b"content-type", b"multipart/form-data")]}
        await middleware(scope, None, send)
        return sent

    assert asyncio.run(form(ApiContractMiddleware(_ok, routes=("/predict",))))[0]["status"] == 415
    assert asyncio.run(_call(ApiContractMiddleware(_ok, routes=("/predict",)), path="/livez"))[0]["status"] == 200
