"""The server driven over loopback by the official ``openai`` client and raw HTTP: shapes, streaming,
adapters, batching, feedback, and a 4xx JSON error for every kind of bad request."""

from __future__ import annotations

import concurrent.futures
import json
import re
from types import SimpleNamespace

import httpx
import openai
import pytest
from serve_support import make_adapter_run

from tuneloop.serve.app import build, create_app
from tuneloop.serve.runner import ServerThread
from tuneloop.serve.settings import ServeSettings
from tuneloop.serve.store import Store

KEY = "test-key-123"
HELLO = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-api")
    support = make_adapter_run(tiny_model_dir, tmp / "support-run", seed=1)
    sales = make_adapter_run(tiny_model_dir, tmp / "sales-run", seed=2)
    db = f"sqlite:///{tmp / 'serve.db'}"
    # A 50 ms batching window so that requests sent together reliably share a batch.
    settings = ServeSettings(api_key=KEY, db_url=db, max_tokens_limit=64, max_body_bytes=100_000,
                             batch_wait_ms=50)
    served = build([str(tiny_model_dir), f"support={support}", f"sales={sales}"], settings)
    with ServerThread(served.app) as thread:
        yield SimpleNamespace(url=thread.url, served=served, db=db, settings=settings)
    served.close()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def _post(server, path, headers=None, **kwargs):
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    return httpx.post(server.url + path, headers=headers, timeout=30, **kwargs)


def _assert_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def _greedy(client, model, messages=HELLO, max_tokens=12):
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
    return response.choices[0].message.content


def test_models_list_has_base_and_each_adapter(client):
    assert {m.id for m in client.models.list()} == {"tiny-llama", "support", "sales"}


def test_chat_completion_shape_and_usage(client):
    response = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=10, temperature=0)
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", response.id)
    assert response.object == "chat.completion" and response.model == "tiny-llama"
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_gives_the_same_text_as_non_streaming(client):
    whole = _greedy(client, "support")
    chunks = list(client.chat.completions.create(model="support", messages=HELLO, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole and len(chunks) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens <= 12 and chunks[-1].choices == []


def test_text_completions_stream_and_not(client):
    response = client.completions.create(model="tiny-llama", prompt="The capital of France is", max_tokens=8,
                                         temperature=0)
    assert response.id.startswith("cmpl-") and response.object == "text_completion"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-llama", prompt="The capital of France is", max_tokens=8, temperature=0, stream=True))
    assert streamed == response.choices[0].text and response.usage.completion_tokens <= 8


def test_each_adapter_changes_the_output(client):
    base, support, sales = (_greedy(client, m) for m in ("tiny-llama", "support", "sales"))
    assert base != support and base != sales and support != sales
    assert _greedy(client, "tiny-llama") == base  # the base is not left with an adapter switched on


def test_requests_sent_together_share_forward_passes_and_match_solo_answers(server, client):
    prompts = [[{"role": "user", "content": f"Question number {i}: " + "word " * i}] for i in range(6)]
    solo = [_greedy(client, "support", p) for p in prompts]
    passes_before, rows_before = _batch_totals(server)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda p: _greedy(client, "support", p), prompts))
    passes, rows = _batch_totals(server)
    assert together == solo  # padding, joining and leaving rows do not change any answer
    assert (rows - rows_before) / (passes - passes_before) > 2  # many rows per forward pass


def _batch_totals(server) -> tuple[float, float]:
    """(forward passes, rows over all passes) so far for the support adapter, from /metrics."""
    text = httpx.get(server.url + "/metrics").text
    count = re.search(r'tuneloop_batch_size_count\{model="support"\} ([\d.]+)', text)
    total = re.search(r'tuneloop_batch_size_sum\{model="support"\} ([\d.]+)', text)
    return (float(count.group(1)), float(total.group(1))) if count else (0.0, 0.0)


def test_stop_strings_and_sampling_settings_are_honoured(client):
    text = _greedy(client, "tiny-llama", max_tokens=20)
    assert len(text) > 4
    cut = text[2:4]
    stopped = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=20, temperature=0,
                                             stop=[cut])
    assert stopped.choices[0].message.content == text[: text.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"
    seeded = [client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=12, temperature=1.0,
                                             top_p=0.9, seed=7).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_feedback_is_stored_and_unknown_ids_are_404(server, client):
    response = client.chat.completions.create(model="sales", messages=HELLO, max_tokens=5, temperature=0)
    ok = _post(server, "/v1/feedback", json={"completion_id": response.id, "rating": -1, "comment": "rude",
                                              "correction": "Hi! I am the sales assistant."})
    assert ok.status_code == 200 and ok.json()["model"] == "sales"
    rows = [f for f in Store(server.db).feedback() if f["completion_id"] == response.id]
    assert [(r["rating"], r["comment"], r["model"]) for r in rows] == [(-1, "rude", "sales")]
    _assert_error(_post(server, "/v1/feedback", json={"completion_id": "chatcmpl-nope", "rating": 1}), 404,
                  "completion_id")
    _assert_error(_post(server, "/v1/feedback", json={"completion_id": response.id, "rating": 0}), 400, "rating")
    _assert_error(_post(server, "/v1/feedback", json={"rating": 1}), 400, "completion_id")


def test_feedback_with_an_idempotency_key_is_stored_once(server, client):
    first, second = (client.chat.completions.create(model="sales", messages=HELLO, max_tokens=3) for _ in range(2))

    def feedback_rows(completion_id):
        return [f for f in Store(server.db).feedback() if f["completion_id"] == completion_id]

    def positive_feedback_count():
        metrics = httpx.get(server.url + "/metrics").text
        found = re.search(r'^tuneloop_feedback_total\{model="sales",rating="positive"\} (\S+)$', metrics, re.M)
        return float(found[1]) if found else 0.0

    before = positive_feedback_count()
    key = {"Idempotency-Key": f"retry-{first.id}"}
    answers = [_post(server, "/v1/feedback", headers=key, json={"completion_id": first.id, "rating": 1})
               for _ in range(3)]  # a client retrying after lost responses
    assert [(a.status_code, a.json()["replayed"]) for a in answers] == [(200, False), (200, True), (200, True)]
    assert [(r["rating"], r["idempotency_key"]) for r in feedback_rows(first.id)] == [(1, f"retry-{first.id}")]
    assert positive_feedback_count() == before + 1  # counted once too
    _assert_error(_post(server, "/v1/feedback", headers=key, json={"completion_id": second.id, "rating": 1}),
                  409, "Idempotency-Key")
    assert feedback_rows(second.id) == []
    for _ in range(2):  # without a key every feedback is its own, as before
        assert _post(server, "/v1/feedback", json={"completion_id": second.id, "rating": -1}).status_code == 200
    assert len(feedback_rows(second.id)) == 2


def test_every_request_is_recorded_with_its_outcome(server, client):
    response = client.chat.completions.create(model="support", messages=HELLO, max_tokens=4, temperature=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=4)
    rows = {r["id"]: r for r in Store(server.db).requests()}
    row = rows[response.id]
    assert (row["model"], row["status"], row["completion_tokens"]) == ("support", 200, response.usage.completion_tokens)
    assert row["prompt"] == HELLO and row["response"] == response.choices[0].message.content
    assert row["latency_ms"] > 0
    assert any(r["model"] == "no-such-model" and r["status"] == 404 for r in rows.values())


def test_wrong_or_missing_api_key_is_401(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.get(server.url + "/v1/models", headers=headers)
        _assert_error(response, 401)
    bad_client = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_client.models.list()
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # health and metrics stay open
    assert "tuneloop_requests_total" in httpx.get(server.url + "/metrics").text


@pytest.mark.parametrize("body, status, param", [
    (b'{"model": "tiny-llama", "messages": [', 400, None),  # malformed JSON
    (b'[1, 2]', 400, None),  # not an object
    (b'{"model": "tiny-llama"}', 400, "messages"),  # missing field
    (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": "tiny-llama", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0.role"),
    (b'{"model": "tiny-llama", "messages": []}', 400, "messages"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}', 400,
     "max_tokens"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}', 400,
     "temperature"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "n": 3}', 400, "n"),
    (b'{"model": "../../etc/passwd", "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": "/etc/passwd", "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": "support/../../x", "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": "tiny-llama/adapter", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    (b'{"model": "unknown", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
])
def test_bad_requests_get_their_4xx_as_json(server, body, status, param):
    response = _post(server, "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    _assert_error(response, status, param)


def test_huge_bodies_are_413_declared_or_chunked(server):
    huge = json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": "x" * 200_000}]}).encode()
    _assert_error(_post(server, "/v1/chat/completions", content=huge, headers={"Content-Type": "application/json"}),
                  413)

    def chunks():  # no Content-Length: the limit must be enforced while reading
        for start in range(0, len(huge), 16_384):
            yield huge[start:start + 16_384]

    _assert_error(_post(server, "/v1/chat/completions", content=chunks(),
                        headers={"Content-Type": "application/json"}), 413)


def test_unknown_routes_and_methods_are_json_4xx(server):
    _assert_error(httpx.get(server.url + "/v1/nothing-here", headers={"Authorization": f"Bearer {KEY}"}), 404)
    _assert_error(httpx.get(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}), 405)


def _side_app(server, **settings):
    """Another app on the same loaded engine and store, with different limits."""
    served = server.served
    return create_app(served.engine, served.service.table, served.store, ServeSettings(**settings))


def test_too_many_concurrent_requests_get_429(server):
    app, service = _side_app(server, max_concurrency=1, max_tokens_limit=1500)
    body = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 1500, "temperature": 0, "stream": True}
    try:
        with ServerThread(app) as thread:
            with httpx.stream("POST", thread.url + "/v1/chat/completions", json=body, timeout=30) as first:
                assert first.status_code == 200  # 1,500 tokens: holds the only slot for seconds
                _assert_error(httpx.post(thread.url + "/v1/chat/completions", json=body), 429)
            # Leaving the stream early frees the slot and is recorded as 499 (client closed).
            assert _wait_for(lambda: service.limiter.in_flight == 0)
    finally:
        service.close()
    assert any(r["status"] == 499 for r in Store(server.db).requests())


def test_generation_over_the_time_limit_is_504(server):
    app, service = _side_app(server, request_timeout_s=0.001)
    body = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 64}
    try:
        with ServerThread(app) as thread:
            _assert_error(httpx.post(thread.url + "/v1/chat/completions", json=body), 504)
            events = [line for line in httpx.post(thread.url + "/v1/chat/completions", json={**body, "stream": True})
                      .text.splitlines() if line.startswith("data: ")]
            assert json.loads(events[-1][len("data: "):])["error"]["code"] == "timeout"
    finally:
        service.close()


def _wait_for(condition, seconds: float = 10) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
