# SPDX-License-Identifier: Apache-2.0
"""OpenAI-style errors and the two outer ASGI middlewares (body-size limit, request metrics).

Both middlewares are pure ASGI (not BaseHTTPMiddleware), so streamed responses pass through
untouched and a client disconnect still reaches the endpoint.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

from .metrics import Metrics


class APIError(Exception):
    """A request the server refuses: becomes `{"error": {...}}` with `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param


def error_payload(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_json(status: int, message: str, type_: str, code: str | None, param: str | None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_payload(message, type_, code, param), status_code=status, headers=headers)


async def _send_error(send, status: int, message: str, type_: str, code: str | None) -> None:
    body = json.dumps(error_payload(message, type_, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Reads the whole body first (at most `max_bytes`), answering 413 past it, then replays it.

    Buffering up front means the limit holds whether or not the client sent Content-Length, and
    the app never sees a body it would have to abandon half-read.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"the request body exceeds {self.max_bytes} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_error(send, 400, "invalid Content-Length", "invalid_request_error", None)
                if declared > self.max_bytes:
                    return await _send_error(send, 413, too_big, "invalid_request_error", "body_too_large")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_error(send, 413, too_big, "invalid_request_error", "body_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes away

        return await self.app(scope, replay, send)


class MetricsMiddleware:
    """Counts requests by route and status (unknown paths share one label: no cardinality blow-up)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
