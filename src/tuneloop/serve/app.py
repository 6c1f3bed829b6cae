"""The FastAPI app: OpenAI-compatible routes over an engine, a store and a metrics registry.

``create_app`` wires the parts; ``build`` makes them from :class:`ServeSettings` and ``--model``
options (loads the weights). Routes:

- ``GET /v1/models``; ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream: true`` as
  server-sent events); ``POST /v1/classify`` (sequence classifiers, ``classify.py``); ``POST /v1/feedback`` (an ``Idempotency-Key`` header makes a retry store nothing twice)
- ``GET /metrics`` (Prometheus text), ``GET /health`` and ``GET /openapi.json`` (the spec, see
  ``openapi.py``), open without an API key
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from tuneloop.serve.adapters import ModelTable, load_served, plan_models
from tuneloop.serve.auth import KeyRing
from tuneloop.serve.classify import ClassifierService, ServedClassifier, load_classifiers, split_options
from tuneloop.serve.engine import BatchingEngine
from tuneloop.serve.errors import install_error_handlers
from tuneloop.serve.follow import FollowingEngine, concrete_options, uses_registry
from tuneloop.serve.limits import GuardMiddleware
from tuneloop.serve.metrics import ServeMetrics
from tuneloop.serve.openapi import install_openapi
from tuneloop.serve.ratelimit import RateLimiter
from tuneloop.serve.schemas import ChatCompletionRequest, ClassifyRequest, CompletionRequest, FeedbackRequest
from tuneloop.serve.service import CompletionService
from tuneloop.serve.settings import ServeSettings
from tuneloop.serve.store import Store
from tuneloop.serve.vllm_engine import VLLMEngine, check_vllm_available

_KIND_OF_PATH = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/classify": "classify"}


@dataclass
class Served:
    """Everything a running server holds; ``close()`` releases it in order."""

    app: FastAPI
    engine: object | None  # None when only classifiers are served
    store: Store
    service: CompletionService
    classify: ClassifierService

    @property
    def model_ids(self) -> list[str]:
        return [*self.service.table.models, *self.classify.classifiers]

    def close(self) -> None:
        self.classify.close()
        self.service.close()
        if self.engine is not None:
            self.engine.close()
        self.store.close()


def create_app(engine, table: ModelTable, store: Store, settings: ServeSettings,
               metrics: ServeMetrics | None = None, classifiers: dict[str, ServedClassifier] | None = None,
               ) -> tuple[FastAPI, CompletionService]:
    """The app and its completion service; the classifier service is ``app.state.classify``."""
    classifiers = classifiers or {}
    metrics = metrics or ServeMetrics([*table.models, *classifiers])
    service = CompletionService(engine, table, store, metrics, settings)
    service.classifier_ids = set(classifiers)
    classify = ClassifierService(classifiers, service)
    app = FastAPI(title="tuneloop", docs_url=None, redoc_url=None)
    keys = KeyRing(settings.api_key, store.engine)
    app.add_middleware(GuardMiddleware, keys=keys, max_body_bytes=settings.max_body_bytes,
                       rate_limiter=RateLimiter(settings.rate_limit_per_minute))
    install_error_handlers(app, on_validation_error=_recorder(service))
    created = int(time.time())

    @app.get("/v1/models")
    async def list_models():
        data = [{"id": m.id, "object": "model", "created": created, "owned_by": "tuneloop",
                 "root": table.base_id, "parent": None if m.adapter_path is None else table.base_id}
                for m in table.models.values()]
        data += [{"id": c, "object": "model", "created": created, "owned_by": "tuneloop", "root": c,
                  "parent": None} for c in classifiers]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        served = classify.classifiers[model_id] if model_id in classify.classifiers else service.served(model_id)
        return {"id": served.id, "object": "model", "created": created, "owned_by": "tuneloop"}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        return await service.complete(body, "chat")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await service.complete(body, "completion")

    @app.post("/v1/classify")
    async def classify_texts(body: ClassifyRequest):
        return await classify.classify(body)

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest,
                       idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=128)):
        return await service.feedback(body, idempotency_key)

    @app.get("/metrics")
    async def prometheus_metrics():
        metrics.in_flight.set(service.limiter.in_flight)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/health")
    async def health():
        health = {"status": "ok", "models": [*table.models, *classifiers], "in_flight": service.limiter.in_flight}
        if isinstance(service.engine, FollowingEngine):  # which registry versions serve, and every switch
            health["registry"] = {"versions": service.engine.versions, "swaps": len(service.engine.swaps),
                                  "draining": service.engine.draining}
        return health

    app.state.classify = classify
    install_openapi(app)
    return app, service


def _recorder(service: CompletionService):
    async def record(request: Request, exc: RequestValidationError, status: int, message: str) -> None:
        kind = _KIND_OF_PATH.get(request.url.path)
        if kind is None:
            return
        body = exc.body
        if isinstance(body, (bytes, str)):
            try:
                body = json.loads(body)
            except ValueError:
                body = None
        await service.record_rejected(kind, body, status, message)

    return record


def build(model_options: list[str], settings: ServeSettings) -> Served:
    """Load the models and open the store: a ready-to-run app (used by ``tuneloop serve`` and tests)."""
    if settings.engine == "vllm":  # fail in a second, before anything is loaded or created
        check_vllm_available()
    # Classifiers (an exported or trained sequence classifier) are served by /v1/classify, the rest
    # by the generation engine; a server may hold only classifiers.
    model_options, classifier_options = split_options(model_options)
    following = uses_registry(model_options)  # registry:NAME@ALIAS: follow the alias (serve/follow.py)
    options, versions = concrete_options(model_options, settings.db_url) if following else (model_options, {})
    table = plan_models(options) if options or not classifier_options else ModelTable(None)
    classifiers = load_classifiers(classifier_options, set(table.models))
    store = Store(settings.db_url)
    metrics = ServeMetrics([*table.models, *classifiers])
    engine = _make_engine(table, settings, metrics) if table.models else None
    if following:
        engine = FollowingEngine(model_options, settings.db_url, table, engine, versions,
                                 lambda planned: _make_engine(planned, settings, metrics), settings.registry_poll_s)
    app, service = create_app(engine, table, store, settings, metrics, classifiers)
    return Served(app, engine, store, service, app.state.classify)


def _make_engine(table: ModelTable, settings: ServeSettings, metrics: ServeMetrics):
    if settings.engine == "vllm":
        return VLLMEngine(table, settings)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    model, tokenizer = load_served(table)
    adapters = {m.id: m.adapter_name for m in table.models.values()}
    return BatchingEngine(model, tokenizer, adapters, settings.max_batch_size, settings.batch_wait_ms / 1000,
                          on_batch=metrics.observe_batch)
