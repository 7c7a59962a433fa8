"""Two fixes to BentoML 1.4's HTTP layer, applied by the prediction service at start.

1. `TimeoutMiddleware` schedules a `loop.call_later` timer per request and never cancels it. With the default
   60 s timeout every finished request keeps its timer, a copy of its context and through it its tracing span
   alive for a minute; under sustained load the full garbage collections that walk them pause the worker for
   100-900 ms. `cancel_request_timers` replaces the middleware's `__call__` with one that cancels the timer when
   the request completes (a request that overruns still gets BentoML's 504). Together with `gc.freeze()` after
   start-up (the loaded models and libraries then leave the collector's generations) the pauses go. Same bug in
   later `traffic.py` versions: remove this once BentoML cancels its timer.
2. The HTTP contract of BentoML's API routes against its own OpenAPI document: validation errors carry `detail`
   as a list where the document says a string, a 4xx `BentoMLException` body is a one-element list, a body in
   another media type than the documented JSON reaches a parser that fails with a 500 (multipart without a
   boundary), and the document does not mark request bodies as required although every route needs one.
   `ApiContractMiddleware` rewrites 4xx bodies into `{"error": "<field>: <problem>; ...", "detail": "..."}` and
   answers 415 to other media types; `require_request_bodies` marks the bodies required.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PATCHED = "_churn_platform_patched"


def cancel_request_timers() -> None:
    """Make BentoML's TimeoutMiddleware cancel its per-request timer (idempotent)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.responses import JSONResponse

    if getattr(TimeoutMiddleware, _PATCHED, False):
        return

    async def __call__(self: Any, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: N807
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if task.cancel():
                response = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
                )
                await response(scope, receive, send)
        else:
            await task
        finally:
            timer.cancel()  # the fix: without it the timer, and what it references, lives for `timeout` seconds

    TimeoutMiddleware.__call__ = __call__  # type: ignore[method-assign]
    setattr(TimeoutMiddleware, _PATCHED, True)


def error_message(body: Any) -> dict[str, str] | None:
    """BentoML's 4xx body as `{"error", "detail"}` strings naming each invalid field; None if already so."""
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        body = body[0]  # BentoML wraps a 4xx exception's body in a one-element list
    if not isinstance(body, dict):
        return None
    detail = body.get("detail")
    if isinstance(detail, list):
        problems = []
        for item in detail:
            if not isinstance(item, dict):
                continue
            where = ".".join(str(part) for part in item.get("loc", ())) or "body"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        text = "; ".join(problems) or str(body.get("error", "invalid request"))
        return {"error": f"invalid request: {text}", "detail": text}
    error = body.get("error")
    if isinstance(error, str) and (detail is None or isinstance(detail, str)):
        return {"error": error} if detail is None else {"error": error, "detail": detail}
    return None


def require_request_bodies() -> None:
    """Mark every API's request body as required in the OpenAPI document (idempotent)."""
    from _bentoml_sdk.method import APIMethod

    if getattr(APIMethod, _PATCHED, False):
        return
    document = APIMethod.openapi_request

    def openapi_request(self: Any) -> dict[str, Any]:
        return {**document(self), "required": True}

    APIMethod.openapi_request = openapi_request  # type: ignore[method-assign]
    setattr(APIMethod, _PATCHED, True)


def is_json(scope: Scope) -> bool:
    """No Content-Type (BentoML reads JSON then) or application/json with any parameters."""
    for name, value in scope.get("headers", ()):
        if bytes(name).lower() == b"content-type":
            return bytes(value).split(b";", 1)[0].strip().lower() == b"application/json"
    return True


class ApiContractMiddleware:
    """Keeps the given API routes to their OpenAPI document: JSON bodies only, documented 4xx bodies."""

    def __init__(self, app: ASGIApp, routes: tuple[str, ...]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        if not is_json(scope):
            body = json.dumps({"error": "unsupported Content-Type: send the body as application/json"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 415, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                start = message
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                await send_rewritten(start, b"".join(chunks))

        async def send_rewritten(begin: Message, body: bytes) -> None:
            try:
                fixed = error_message(json.loads(body))
            except ValueError:
                fixed = None
            if fixed is not None:
                body = json.dumps(fixed).encode()
                headers = [(k, v) for k, v in begin.get("headers", []) if k.lower() != b"content-length"]
                begin = {**begin, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            await send(begin)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)
