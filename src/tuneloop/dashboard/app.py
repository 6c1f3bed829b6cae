"""The dashboard app: routes over runs, evaluations, the serving store, the registry and a served model.

``create_app(settings)`` wires it; ``tuneloop ui`` runs it (see ``cli/ui.py``). Pages:

- ``/runs`` (a page of runs, filter, compare), ``/runs/new`` (validate a recipe, start ``tuneloop train``;
  POST, audited), ``/runs/NAME`` (summary, recipe, checkpoints, data
  report, a loss curve that grows while the run trains), ``/runs/compare?run=A&run=B``
- ``/evals``, ``/evals/view?eval=KEY[&show=changed|fixed|broken]`` (with base-vs-tuned answers per sample
  when ``predictions.baseline.jsonl`` is there), ``/evals/compare?eval=A&eval=B``, ``/evals/report?eval=KEY``
- ``/tune``, ``/tune/view?study=KEY``: the Optuna studies of ``tuneloop tune`` (``study.db`` under the
  runs and evaluation folders), the trials, the optimisation history and parallel coordinates
- ``/serving?since=24h&model=M&page=N``: per-model latency, errors, satisfaction; per hour; recent requests
- ``/registry``, ``/registry/NAME`` with promote and rollback forms (POST; audited in the store)
- ``/playground``: streams answers of the server at ``--serve-url``, side by side, and rates them
- ``/annotate``: the annotation queue's page (mounted at ``/annotate/app/`` by ``tuneloop ui --annotate``)

JSON API: ``GET /api/runs/NAME/metrics?offset=BYTES`` (the metrics lines written since ``offset``),
``POST /api/playground`` (validates, then relays the server's SSE stream), ``POST /api/feedback``.
Every route sits behind :class:`DashboardGuard`. Bad input: 400 (a page or query parameter) or 422
(a form), with the field named on the page or in ``{"field", "error"}``.
"""

from __future__ import annotations

import json
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from tuneloop.dashboard import launch, pages, playground, registry_actions, serving, studies
from tuneloop.dashboard.evals import EvalIndex, check_show, load, sample_pairs, shown_pairs
from tuneloop.dashboard.guard import LOOPBACK, DashboardGuard
from tuneloop.dashboard.runs import (checkpoints, data_report, list_runs, read_json, read_metrics, run_dir_of,
                                     run_status, samples)
from tuneloop.errors import UserError
from tuneloop.registry.store import Registry
from tuneloop.serve.store import Store

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
PER_PAGE = 50


@dataclass
class DashboardSettings:
    token: str
    runs_dir: Path = Path("runs")
    eval_dirs: list[Path] = field(default_factory=lambda: [Path(".")])
    db_url: str | None = None  # the serving store, which also holds the registry
    serve_url: str = "http://127.0.0.1:8000"
    serve_key: str | None = None
    trusted_networks: tuple[str, ...] = LOOPBACK
    poll_ms: int = 1000
    annotate_url: str | None = None


def _int_param(request: Request, name: str, default: int, low: int = 1, high: int = 10**9) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{text!r} is not a whole number", where=name) from None
    if not low <= value <= high:
        raise UserError(f"{value} is out of range ({low}..{high})", where=name)
    return value


def _html(body, status: int = 200) -> HTMLResponse:
    return HTMLResponse(str(body), status_code=status)


def create_app(settings: DashboardSettings, mounts: dict | None = None) -> DashboardGuard:
    """The guarded app (its FastAPI app is ``.app``); ``mounts`` = {path: ASGI app} served behind the
    same guard (the annotation page)."""
    store = Store(settings.db_url)
    serving.ensure_indexes(store.engine)
    hourly_sums = serving.HourlySums(store.engine)
    registry = Registry(settings.db_url)
    evals = EvalIndex(settings.eval_dirs)
    client = playground.ServeClient(settings.serve_url, settings.serve_key)
    mounts = mounts or {}

    @asynccontextmanager
    async def lifespan(_app):
        # Sum the last day's ended hours while the first pages are looked at, so the serving page's
        # first view does not pay for the scan (the page waits on the same lock if it comes first).
        threading.Thread(target=hourly_sums.window, args=(serving.window_start(serving.WINDOWS["24h"]),),
                         daemon=True, name="serving-sums").start()
        yield
        await client.close()
        store.close()
        registry.close()

    app = FastAPI(title="tuneloop ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store_url = store.url

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        status = 422 if request.method == "POST" else 400
        if request.url.path.startswith("/api/"):
            return JSONResponse({"field": exc.where, "error": str(exc)}, status_code=status)
        return _html(pages.error_page(status, str(exc), exc.where), status)

    @app.get("/")
    def home():
        return RedirectResponse("/runs", status_code=303)

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:
            return Response("not found", status_code=404)
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    # -- runs ----------------------------------------------------------------------------------
    @app.get("/runs")
    def runs(request: Request, q: str = ""):
        listing = list_runs(settings.runs_dir, _int_param(request, "page", 1), PER_PAGE, q)
        if listing.page > listing.pages:
            raise UserError(f"there are only {listing.pages} pages", where="page")
        return _html(pages.runs_page(listing, q, settings.runs_dir))

    @app.get("/runs/compare")
    def compare_runs(request: Request):
        names = request.query_params.getlist("run")
        if not 1 <= len(names) <= 8:
            raise UserError("pick 1 to 8 runs to compare (tick them on the runs page)", where="run")
        dirs = [run_dir_of(settings.runs_dir, n) for n in names]
        summaries = [read_json(d / "summary.json") for d in dirs]
        live = any(run_status(d) == "running" for d in dirs)
        return _html(pages.compare_page(names, summaries, settings.poll_ms, live))

    @app.get("/runs/new")  # before /runs/{name}: "new" is not a run
    def new_run():
        return _html(pages.new_run_page(settings.runs_dir))

    @app.post("/runs/new")
    async def start_run(request: Request):
        form = await _form(request)
        try:
            started = launch.start_run(form, settings.runs_dir, store.engine, _actor(request))
        except registry_actions.FormErrors as e:
            return _html(pages.new_run_page(settings.runs_dir, e.errors, form), 422)
        return RedirectResponse(f"/runs/{quote(started.name)}", status_code=303)

    @app.get("/runs/{name}")
    def run(name: str):
        run_dir = run_dir_of(settings.runs_dir, name)
        summary = read_json(run_dir / "summary.json")
        recipe = (run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8") \
            if (run_dir / "recipe.resolved.yaml").is_file() else None
        report_path, report = data_report(run_dir)
        return _html(pages.run_page(name, run_status(run_dir), summary, recipe, checkpoints(run_dir), samples(run_dir),
                                    report_path, report, evals.of_model(run_dir), settings.poll_ms))

    @app.get("/api/runs/{name}/metrics")
    def run_metrics(request: Request, name: str):
        run_dir = run_dir_of(settings.runs_dir, name)
        points, offset = read_metrics(run_dir, _int_param(request, "offset", 0, low=0))
        finished = (run_dir / "summary.json").is_file()
        return {"points": points, "offset": offset, "finished": finished, "status": run_status(run_dir)}

    # -- evaluations -----------------------------------------------------------------------------
    @app.get("/evals")
    def eval_list(request: Request):
        entries = evals.entries()
        page = _int_param(request, "page", 1)
        pages_total = max(1, -(-len(entries) // PER_PAGE))
        if page > pages_total:
            raise UserError(f"there are only {pages_total} pages", where="page")
        shown = entries[(page - 1) * PER_PAGE: page * PER_PAGE]
        return _html(pages.evals_page(shown, [load(e) for e in shown], page, pages_total, len(entries)))

    @app.get("/evals/view")
    def eval_view(request: Request, eval: str = "", show: str = "all"):
        entry = evals.get(eval)
        return _html(pages.eval_page(entry.key, load(entry), _sample_diffs(request, entry, show)))

    @app.get("/evals/compare")
    def eval_compare(request: Request):
        keys = request.query_params.getlist("eval")
        if not 2 <= len(keys) <= 8:
            raise UserError("pick 2 to 8 evaluations to compare (tick them on the evaluations page)", where="eval")
        return _html(pages.evals_compare_page(keys, [load(evals.get(k)) for k in keys]))

    @app.get("/evals/report")
    def eval_report(eval: str = ""):
        report = evals.get(eval).path.with_name("report.html")
        if not report.is_file():
            raise UserError("this evaluation has no report.html beside its eval.json", where="eval")
        return FileResponse(report, media_type="text/html")

    # -- tuning studies ---------------------------------------------------------------------------
    study_roots = [settings.runs_dir, *settings.eval_dirs]

    @app.get("/tune")
    def study_list():
        return _html(pages.studies_page(studies.list_studies(study_roots), study_roots))

    @app.get("/tune/view")
    def study_view(study: str = ""):
        return _html(pages.study_page(*studies.get_study(study_roots, study)))

    # -- serving ----------------------------------------------------------------------------------
    @app.get("/serving")
    def serving_view(request: Request, since: str = "24h", model: str = ""):
        start = serving.window_start(serving.parse_window(since))
        page = _int_param(request, "page", 1)
        sums = hourly_sums.window(start)
        total = serving.window_total(sums, model or None)
        pages_total = max(1, -(-total // PER_PAGE))
        if page > pages_total:
            raise UserError(f"there are only {pages_total} pages", where="page")
        rows = serving.recent_requests(store.engine, start, page, PER_PAGE, model or None)
        return _html(pages.serving_page(since, model, serving.model_stats(store.engine, sums, start),
                                        serving.hourly(sums), rows, page, pages_total, total, store.url))

    # -- registry ---------------------------------------------------------------------------------
    @app.get("/registry")
    def registry_list():
        models = [(n, registry.aliases(n), len(registry.versions(n))) for n in registry.names()]
        return _html(pages.registry_index(models))

    @app.get("/registry/{name}")
    def registry_view(name: str, moved: str = ""):
        return _html(_registry_model_page(registry, name, notice=moved))

    @app.post("/registry/{name}/promote")
    async def registry_promote(request: Request, name: str):
        form = await _form(request)
        try:
            message = registry_actions.promote(registry, store.engine, name, form, _actor(request))
        except registry_actions.FormErrors as e:
            return _html(_registry_model_page(registry, name, e.errors, form), 422)
        return RedirectResponse(f"/registry/{name}?moved={message}", status_code=303)

    @app.post("/registry/{name}/rollback")
    async def registry_rollback(request: Request, name: str):
        form = await _form(request)
        try:
            message = registry_actions.rollback(registry, store.engine, name, form, _actor(request))
        except registry_actions.FormErrors as e:
            return _html(_registry_model_page(registry, name, e.errors, form), 422)
        return RedirectResponse(f"/registry/{name}?moved={message}", status_code=303)

    # -- playground and annotation ---------------------------------------------------------------
    @app.get("/playground")
    async def playground_view():
        models, problem = await client.models()
        return _html(pages.playground_page(models, settings.serve_url, problem))

    @app.post("/api/playground")
    async def playground_stream(request: Request):
        body = await _json(request)
        models, problem = await client.models()
        if problem:
            raise UserError(problem, where="model")
        chat = playground.check_request(body, models)
        return await client.stream(chat)

    @app.post("/api/feedback")
    async def playground_feedback(request: Request):
        return await client.feedback(playground.check_feedback(await _json(request)))

    @app.get("/annotate")
    def annotate_view():
        return _html(pages.annotate_page("/annotate/app" in mounts, settings.annotate_url))

    for path, sub_app in mounts.items():
        app.mount(path, sub_app)

    return DashboardGuard(app, settings.token, settings.trusted_networks, store.engine)


def _sample_diffs(request: Request, entry, show: str):
    """The eval page's base-vs-tuned table, or None without ``predictions.baseline.jsonl``."""
    pairs = sample_pairs(entry) if check_show(show) else None
    if pairs is None:
        return None
    shown = shown_pairs(pairs, show)
    pages_total = max(1, -(-len(shown) // PER_PAGE))
    page = _int_param(request, "page", 1)
    if page > pages_total:
        raise UserError(f"there are only {pages_total} pages", where="page")
    return pages.sample_diffs(entry.key, pairs, shown, show, page, pages_total, PER_PAGE)


def _registry_model_page(registry: Registry, name: str, errors=None, form=None, notice: str = ""):
    registry.require(name)
    return pages.registry_model(name, registry.versions(name), registry.aliases(name), registry.events(name),
                                registry.rounds(name), errors, form, notice)


def _actor(request: Request) -> str:
    return request.scope.get("state", {}).get("actor", "ui:local")


async def _form(request: Request) -> dict:
    """An urlencoded form (the dashboard's own forms); first value of each field."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


async def _json(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise UserError("the request body is not JSON", where="body") from None
    if not isinstance(body, dict):
        raise UserError("the request body must be a JSON object", where="body")
    return body
