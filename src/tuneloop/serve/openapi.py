"""The OpenAPI spec served at ``/openapi.json``, saying what the server really answers.

FastAPI derives request bodies from the pydantic models but knows nothing of the responses: routes
return plain dicts, errors are turned into 400 (not FastAPI's 422) by ``errors.py``, and the guard
middleware answers 401/403/413/429 before a route runs. :func:`install_openapi` adds those: each
route's 200 schema (JSON, or server-sent events when streaming), every error status it can give with
OpenAI's error body, and the bearer-key security scheme. ``tests/test_serve_schema.py`` checks every
response against this spec with Schemathesis.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}

USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
         "properties": {k: {"type": "integer", "minimum": 0} for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}
FINISH = {"type": ["string", "null"], "enum": ["stop", "length", None]}
MODEL = {"type": "object", "required": ["id", "object", "created", "owned_by"],
         "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                        "owned_by": {"type": "string"}}}
CHAT = {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"], "properties": {
    "id": {"type": "string", "pattern": "^chatcmpl-"}, "object": {"const": "chat.completion"},
    "created": {"type": "integer"}, "model": {"type": "string"}, "usage": USAGE,
    "choices": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["index", "message", "finish_reason"],
        "properties": {"index": {"type": "integer"}, "finish_reason": FINISH, "message": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}}}}}}}
COMPLETION = {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"], "properties": {
    "id": {"type": "string", "pattern": "^cmpl-"}, "object": {"const": "text_completion"},
    "created": {"type": "integer"}, "model": {"type": "string"}, "usage": USAGE,
    "choices": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["index", "text", "finish_reason"],
        "properties": {"index": {"type": "integer"}, "text": {"type": "string"}, "finish_reason": FINISH}}}}}
# rating is the thumbs the feedback amounts to (FeedbackRequest.thumbs): null for a 3 of 5 or a bare choice.
FEEDBACK = {"type": "object", "required": ["object", "completion_id", "model", "rating", "score", "choice", "stored"],
            "properties": {
    "object": {"const": "feedback"}, "completion_id": {"type": "string"}, "model": {"type": ["string", "null"]},
    "rating": {"enum": [-1, 1, None]}, "score": {"type": ["integer", "null"], "minimum": 1, "maximum": 5},
    "choice": {"type": ["integer", "null"], "minimum": 0, "maximum": 1}, "stored": {"const": True},
    "replayed": {"type": "boolean", "description": "true: an earlier request with this Idempotency-Key stored it"}}}
LABEL_SCORE = {"type": "object", "required": ["label", "score"],
               "properties": {"label": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1}}}
CLASSIFY = {"type": "object", "required": ["object", "model", "data", "usage"], "properties": {
    "object": {"const": "list"}, "model": {"type": "string"},
    "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
              "properties": {k: {"type": "integer", "minimum": 0} for k in ("prompt_tokens", "total_tokens")}},
    "data": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["index", "label", "score", "top", "truncated"],
        "properties": {"index": {"type": "integer", "minimum": 0}, "label": {"type": "string"},
                       "score": {"type": "number", "minimum": 0, "maximum": 1},
                       "truncated": {"type": "boolean", "description": "the text was cut to the training max length"},
                       "top": {"type": "array", "minItems": 1, "items": LABEL_SCORE}}}}}}
EVENTS = {"type": "string", "description": "server-sent events: `data: {chunk}` lines, then `data: [DONE]`"}

# path -> (200 JSON schema, streams?, error statuses it can answer)
ROUTES = {
    "/v1/models": (({"type": "object", "required": ["object", "data"],
                     "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL}}}),
                   False, (401, 403, 429)),
    "/v1/models/{model_id}": (MODEL, False, (400, 401, 403, 404, 429)),
    "/v1/chat/completions": (CHAT, True, (400, 401, 403, 404, 413, 429, 504)),
    "/v1/completions": (COMPLETION, True, (400, 401, 403, 404, 413, 429, 504)),
    "/v1/classify": (CLASSIFY, False, (400, 401, 403, 404, 413, 429, 504)),
    "/v1/feedback": (FEEDBACK, False, (400, 401, 403, 404, 409, 413, 429)),
    "/metrics": ({"type": "string"}, False, ()),
    "/health": ({"type": "object", "required": ["status", "models", "in_flight"]}, False, ()),
}
REASONS = {400: "Invalid request (the field is in error.param)", 401: "Missing or wrong API key",
           403: "The key lacks the scope this endpoint needs", 404: "No such model or completion",
           409: "The Idempotency-Key was used for feedback on another completion",
           413: "Request body over the server's limit", 429: "Rate limit or concurrency limit (see Retry-After)",
           504: "Generation (or classification) took longer than the server's request timeout"}


def _responses(schema: dict, streams: bool, errors: tuple, path: str) -> dict:
    content = {"text/plain": {"schema": schema}} if path == "/metrics" else {"application/json": {"schema": schema}}
    if streams:
        content["text/event-stream"] = {"schema": EVENTS}
    responses = {"200": {"description": "Success", "content": content}}
    for status in errors:
        headers = {"Retry-After": {"schema": {"type": "string"}}} if status == 429 else {}
        responses[str(status)] = {"description": REASONS[status], "headers": headers,
                                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return responses


def build_openapi(app: FastAPI) -> dict:
    spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for schema in list(components["schemas"]):  # FastAPI's 422 bodies: never sent here
        if schema in ("HTTPValidationError", "ValidationError"):
            del components["schemas"][schema]
    for path, operations in spec.get("paths", {}).items():
        if path not in ROUTES:
            continue
        schema, streams, errors = ROUTES[path]
        for operation in operations.values():
            operation["responses"] = _responses(schema, streams, errors, path)
            if path.startswith("/v1"):
                operation["security"] = [{"bearer": []}, {}]  # {}: servers run without keys too
    return spec


def install_openapi(app: FastAPI) -> None:
    cached: dict = {}

    def openapi() -> dict:
        if not cached:
            cached.update(build_openapi(app))
        return cached

    app.openapi = openapi
