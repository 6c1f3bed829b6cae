"""Who may call what: the bearer token of a request -> a :class:`Principal`, and the scope a path needs.

Keys come from the store (``tuneloop keys add``) and from ``--api-key`` / ``TUNELOOP_API_KEY`` (one key
with every scope, named ``api-key``). With neither, the server is open (every caller is ``anonymous``
with every scope), as before. Stored keys are re-read at most every ``refresh_s`` seconds, so a revoked
key stops working within that time without a restart.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from sqlalchemy.engine import Engine

from tuneloop.serve.access import SCOPES, Principal, active_principals, hash_key

ANONYMOUS = Principal("anonymous", frozenset(SCOPES))

# Path prefixes of /v1 routes that need a scope other than "infer" (first match wins).
SCOPE_OF_PREFIX = (("/v1/feedback", "feedback"), ("/v1/admin", "admin"), ("/v1/registry", "admin"))


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs; None for the open routes (/health, /metrics, /openapi.json)."""
    if not (path == "/v1" or path.startswith("/v1/")):
        return None
    for prefix, scope in SCOPE_OF_PREFIX:
        if path == prefix or path.startswith(prefix + "/"):
            return scope
    return "infer"


def bearer_token(headers: dict) -> str | None:
    scheme, _, token = headers.get("authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class KeyRing:
    def __init__(self, master_key: str | None = None, engine: Engine | None = None, refresh_s: float = 2.0):
        self.master = master_key.encode() if master_key else None
        self.engine = engine
        self.refresh_s = refresh_s
        self._stored: dict[str, Principal] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        if self.engine is None or time.monotonic() - self._loaded_at < self.refresh_s:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at >= self.refresh_s:
                self._stored = await asyncio.to_thread(active_principals, self.engine)
                self._loaded_at = time.monotonic()

    async def auth_required(self) -> bool:
        await self._refresh()
        return self.master is not None or bool(self._stored)

    async def identify(self, token: str | None) -> Principal | None:
        """The principal a token belongs to; ANONYMOUS when the server has no keys; None: not a key."""
        if not await self.auth_required():
            return ANONYMOUS
        if token is None:
            return None
        if self.master is not None and hmac.compare_digest(token.encode(), self.master):
            return Principal("api-key", frozenset(SCOPES))
        return self._stored.get(hash_key(token))  # a dict lookup by hash: no timing leak of the key
