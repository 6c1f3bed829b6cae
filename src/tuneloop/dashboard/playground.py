"""The playground's way to a model: the OpenAI-compatible server at ``--serve-url``, through this app.

The browser talks only to the dashboard (one origin, one token); the dashboard checks the form, then
relays ``POST /v1/chat/completions`` with ``stream: true`` and passes the server's server-sent events
through as they arrive, and forwards ratings to ``/v1/feedback`` (so they land in the serving store
like any client's).
"""

from __future__ import annotations

import httpx
from fastapi.responses import JSONResponse, StreamingResponse

from tuneloop.errors import UserError

MAX_PROMPT_CHARS = 20_000
MAX_TOKENS = 1024


def _number(body: dict, name: str, kind, low, high, default):
    value = body.get(name, default)
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{value!r} is not a number", where=name) from None
    if not low <= value <= high:
        raise UserError(f"must be between {low} and {high}, not {value}", where=name)
    return value


def check_request(body: dict, models: list[str]) -> dict:
    """The chat request for the server, or UserError naming the bad field."""
    model = body.get("model")
    if model not in models:
        raise UserError(f"{model!r} is not served at the playground's server (models: {', '.join(models)})",
                        where="model")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("type a prompt", where="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"at most {MAX_PROMPT_CHARS:,} characters", where="prompt")
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": _number(body, "max_tokens", int, 1, MAX_TOKENS, 64),
            "temperature": _number(body, "temperature", float, 0.0, 2.0, 0.0)}


def check_feedback(body: dict) -> dict:
    completion_id = body.get("completion_id")
    if not isinstance(completion_id, str) or not completion_id:
        raise UserError("no completion to rate", where="completion_id")
    if body.get("rating") not in (-1, 1):
        raise UserError("a rating is 1 (up) or -1 (down)", where="rating")
    return {"completion_id": completion_id, "rating": body["rating"]}


class ServeClient:
    def __init__(self, base_url: str, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=headers,
                                      timeout=httpx.Timeout(300.0, connect=2.0))

    async def models(self) -> tuple[list[str], str | None]:
        """The served model ids, or ([], why not) when the server cannot be asked."""
        try:
            response = await self.http.get("/v1/models", timeout=3.0)
        except httpx.HTTPError as e:
            return [], (f"no model server answers at {self.base_url} ({type(e).__name__}); start one with "
                        f"`tuneloop serve --model M` or give `tuneloop ui --serve-url URL`")
        if response.status_code != 200:
            return [], f"{self.base_url}/v1/models answered {response.status_code}: {response.text[:200]}"
        return [m["id"] for m in response.json().get("data", [])], None

    async def stream(self, chat: dict) -> StreamingResponse | JSONResponse:
        request = self.http.build_request("POST", "/v1/chat/completions", json=chat)
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as e:
            return JSONResponse({"field": "model", "error": f"the model server failed: {e}"}, status_code=502)
        if response.status_code != 200:
            text = (await response.aread()).decode("utf-8", errors="replace")
            await response.aclose()
            return JSONResponse({"field": "model", "error": f"the model server answered "
                                                            f"{response.status_code}: {text[:300]}"}, status_code=502)

        async def relay():
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def feedback(self, feedback: dict) -> JSONResponse:
        try:
            response = await self.http.post("/v1/feedback", json=feedback)
        except httpx.HTTPError as e:
            return JSONResponse({"field": "completion_id", "error": f"the model server failed: {e}"}, status_code=502)
        return JSONResponse(response.json() if response.headers.get("content-type", "").startswith(
            "application/json") else {"text": response.text}, status_code=response.status_code)

    async def close(self) -> None:
        await self.http.aclose()
