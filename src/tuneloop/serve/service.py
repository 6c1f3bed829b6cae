"""What happens to one completion request: check it, generate, answer in OpenAI's shape, record it.

Every request that reaches a completion endpoint (after auth and the size check) is written to the
store with its outcome: 200, a 4xx with the reason, or 499 when the client went away mid-stream.
Rows are written by one writer thread, in order, and a response is sent only after its row is
committed, so feedback on a completion id the client just got always finds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from fastapi.responses import JSONResponse, StreamingResponse

from tuneloop.chat.template import render_prompt_ids, tokenize_text
from tuneloop.serve.adapters import ModelTable, ServedModel, looks_like_path
from tuneloop.models.decoding import SamplingParams
from tuneloop.serve.errors import APIError, error_body
from tuneloop.serve.limits import ConcurrencyLimiter, retry_after_headers
from tuneloop.serve.metrics import ServeMetrics
from tuneloop.serve.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest
from tuneloop.serve.settings import ServeSettings
from tuneloop.serve.store import FeedbackRow, RequestRow, Store

log = logging.getLogger("tuneloop.serve")
ENDPOINTS = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "classify": "/v1/classify"}
_ID_PREFIX = {"chat": "chatcmpl-", "completion": "cmpl-", "classify": "classify-"}


def new_completion_id(kind: str) -> str:
    return _ID_PREFIX[kind] + uuid.uuid4().hex


class CompletionService:
    def __init__(self, engine, table: ModelTable, store: Store, metrics: ServeMetrics,
                 settings: ServeSettings):
        self.engine = engine
        self.table = table
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.limiter = ConcurrencyLimiter(settings.max_concurrency)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-store")
        self.classifier_ids: set[str] = set()  # served by /v1/classify (serve/classify.py), not here

    # -- checks ---------------------------------------------------------------------------------
    def served(self, name: str) -> ServedModel:
        if looks_like_path(name):
            raise APIError(400, f"model {name!r} is not a model id: paths are not accepted here",
                           param="model", code="invalid_model")
        if name in self.classifier_ids:
            raise APIError(400, f"model {name!r} is a sequence classifier: it answers POST /v1/classify, "
                                "not completions; name a generative model here", param="model",
                           code="model_not_generative")
        if name not in self.table.models:
            ids = [*self.table.models, *sorted(self.classifier_ids)]
            raise APIError(404, f"model {name!r} is not served here; GET /v1/models lists the ids "
                                f"({', '.join(ids)})", param="model", code="model_not_found")
        return self.table.models[name]

    def sampling(self, body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
        limit = self.settings.max_tokens_limit
        max_tokens = body.requested_max_tokens() or min(self.settings.default_max_tokens, limit)
        if max_tokens > limit:
            raise APIError(400, f"max_tokens is {max_tokens}, above this server's limit of {limit}; "
                                f"ask for at most {limit}", param="max_tokens", code="max_tokens_too_large")
        return SamplingParams(max_tokens, body.temperature, body.top_p, body.stop_strings(), body.seed)

    def prompt_ids(self, body, kind: str, max_tokens: int) -> list[int]:
        tokenizer = self.engine.tokenizer
        if kind == "chat":
            try:
                ids = render_prompt_ids(tokenizer, [m.as_dict() for m in body.messages])
            except Exception as e:  # templates raise on e.g. non-alternating roles: the messages are wrong
                raise APIError(400, f"the model's chat template rejects these messages: {e}",
                               param="messages", code="invalid_messages") from e
        else:
            ids = tokenize_text(tokenizer, body.prompt)
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt" if kind != "chat" else "messages")
        context = self.engine.max_context
        if len(ids) + max_tokens > context:
            raise APIError(400, f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}, more than "
                                f"the model's context of {context}; shorten the prompt or lower max_tokens",
                           param="messages" if kind == "chat" else "prompt", code="context_length_exceeded")
        return ids

    # -- completions ----------------------------------------------------------------------------
    async def complete(self, body: ChatCompletionRequest | CompletionRequest, kind: str):
        started = time.perf_counter()
        prompt = [m.as_dict() for m in body.messages] if kind == "chat" else body.prompt
        row = RequestRow(new_completion_id(kind), body.model, kind, 0.0, 0, prompt=prompt, stream=body.stream)
        try:
            self.served(body.model)
            params = self.sampling(body)
            if body.n > 1 and body.stream:
                raise APIError(400, "n=2 answers are not streamed; send stream: false", param="n",
                               code="invalid_n")
            ids = self.prompt_ids(body, kind, params.max_tokens)
            if not self.limiter.try_acquire():
                raise APIError(429, f"the server is busy ({self.limiter.limit} requests in flight); retry shortly",
                               code="too_many_requests", headers=retry_after_headers(1))
        except APIError as e:
            await self.finish(row, started, e.status, error=e)
            raise
        row.prompt_tokens = len(ids)
        if body.stream:
            return StreamingResponse(self._stream(row, started, ids, params, body), media_type="text/event-stream")
        try:
            results = await asyncio.gather(*(self._generate(row.model, ids, p) for p in candidate_params(params, body.n)))
        except APIError as e:
            await self.finish(row, started, e.status, error=e)
            raise
        finally:
            self.limiter.release()
        texts = [(body.prompt + r.text) if kind == "completion" and body.echo else r.text for r in results]
        result = results[0]
        row.response, row.finish_reason, row.completion_tokens = result.text, result.finish_reason, \
            sum(r.completion_tokens for r in results)
        row.choices = [r.text for r in results] if body.n > 1 else None
        await self.finish(row, started, 200)
        return JSONResponse(response_body(row, texts, kind, [r.finish_reason for r in results]))

    async def _generate(self, model_id: str, ids: list[int], params: SamplingParams):
        job = self.engine.submit(model_id, ids, params)
        deadline = time.monotonic() + self.settings.request_timeout_s
        try:
            while True:
                kind, value = await self._next_event(job, deadline)
                if kind == "done":
                    return value
                if kind == "error":
                    raise APIError(500, value, code="internal_error")
        finally:
            job.cancelled.set()

    async def _next_event(self, job, deadline: float):
        try:
            return await asyncio.wait_for(job.events.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            # 504, not 408 (which means the client was slow to send); and no automatic retry: the same
            # request would most likely time out again, tripling the load.
            raise APIError(504, f"generation took longer than the server's request timeout of "
                                f"{self.settings.request_timeout_s:g} s; lower max_tokens",
                           code="timeout", headers={"x-should-retry": "false"}) from None

    async def _stream(self, row: RequestRow, started: float, ids, params, body):
        kind = row.kind
        job = self.engine.submit(row.model, ids, params)
        deadline = time.monotonic() + self.settings.request_timeout_s
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        parts: list[str] = []
        finished = False
        try:
            if kind == "chat":
                yield _sse(chunk_body(row, kind, {"role": "assistant", "content": ""}, None))
            while True:
                event, value = await self._next_event(job, deadline)
                if event == "delta":
                    parts.append(value)
                    yield _sse(chunk_body(row, kind, _delta(kind, value), None))
                elif event == "error":
                    raise APIError(500, value, code="internal_error")
                else:
                    break
            row.response, row.finish_reason, row.completion_tokens = \
                value.text, value.finish_reason, value.completion_tokens
            yield _sse(chunk_body(row, kind, _delta(kind, None), value.finish_reason))
            if include_usage:
                yield _sse({**chunk_body(row, kind, None, None), "choices": [], "usage": usage(row)})
            await self.finish(row, started, 200)
            finished = True
            yield "data: [DONE]\n\n"
        except APIError as e:  # a timeout after the 200 header: tell the client in-band
            row.response = "".join(parts)
            await self.finish(row, started, e.status, error=e)
            finished = True
            yield _sse(error_body(e.status, e.message, e.param, e.code))
        finally:
            job.cancelled.set()
            self.limiter.release()
            if not finished:  # the client went away (or the task was cancelled): record, don't wait
                row.response = "".join(parts)
                self._record_later(row, started, 499, "client closed the connection")

    # -- recording ------------------------------------------------------------------------------
    async def finish(self, row: RequestRow, started: float, status: int, error: APIError | None = None):
        row.status, row.latency_ms = status, (time.perf_counter() - started) * 1000
        row.error = error.message if error else None
        self.metrics.observe_request(row.model, ENDPOINTS[row.kind], status, row.latency_ms / 1000,
                                     row.prompt_tokens, row.completion_tokens, error.type if error else None)
        await asyncio.get_running_loop().run_in_executor(self.writer, self._write, self.store.record_request, row)

    def _record_later(self, row: RequestRow, started: float, status: int, error: str) -> None:
        row.status, row.latency_ms, row.error = status, (time.perf_counter() - started) * 1000, error
        self.metrics.observe_request(row.model, ENDPOINTS[row.kind], status, row.latency_ms / 1000,
                                     error_type="client_closed")
        self.writer.submit(self._write, self.store.record_request, row)

    async def record_rejected(self, kind: str, raw_body: object, status: int, message: str) -> None:
        """A request whose body failed validation: stored too, with whatever model it named."""
        model = raw_body.get("model") if isinstance(raw_body, dict) else None
        row = RequestRow(new_completion_id(kind), model if isinstance(model, str) else None, kind, 0.0, status,
                         error=message, prompt=_jsonable(raw_body))
        await self.finish(row, time.perf_counter(), status, APIError(status, message))

    @staticmethod
    def _write(write, row) -> None:
        try:
            write(row)
        except Exception:  # the database is down: the client still gets its answer; the log says what was lost
            log.exception("could not store %s", getattr(row, "id", row))

    # -- feedback -------------------------------------------------------------------------------
    async def feedback(self, body: FeedbackRequest, idempotency_key: str | None = None) -> dict:
        loop = asyncio.get_running_loop()
        # Read on the writer thread: it runs after every write queued before it.
        model = await loop.run_in_executor(self.writer, self.store.request_model, body.completion_id)
        if model is None:
            raise APIError(404, f"no completion with id {body.completion_id!r}: use the id of a "
                                "successful chat or text completion", param="completion_id",
                           code="completion_not_found")
        if body.choice is not None:
            choices = await loop.run_in_executor(self.writer, self.store.request_choices, body.completion_id)
            if not choices or body.choice >= len(choices):
                raise APIError(400, f"choice {body.choice}: completion {body.completion_id!r} has "
                                    f"{len(choices or [])} choices; ask with n=2 to compare two answers",
                               param="choice", code="invalid_choice")
        row = FeedbackRow(body.completion_id, model, body.thumbs(), body.comment, body.correction, score=body.score,
                          choice=body.choice, idempotency_key=idempotency_key)
        stored, written = await loop.run_in_executor(self.writer, self.store.record_feedback, row)
        if not written and stored["completion_id"] != body.completion_id:
            raise APIError(409, f"Idempotency-Key {idempotency_key!r} was already used for feedback on "
                                f"{stored['completion_id']!r}; send a new key for each feedback",
                           param="Idempotency-Key", code="idempotency_key_reused")
        if stored["rating"] is not None and written:
            self.metrics.observe_feedback(model, stored["rating"])
        return {"object": "feedback", "completion_id": stored["completion_id"], "model": stored["model"],
                "rating": stored["rating"], "score": stored["score"], "choice": stored["choice"], "stored": True,
                "replayed": not written}

    def close(self) -> None:
        self.writer.shutdown(wait=True)


def usage(row: RequestRow) -> dict:
    return {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "total_tokens": row.prompt_tokens + row.completion_tokens}


def candidate_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """n=2 (A/B): two answers to choose from. Greedy would give the same answer twice, so the second
    is sampled (temperature 0.8 when the request asked for 0); a given seed moves by one."""
    if n == 1:
        return [params]
    second = replace(params, temperature=params.temperature or 0.8,
                     seed=None if params.seed is None else params.seed + 1)
    return [params, second]


def response_body(row: RequestRow, texts: list[str], kind: str, finish_reasons: list[str]) -> dict:
    created = int(time.time())
    if kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                    "logprobs": None} for i, (text, reason) in enumerate(zip(texts, finish_reasons))]
        return {"id": row.id, "object": "chat.completion", "created": created, "model": row.model,
                "choices": choices, "usage": usage(row)}
    choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
               for i, (text, reason) in enumerate(zip(texts, finish_reasons))]
    return {"id": row.id, "object": "text_completion", "created": created, "model": row.model,
            "choices": choices, "usage": usage(row)}


def chunk_body(row: RequestRow, kind: str, delta, finish_reason: str | None) -> dict:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    choice = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    choice.update({"delta": delta or {}} if kind == "chat" else {"text": delta or ""})
    return {"id": row.id, "object": obj, "created": int(time.time()), "model": row.model, "choices": [choice]}


def _delta(kind: str, text: str | None):
    if kind == "chat":
        return {"content": text} if text is not None else {}
    return text


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return None
