"""What every HTTP request passes before any route runs: the API-key check and the
request-body size limit.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, which would hide client
disconnects from the routes (and so keep a gone client's request running).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from radixlm.runtime.entrypoints.http_errors import error_body

MAX_BODY_BYTES = 32 * 1024 * 1024
OPEN_PATHS = {"/health"}  # answered without the API key: load balancers probe it
# pages a browser opens by address, which cannot carry a header: they take `?api_key=` too
QUERY_KEY_PATHS = {"/cache"}


class GuardMiddleware:
    """API-key check and request-size limit. Bodies without a Content-Length (chunked
    uploads) are read up to the limit first, then replayed to the app."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and scope.get("path") not in OPEN_PATHS and not self._authorized(scope, headers):
            body = error_body(401, "missing or invalid API key", "authentication_error")
            return await _send_json(send, 401, body)
        length = headers.get("content-length")
        if length is not None:
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                return await _send_too_large(send)
            return await self.app(scope, receive, send)
        buffered, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                buffered.append(message)
                break
            total += len(message.get("body", b""))
            if total > MAX_BODY_BYTES:
                return await _send_too_large(send)
            buffered.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> dict:
            return buffered.pop(0) if buffered else await receive()

        return await self.app(scope, replay, send)

    def _authorized(self, scope: dict, headers: dict[str, str]) -> bool:
        expected = f"Bearer {self.api_key}".encode()
        if hmac.compare_digest(headers.get("authorization", "").encode(), expected):
            return True
        if scope.get("path") in QUERY_KEY_PATHS and scope.get("method") == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = query.get("api_key", [""])[-1].encode()
            return hmac.compare_digest(given, self.api_key.encode())
        return False


def redact_query_key(target: str) -> str:
    """`target` (a path with its query) with the value of every `api_key` parameter replaced."""
    if "?" not in target:
        return target
    path, query = target.split("?", 1)
    parts = []
    for part in query.split("&"):
        name = part.split("=", 1)[0]
        parts.append(f"{name}=***" if unquote_plus(name) == "api_key" else part)
    return f"{path}?{'&'.join(parts)}"


class RedactQueryKey(logging.Filter):
    """For uvicorn's access log: a request line that carried the key in its query (the pages in
    QUERY_KEY_PATHS take it there) is logged without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query_key(a) if isinstance(a, str) else a for a in record.args)
        return True


async def _send_too_large(send: Callable) -> None:
    await _send_json(send, 413, error_body(413, f"request body over {MAX_BODY_BYTES} bytes"))


async def _send_json(send: Callable, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
