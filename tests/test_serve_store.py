"""The serving store on SQLite (always) and PostgreSQL (when TUNELOOP_TEST_POSTGRES_URL is set):
rows written are read back exactly, survive reopening, and SQLite runs in WAL mode."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from tuneloop.errors import UserError
from tuneloop.serve.store import FeedbackRow, RequestRow, Store, feedback_table, requests_table

POSTGRES_URL = os.environ.get("TUNELOOP_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'serve.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("TUNELOOP_TEST_POSTGRES_URL is not set (source .ci/services.sh to start PostgreSQL)")
    yield POSTGRES_URL
    store = Store(POSTGRES_URL)  # leave the shared database empty for the next run
    with store.engine.begin() as conn:
        conn.execute(feedback_table.delete())
        conn.execute(requests_table.delete())
    store.close()


def _request(model="m", status=200, **kw) -> RequestRow:
    return RequestRow(id=f"chatcmpl-{uuid.uuid4().hex}", model=model, kind="chat", latency_ms=12.5, status=status,
                      prompt_tokens=7, completion_tokens=3, prompt=[{"role": "user", "content": "héllo"}],
                      response="hi there", finish_reason="stop", **kw)


def test_rows_round_trip_and_survive_reopening(db_url):
    store = Store(db_url)
    ok, failed = _request(), _request(model="x", status=404, error="not served")
    for row in (ok, failed):
        store.record_request(row)
    store.record_feedback(FeedbackRow(ok.id, "m", 1, comment="good", correction=None))
    store.record_feedback(FeedbackRow(ok.id, "m", -1, comment=None, correction="better answer"))
    store.close()

    reopened = Store(db_url)  # a restart: a new engine on the same database
    rows = {r["id"]: r for r in reopened.requests()}
    assert rows[ok.id]["prompt"] == [{"role": "user", "content": "héllo"}]
    assert (rows[ok.id]["status"], rows[ok.id]["latency_ms"], rows[ok.id]["response"]) == (200, 12.5, "hi there")
    assert (rows[failed.id]["status"], rows[failed.id]["error"]) == (404, "not served")
    feedback = [(f["completion_id"], f["rating"], f["comment"], f["correction"]) for f in reopened.feedback()]
    assert feedback == [(ok.id, 1, "good", None), (ok.id, -1, None, "better answer")]
    assert reopened.request_model(ok.id) == "m"
    assert reopened.request_model(failed.id) is None  # feedback only on successful completions
    reopened.close()


def test_time_window_filters_rows(db_url):
    store = Store(db_url)
    now = datetime.now(timezone.utc)
    old, new = _request(created=now - timedelta(hours=3)), _request(created=now - timedelta(minutes=5))
    store.record_request(old)
    store.record_request(new)
    ids = {r["id"] for r in store.requests(since=now - timedelta(hours=1))}
    assert new.id in ids and old.id not in ids
    store.close()


def test_sqlite_uses_wal(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'nested' / 'serve.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    store.close()


def test_bad_urls_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--db"):
        Store("nosuchdialect://x/y")
    with pytest.raises(UserError, match="--db"):
        Store("postgresql+psycopg://nobody:wrong@127.0.0.1:1/none")
