"""Feedback a user can give: thumbs, a 1-5 score, a correction, and a choice between two answers
(``n: 2`` returns two candidates); what each becomes in the store, in monitor and in training data."""

from __future__ import annotations

import sqlite3

import httpx
import openai
import pytest

from tuneloop.data.feedback import build_feedback_data
from tuneloop.monitor.report import summarize
from tuneloop.serve.app import build
from tuneloop.serve.runner import ServerThread
from tuneloop.serve.settings import ServeSettings
from tuneloop.serve.store import Store

HELLO = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('ab') / 'serve.db'}"
    served = build([str(tiny_model_dir)], ServeSettings(db_url=db, max_tokens_limit=32))
    with ServerThread(served.app) as thread:
        yield thread.url, db
    served.close()


def _feedback(url, **body):
    return httpx.post(url + "/v1/feedback", json=body, timeout=30)


def test_n2_gives_two_answers_and_a_choice_becomes_a_preference_pair(server):
    url, db = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    response = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=12, n=2, temperature=0,
                                              seed=3)
    first, second = (c.message.content for c in response.choices)
    assert [c.index for c in response.choices] == [0, 1] and first != second  # greedy A vs sampled B
    assert _feedback(url, completion_id=response.id, choice=1).json()["choice"] == 1
    single = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=4)
    refused = _feedback(url, completion_id=single.id, choice=0)
    assert refused.status_code == 400 and "ask with n=2" in refused.json()["error"]["message"]
    streamed = httpx.post(url + "/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO, "n": 2,
                                                               "stream": True}, timeout=30)
    assert streamed.status_code == 400
    store = Store(db)
    data = build_feedback_data(store.requests(), store.feedback())
    store.close()
    (pair,) = [p for p in data.preference if p["source"].endswith(":choice")]
    assert pair["chosen"][0]["content"] == second and pair["rejected"][0]["content"] == first


def test_score_thumbs_and_correction_are_stored_and_count_in_satisfaction(server):
    url, db = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    ids = [client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=4).id for _ in range(4)]
    assert _feedback(url, completion_id=ids[0], score=5).json()["rating"] == 1
    assert _feedback(url, completion_id=ids[1], score=3).json()["rating"] is None  # neither up nor down
    assert _feedback(url, completion_id=ids[2], rating=-1).json()["rating"] == -1
    assert _feedback(url, completion_id=ids[3], correction="I am Brightcart's assistant.").json()["rating"] == -1
    assert _feedback(url, completion_id=ids[0]).status_code == 400  # no feedback in it
    assert _feedback(url, completion_id=ids[0], score=6).status_code == 400
    store = Store(db)
    rows = {r["completion_id"]: r for r in store.feedback()}
    (stats,) = summarize(store.requests(), store.feedback())
    store.close()
    assert rows[ids[0]]["score"] == 5 and rows[ids[1]]["score"] == 3 and rows[ids[1]]["rating"] is None
    assert rows[ids[3]]["correction"] == "I am Brightcart's assistant."
    assert stats.ratings == 3 and stats.positive == 1  # score 3 and the A/B choice are not thumbs


def test_a_store_from_before_these_columns_gets_them_on_open(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the first release's tables
        conn.execute("CREATE TABLE requests (id VARCHAR(64) PRIMARY KEY, model VARCHAR(200), kind VARCHAR(16), "
                     "created DATETIME, latency_ms FLOAT, prompt_tokens INTEGER, completion_tokens INTEGER, "
                     "status INTEGER, error TEXT, prompt JSON, response TEXT, finish_reason VARCHAR(16), stream INTEGER)")
        conn.execute("CREATE TABLE feedback (id INTEGER PRIMARY KEY, completion_id VARCHAR(64), model VARCHAR(200), "
                     "rating INTEGER, comment TEXT, correction TEXT, created DATETIME)")
        conn.execute("INSERT INTO feedback (completion_id, model, rating) VALUES ('x', 'm', 1)")
    store = Store(f"sqlite:///{path}")
    (row,) = store.feedback()
    store.close()
    assert row["rating"] == 1 and row["score"] is None and row["choice"] is None
