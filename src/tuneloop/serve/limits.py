"""API keys and request limits, checked before a request reaches a route.

:class:`GuardMiddleware` is plain ASGI (it runs before FastAPI parses anything): a missing or wrong
bearer token on ``/v1/*`` is a 401, and a body over ``max_body_bytes`` is a 413, whether the client
announced its length or streams it in chunks. :class:`ConcurrencyLimiter` turns requests away with
429 once ``max_concurrency`` generations are in flight, instead of queueing without bound.
"""

from __future__ import annotations

import hmac
import json

from starlette.exceptions import HTTPException

from tuneloop.serve.errors import error_body


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the server's limit of {limit} bytes")


class GuardMiddleware:
    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"].startswith("/v1") and not self._authorized(headers):
            return await _send_json(send, 401, error_body(
                401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key"), {"www-authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _send_json(send, 413, error_body(
                413, f"request body is larger than the server's limit of {self.max_body_bytes} bytes",
                code="body_too_large"))
        await self.app(scope, self._limited(receive), send)

    def _authorized(self, headers: dict) -> bool:
        scheme, _, token = headers.get("authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key)

    def _limited(self, receive):
        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return receive_limited


async def _send_json(send, status: int, body: dict, extra_headers: dict | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class ConcurrencyLimiter:
    """Counts generations in flight; used only from the event loop thread, so no lock is needed."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1
