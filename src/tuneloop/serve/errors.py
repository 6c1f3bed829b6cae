"""OpenAI-shaped errors: every failure is ``{"error": {"message", "type", "param", "code"}}``.

Bad input is always a 4xx: FastAPI's own validation errors (422 by default) are turned into 400 with
the offending field in ``param``, Starlette's 404/405 get the same shape, and anything unexpected is
a JSON 500 (an internal error, never the user's input).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tuneloop.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error",
          413: "invalid_request_error", 429: "rate_limit_error", 504: "timeout_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict:
    error = APIError(status, message, param, code, type)
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """(message, param, code) for the first problem pydantic found in a request body."""
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"request body is not valid JSON ({detail}): send a JSON object", None, "invalid_json"
    param = ".".join(location) or None
    if param is None:
        return ("request body must be a JSON object, sent with Content-Type: application/json",
                None, "invalid_body")
    if first.get("type") == "missing":
        return f"missing required field '{param}'", param, "missing_field"
    return f"'{param}': {first.get('msg', 'invalid value')}", param, "invalid_value"


def install_error_handlers(app: FastAPI, on_validation_error=None) -> None:
    """``on_validation_error(request, exc, status, message)`` lets the app record rejected requests."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param, code = describe_validation_error(exc)
        if on_validation_error is not None:
            await on_validation_error(request, exc, 400, message)
        return error_response(400, message, param, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(exc.status_code, message, code=getattr(exc, "code", None),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal server error: {type(exc).__name__}", code="internal_error")
