"""API keys, scopes, rate limits and body size, checked before a request reaches a route.

:class:`GuardMiddleware` is plain ASGI (it runs before FastAPI parses anything): a missing or wrong
bearer token on ``/v1/*`` is a 401, a key without the route's scope a 403, a key over its rate limit
a 429 with ``Retry-After``, and a body over ``max_body_bytes`` a 413, whether the client announced its
length or streams it in chunks. :class:`ConcurrencyLimiter` turns requests away with
429 once ``max_concurrency`` generations are in flight, instead of queueing without bound.
"""

from __future__ import annotations

import json
import math

from starlette.exceptions import HTTPException

from tuneloop.serve.auth import KeyRing, bearer_token, required_scope
from tuneloop.serve.errors import error_body
from tuneloop.serve.ratelimit import RateLimiter


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` (an HTTPException, so FastAPI's body parsing does not turn it into a 400)."""

    code = "body_too_large"

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the server's limit of {limit} bytes")


class GuardMiddleware:
    """Checks, in order: API key (401), scope (403), rate limit (429), declared body size (413).

    Every refusal is answered at once, before the body is read. The connection is not closed: uvicorn
    reads and drops the rest of an upload after a complete response, so the client can finish sending
    and then read the error (closing with unread data would make the kernel send a reset, and a client
    still uploading could see "connection reset" instead of the 413).
    """

    def __init__(self, app, keys: KeyRing, max_body_bytes: int, rate_limiter: RateLimiter | None = None):
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.rate_limiter = rate_limiter or RateLimiter()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        refusal = await self._check(scope, headers)
        if refusal is not None:
            status, body, extra = refusal
            return await _send_json(send, status, body, extra)
        await self.app(scope, self._limited(receive), send)

    async def _check(self, scope, headers: dict):
        needed = required_scope(scope["method"], scope["path"])
        if needed is not None:
            principal = await self.keys.identify(bearer_token(headers))
            if principal is None:
                return 401, error_body(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                       code="invalid_api_key"), {"www-authenticate": "Bearer"}
            if needed not in principal.scopes:
                return 403, error_body(403, f"the key {principal.name!r} lacks the scope {needed!r} this endpoint "
                                            f"needs (it has: {', '.join(sorted(principal.scopes))})",
                                       code="missing_scope"), None
            scope.setdefault("state", {})["principal"] = principal
            bucket = principal.name if principal.name != "anonymous" else f"anonymous@{_client_host(scope)}"
            wait = self.rate_limiter.check(bucket, principal.rate_limit_per_minute)
            if wait > 0:
                return 429, error_body(429, f"rate limit of {principal.rate_limit_per_minute or self.rate_limiter.default_per_minute} "
                                            f"requests per minute reached for {principal.name!r}; retry in {wait:.1f} s",
                                       code="rate_limit_exceeded"), retry_after_headers(wait)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return 413, error_body(413, f"request body is larger than the server's limit of {self.max_body_bytes} bytes",
                                   code="body_too_large"), None
        return None

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


def retry_after_headers(seconds: float) -> dict:
    """Retry-After in whole seconds (the standard) and in ms (which the openai client reads first)."""
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


def _client_host(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


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
