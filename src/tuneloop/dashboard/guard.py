"""Who may open the dashboard: an ASGI middleware in front of every route (mounted apps included).

- A client whose address is in the trusted networks (loopback by default) may use it without a token,
  as long as the ``Host`` header names this machine (a web page in the user's browser that rebinds
  its DNS name to 127.0.0.1 sends its own host name, so it is refused).
- Anyone else needs the token: ``Authorization: Bearer TOKEN``, the ``tuneloop_ui`` cookie, or
  ``?token=TOKEN`` once (which sets the cookie, so links from the printed address work). A stored
  serving key with the ``admin`` scope (``tuneloop keys add NAME --scope admin``) works as a token
  too, through the serve key ring. Without it, every route answers 401.
- A POST whose ``Origin`` is another site is refused (403): a page elsewhere cannot submit the
  dashboard's forms, e.g. the promote button, from the user's browser.

``scope["state"]["actor"]`` tells the routes who acted (for the audit log): the stored key's name,
``ui:token`` or ``ui:local``.
"""

from __future__ import annotations

import ipaddress
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from tuneloop.serve.auth import KeyRing, bearer_token

COOKIE = "tuneloop_ui"
LOOPBACK = ("127.0.0.0/8", "::1/128")
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _networks(cidrs) -> list:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _in(address: str | None, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def _headers(scope) -> dict[str, bytes]:
    return {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}


def _token_of(scope, headers) -> tuple[str | None, bool]:
    """(the token a request carries, whether it came in the query string)."""
    token = bearer_token(headers)
    if token:
        return token, False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", b"").decode("latin-1"))
    except Exception:  # a malformed cookie header is the same as none
        return None, False
    return (cookie[COOKIE].value if COOKIE in cookie else None), False


class DashboardGuard:
    def __init__(self, app, token: str, trusted_networks=LOOPBACK, key_engine=None):
        self.app = app
        self.keys = KeyRing(token, key_engine)  # the UI token is the ring's master key (all scopes)
        self.trusted = _networks(trusted_networks)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        client = (scope.get("client") or (None, None))[0]
        token, from_query = _token_of(scope, headers)
        principal = await self.keys.identify(token) if token else None
        if principal is not None and principal.name != "api-key" and "admin" not in principal.scopes:
            principal = None  # an infer- or feedback-only key cannot run the dashboard
        if principal is not None:
            actor = "ui:token" if principal.name == "api-key" else principal.name
        elif _in(client, self.trusted) and _local_host(headers):
            actor = "ui:local"
        else:
            return await _plain(send, 401, "401: the dashboard needs its token from this address "
                                           "(the token `tuneloop ui` printed: ?token=... or Authorization: Bearer)")
        if scope["method"] not in ("GET", "HEAD") and not _same_origin(headers):
            return await _plain(send, 403, "403: a form from another site may not post to the dashboard")
        scope.setdefault("state", {})["actor"] = actor
        if from_query:
            send = _setting_cookie(send, token)
        return await self.app(scope, receive, send)


def _local_host(headers) -> bool:
    host = headers.get("host", b"").decode("latin-1").strip().lower()
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name in _LOCAL_HOSTS or _in(name, _networks(LOOPBACK))


def _same_origin(headers) -> bool:
    origin = headers.get("origin")
    if origin is None:
        return True  # not sent by a browser's cross-site form or fetch
    return urlsplit(origin.decode("latin-1")).netloc.lower() == headers.get("host", b"").decode("latin-1").lower()


def _setting_cookie(send, token: str):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
        await send(message)

    return wrapped


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
