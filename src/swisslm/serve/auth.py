# SPDX-License-Identifier: Apache-2.0
"""API-key check, as pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams).

The key arrives as `Authorization: Bearer KEY` (what the openai and huggingface_hub clients
send) or `X-API-Key: KEY`. Both sides are hashed before `hmac.compare_digest`, so the comparison
takes the same time whatever the key's length or the position of the first wrong byte.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable

from .errors import error_payload

# Liveness probes run without credentials (vLLM and llama.cpp exempt /health too).
PUBLIC_PATHS = frozenset({"/health"})


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def key_matches(provided: str | bytes | None, expected: str) -> bool:
    """Constant-time comparison of a presented key with the server's key."""
    if provided is None:
        return False
    if isinstance(provided, str):
        provided = provided.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(_digest(provided), _digest(expected.encode("utf-8")))


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        name = name.lower()
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name == b"x-api-key":
            return value.strip()
    return None


class APIKeyMiddleware:
    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        if key_matches(presented_key(scope["headers"]), self.api_key):
            return await self.app(scope, receive, send)
        body = json.dumps(error_payload("invalid or missing API key (send 'Authorization: Bearer KEY')",
                                        "authentication_error", "invalid_api_key")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
