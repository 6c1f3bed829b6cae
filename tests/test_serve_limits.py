"""Limits and access control seen from outside, over loopback: 413 before the upload ends, 429 with
Retry-After per key, 504 on a timeout, 401/403 by key and scope; each with the error class the official
``openai`` client raises, and a count of how many times it sent the request (its retries)."""

from __future__ import annotations

import json
import socket
import time
from types import SimpleNamespace

import httpx
import openai
import pytest

from tuneloop.cli.main import main
from tuneloop.serve.access import add_key, audit_entries, revoke_key
from tuneloop.serve.app import build, create_app
from tuneloop.serve.auth import required_scope
from tuneloop.serve.ratelimit import RateLimiter
from tuneloop.serve.runner import ServerThread
from tuneloop.serve.settings import ServeSettings
from tuneloop.serve.store import Store

HELLO = [{"role": "user", "content": "Hello"}]
TWENTY_MB = 20_000_000


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('limits') / 'serve.db'}"
    served = build([str(tiny_model_dir)], ServeSettings(db_url=db, max_tokens_limit=64))
    yield served
    served.close()


def _server(served, store: Store | None = None, **settings):
    """A server on the loaded engine with its own settings (and store, for its own keys)."""
    app, service = create_app(served.engine, served.service.table, store or served.store,
                              ServeSettings(max_tokens_limit=64, **settings))
    return SimpleNamespace(thread=ServerThread(app), service=service)


def _counting_client(url: str, key: str = "none", max_retries: int = 2):
    """The official client with its default retries, and a list of the requests it really sent."""
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(request.url.path)]}, timeout=60)
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=max_retries, http_client=http), sent


def _error(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_a_20_mb_body_is_413_json_for_httpx_and_the_openai_client_without_retries(served):
    server = _server(served)
    with server.thread as thread:
        big = [{"role": "user", "content": "x" * TWENTY_MB}]
        error = _error(httpx.post(thread.url + "/v1/chat/completions", json={"model": "tiny-llama", "messages": big},
                                  timeout=60), 413)
        assert error["code"] == "body_too_large" and "1000000 bytes" in error["message"]
        client, sent = _counting_client(thread.url)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="tiny-llama", messages=big)
        assert caught.value.status_code == 413 and caught.value.body["code"] == "body_too_large"
        assert sent == ["/v1/chat/completions"]  # answered, not reset: the client does not upload it again
        assert client.models.list().data  # the same client and pool keep working
    server.service.close()


def _read_response(sock: socket.socket) -> tuple[int, dict, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(rest)


@pytest.mark.parametrize("chunked", [False, True])
def test_the_413_arrives_before_the_upload_ends_and_the_connection_survives_it(served, chunked):
    server = _server(served)
    with server.thread as thread, socket.create_connection((thread.host, thread.port), timeout=20) as sock:
        framing = b"transfer-encoding: chunked" if chunked else f"content-length: {TWENTY_MB}".encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     + framing + b"\r\n\r\n")
        piece = 65536
        chunk = f"{piece:x}\r\n".encode() + b"x" * piece + b"\r\n" if chunked else b"x" * piece
        sent = 0
        sock.settimeout(0.05)
        status = None
        while sent < TWENTY_MB and status is None:  # keep uploading until the server answers
            sock.sendall(chunk)
            sent += piece
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    sock.settimeout(20)
                    status, headers, body = _read_response(sock)
            except TimeoutError:
                pass
        assert status == 413 and body["error"]["code"] == "body_too_large"
        assert sent <= 4_000_000  # answered after the limit (1 MB) plus what was in flight, not at the end
        assert headers.get("connection") != "close"
        sock.settimeout(20)
        while sent < TWENTY_MB:  # the rest of the upload is read and dropped, not refused with a reset
            if not chunked and TWENTY_MB - sent < piece:
                chunk = b"x" * (TWENTY_MB - sent)
            sock.sendall(chunk)
            sent += piece
        sock.sendall(b"0\r\n\r\n" if chunked else b"")
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")  # the same connection serves the next request
        status, _, body = _read_response(sock)
        assert status == 200 and body["status"] == "ok"
    server.service.close()


def test_rate_limit_per_key_is_429_with_retry_after_and_the_client_honours_it(served, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'keys.db'}")
    fast = add_key(store.engine, "fast", ["infer"], rate_limit_per_minute=30)
    other = add_key(store.engine, "other", ["infer"])
    server = _server(served, store, rate_limit_per_minute=3)
    with server.thread as thread:
        client, sent = _counting_client(thread.url, other, max_retries=0)
        for _ in range(3):
            client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            client.models.list()
        headers = caught.value.response.headers
        assert int(headers["retry-after"]) == 20 and 19_000 <= int(headers["retry-after-ms"]) <= 20_000
        assert caught.value.body["code"] == "rate_limit_exceeded"
        # Another key has its own bucket and limit (30 a minute); once it is empty, the client waits for
        # the Retry-After it was given and its retry succeeds.
        drain, _ = _counting_client(thread.url, fast, max_retries=0)
        fast_client, fast_sent = _counting_client(thread.url, fast, max_retries=1)
        with pytest.raises(openai.RateLimitError):
            for _ in range(200):
                drain.models.list()
        assert fast_client.models.list().data and fast_sent == ["/v1/models"] * 2
    server.service.close()
    store.close()


def test_rate_limiter_refills_continuously():
    now = [0.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # 6 a minute: one every 10 s
    assert [limiter.check("k") for _ in range(6)] == [0.0] * 6
    assert limiter.check("k") == pytest.approx(10.0)
    now[0] = 5.0
    assert limiter.check("k") == pytest.approx(5.0)
    now[0] = 10.0
    assert limiter.check("k") == 0.0 and limiter.check("other") == 0.0
    assert RateLimiter(None).check("k") == 0.0


def test_a_generation_over_the_timeout_is_504_and_not_retried(served):
    server = _server(served, request_timeout_s=0.001)
    with server.thread as thread:
        client, sent = _counting_client(thread.url)  # default retries: a 5xx would normally be sent 3 times
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=64)
        assert caught.value.status_code == 504 and caught.value.body["code"] == "timeout"
        assert sent == ["/v1/chat/completions"]
        with pytest.raises(openai.APIError, match="request timeout"):
            list(client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=64, stream=True))
    server.service.close()


def test_scopes_separate_who_may_infer_from_who_may_give_feedback(served, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'keys.db'}")
    infer = add_key(store.engine, "app", ["infer"])
    feedback = add_key(store.engine, "rater", ["feedback"])
    server = _server(served, store, api_key="master-key")
    with server.thread as thread:
        infer_client, _ = _counting_client(thread.url, infer, max_retries=0)
        reply = infer_client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=4)
        with pytest.raises(openai.PermissionDeniedError, match="lacks the scope 'feedback'"):
            infer_client.post("/feedback", body={"completion_id": reply.id, "rating": 1}, cast_to=object)
        rater, _ = _counting_client(thread.url, feedback, max_retries=0)
        assert rater.post("/feedback", body={"completion_id": reply.id, "rating": 1}, cast_to=object)["stored"]
        with pytest.raises(openai.PermissionDeniedError):
            rater.models.list()
        master, _ = _counting_client(thread.url, "master-key", max_retries=0)  # --api-key: every scope
        assert master.models.list().data
        for key in ("wrong", infer[:-1]):
            with pytest.raises(openai.AuthenticationError):
                _counting_client(thread.url, key, max_retries=0)[0].models.list()
        revoke_key(store.engine, "app", actor="test")
        time.sleep(2.1)  # keys are re-read every 2 s
        with pytest.raises(openai.AuthenticationError):
            infer_client.models.list()
        assert httpx.get(thread.url + "/health").status_code == 200  # open routes stay open
    server.service.close()
    # Only hashes are stored; every key change is in the audit log with who made it.
    dump = "\n".join(store.engine.raw_connection().driver_connection.iterdump())
    assert infer not in dump and feedback not in dump
    log = audit_entries(store.engine)
    assert [(e["action"], e["detail"]["name"]) for e in log] == [("key.add", "app"), ("key.add", "rater"),
                                                                 ("key.revoke", "app")]
    assert log[-1]["actor"] == "test" and log[0]["actor"].startswith("cli:")
    store.close()


def test_required_scope_of_each_route():
    assert [required_scope("POST", p) for p in ("/v1/chat/completions", "/v1/models", "/v1/feedback",
                                                "/v1/registry/promote", "/v1/admin/keys", "/health",
                                                "/metrics", "/v1feedback")] == \
        ["infer", "infer", "feedback", "admin", "admin", None, None, None]


def _tuneloop(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_keys_cli_add_list_revoke_audit(tmp_path, capsys):
    db = ("--db", f"sqlite:///{tmp_path / 'serve.db'}")
    code, key, _ = _tuneloop(capsys, "keys", "add", "ci-bot", "--scope", "infer,feedback", "--rate-limit", "30", *db)
    key = key.strip()
    assert code == 0 and key.startswith("tl-") and len(key) == 46
    _, listed, _ = _tuneloop(capsys, "keys", "list", *db)
    assert "ci-bot" in listed and "infer,feedback" in listed and "30/min" in listed and key not in listed
    code, _, err = _tuneloop(capsys, "keys", "add", "ci-bot", "--scope", "infer", *db)
    assert code == 1 and "already exists" in err and "Traceback" not in err
    code, _, err = _tuneloop(capsys, "keys", "add", "x", "--scope", "root", *db)
    assert code == 1 and "unknown scope 'root'" in err
    assert _tuneloop(capsys, "keys", "revoke", "ci-bot", *db)[0] == 0
    assert "revoked" in _tuneloop(capsys, "keys", "list", *db)[1]
    assert _tuneloop(capsys, "keys", "revoke", "ci-bot", *db)[0] == 1
    _, audit, _ = _tuneloop(capsys, "keys", "audit", *db)
    assert [json.loads(line)["action"] for line in audit.splitlines()] == ["key.add", "key.revoke"]
