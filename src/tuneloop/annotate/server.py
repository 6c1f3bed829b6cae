"""The local labelling page: a FastAPI app serving one HTML file (no CDN) and a small JSON API.

Endpoints (all on 127.0.0.1 by default; nothing leaves the machine):

* ``GET /``: the page (``page.html`` beside this file; plain HTML + JavaScript).
* ``GET /api/config``: task, labels, annotators per record, default annotator name.
* ``GET /api/next?annotator=NAME[&skip=ID,ID]``: the next record for NAME with its suggestion and
  the progress, or ``{"item": null}`` when NAME has nothing left.
* ``GET /api/suggestion/{id}``: the suggestion once the background model has computed it.
* ``POST /api/label`` ``{"record_id", "annotator", "value"}``: saves the label (fsynced) and answers
  with the next record, so the page needs one round trip per label.

A bad request (unknown record, label not in the set, no annotator name) gets a 400 with
``{"error": message}``, which the page shows.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.annotate.session import AnnotationSession
from tuneloop.errors import UserError

PAGE = Path(__file__).with_name("page.html")


def _item_json(session: AnnotationSession, item) -> dict | None:
    if item is None:
        return None
    suggestion, status = session.suggestion(item.id)
    return {"id": item.id, "source": item.source, "messages": item.messages,
            "suggestion": suggestion, "suggestion_status": status}


def _next_json(session: AnnotationSession, annotator: str, skip: str = "") -> dict:
    skipped = [s for s in skip.split(",") if s]
    item = session.next_item(annotator, skipped)
    return {"item": _item_json(session, item), "progress": session.progress(annotator.strip()).as_dict()}


def create_app(session: AnnotationSession, default_annotator: str = ""):
    from fastapi import Body, FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="tuneloop annotate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/config")
    def config():
        return {"task": session.task, "labels": session.labels, "per_record": session.per_record,
                "annotator": default_annotator, "total": len(session.items),
                "suggestions": session.suggester is not None}

    @app.get("/api/next")
    def next_record(annotator: str = "", skip: str = ""):
        return _next_json(session, annotator, skip)

    @app.get("/api/suggestion/{record_id}")
    def suggestion(record_id: str):
        if record_id not in {item.id for item in session.items}:
            raise UserError(f"no record {record_id!r} in the queue")
        value, status = session.suggestion(record_id)
        error = session.suggester.error if session.suggester is not None else None
        return {"suggestion": value, "status": status, "error": error}

    @app.post("/api/label")
    def label(body: dict = Body(...)):
        record_id, annotator, value = body.get("record_id"), body.get("annotator"), body.get("value")
        if not isinstance(record_id, str):
            raise UserError("record_id must be a string")
        session.submit(record_id, annotator, value)
        return {"saved": record_id, **_next_json(session, annotator, str(body.get("skip") or ""))}

    return app


def serve(session: AnnotationSession, host: str = "127.0.0.1", port: int = 8765,
          default_annotator: str = "") -> None:
    """Run the page until Ctrl+C (labels are already on disk; nothing to save on the way out)."""
    import uvicorn

    uvicorn.run(create_app(session, default_annotator), host=host, port=port, log_level="warning")
