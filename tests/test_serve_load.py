"""A bounded load test on loopback: 16 concurrent clients for TUNELOOP_LOAD_TEST_SECONDS (default 30)
against ``tuneloop serve`` in its own process, then a restart.

It must show zero 5xx (and no failed connections), every request and every feedback row in the
store afterwards, and the same rows, still usable for feedback, after the server restarts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import openai
import pytest
from serve_support import make_adapter_run

from tuneloop.serve.store import Store

SECONDS = float(os.environ.get("TUNELOOP_LOAD_TEST_SECONDS", "30"))
CLIENTS = 16
KEY = "load-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(models: list[str], db: str, log_path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    args = [sys.executable, "-m", "tuneloop.cli.main", "serve", "--port", str(port), "--db", db,
            "--api-key", KEY, "--max-tokens-limit", "64"]
    for model in models:
        args += ["--model", model]
    process = subprocess.Popen(args, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {open(log_path).read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("server did not become healthy in 180 s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LoadResult:
    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.failures: list[str] = []
        self.completion_ids: list[str] = []
        self.feedback_sent = 0


def _client_loop(number: int, url: str, deadline: float, result: LoadResult) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    models = ["tiny-llama", "support"]
    i = 0
    while time.monotonic() < deadline:
        i += 1
        model = models[(number + i) % 2]
        messages = [{"role": "user", "content": f"client {number} question {i}"}]
        try:
            if i % 3 == 0:
                chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=8,
                                                             stream=True))
                completion_id = chunks[0].id
            elif i % 3 == 1:
                completion_id = client.chat.completions.create(model=model, messages=messages, max_tokens=8).id
            else:
                completion_id = client.completions.create(model=model, prompt=f"{number}:{i}", max_tokens=8).id
            status = 200
            feedback = httpx.post(url + "/v1/feedback", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                                  json={"completion_id": completion_id, "rating": 1 if i % 2 else -1,
                                        "correction": f"better {number}-{i}" if i % 4 == 0 else None})
            with result.lock:
                result.completion_ids.append(completion_id)
                result.statuses[feedback.status_code] += 1
                result.feedback_sent += feedback.status_code == 200
        except openai.APIStatusError as e:
            status = e.status_code
        except Exception as e:  # connection reset, timeout, protocol error: all failures
            status = None
            with result.lock:
                result.failures.append(f"{type(e).__name__}: {e}")
        with result.lock:
            result.statuses[status] += 1


@pytest.mark.slow  # a server process under load, restarted
def test_sixteen_clients_then_restart(tiny_model_dir, tmp_path):
    support = make_adapter_run(tiny_model_dir, tmp_path / "support", seed=3)
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    models = [str(tiny_model_dir), f"support={support}"]
    log = tmp_path / "server.log"
    process, url = _start(models, db, log)
    result = LoadResult()
    try:
        deadline = time.monotonic() + SECONDS
        threads = [threading.Thread(target=_client_loop, args=(n, url, deadline, result)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = httpx.get(url + "/metrics").text
    finally:
        _stop(process)

    assert not result.failures, result.failures[:5]
    assert not [s for s in result.statuses if s is None or s >= 500], result.statuses
    assert set(result.statuses) == {200}, result.statuses
    assert len(result.completion_ids) >= CLIENTS, "the load test made too few requests to mean anything"
    assert 'tuneloop_batch_size_bucket{le="1.0",model="tiny-llama"}' in metrics
    _assert_all_stored(db, result)

    process, url = _start(models, db, log)  # restart on the same database
    try:
        _assert_all_stored(db, result)
        old = result.completion_ids[0]
        again = httpx.post(url + "/v1/feedback", headers={"Authorization": f"Bearer {KEY}"},
                           json={"completion_id": old, "rating": 1})
        assert again.status_code == 200, again.text
    finally:
        _stop(process)


def _assert_all_stored(db: str, result: LoadResult) -> None:
    store = Store(db)
    try:
        stored = {r["id"]: r for r in store.requests()}
        missing = [cid for cid in result.completion_ids if cid not in stored]
        assert not missing, f"{len(missing)} of {len(result.completion_ids)} requests not stored"
        assert all(stored[cid]["status"] == 200 for cid in result.completion_ids)
        feedback = Counter(f["completion_id"] for f in store.feedback())
        assert sum(feedback[cid] for cid in result.completion_ids) >= result.feedback_sent
        assert result.feedback_sent == len(result.completion_ids)
    finally:
        store.close()
