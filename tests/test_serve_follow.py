"""``serve --model registry:NAME@production`` follows promotions and rollbacks with zero failed requests.

Clients keep sending requests (plain and streaming) from several threads while the alias moves
v1 -> v2 -> v1; every response is counted, and every one must be a 200 with a complete answer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import openai
import pytest
from serve_support import make_adapter_run

from tuneloop.registry.lineage import version_from_run
from tuneloop.registry.store import Registry
from tuneloop.serve.app import build
from tuneloop.serve.runner import ServerThread
from tuneloop.serve.settings import ServeSettings

HELLO = [{"role": "user", "content": "What is your return window?"}]


def _answer(client) -> str:
    response = client.chat.completions.create(model="support", messages=HELLO, max_tokens=8, temperature=0)
    return response.choices[0].message.content


def _wait_for(server_url: str, version: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(server_url + "/health", timeout=10).json()
        if health["registry"]["versions"].get("registry:support@production") == version and \
                not health["registry"]["draining"]:
            return health
        time.sleep(0.1)
    raise AssertionError(f"the server did not switch to v{version}: {health}")


class Traffic:
    """Threads that send requests until stopped, counting every outcome."""

    def __init__(self, url: str, threads: int = 3):
        self.url, self.stop, self.outcomes, self.lock = url, threading.Event(), Counter(), threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=60)
        while not self.stop.is_set():
            try:
                if index % 2:
                    chunks = list(client.chat.completions.create(model="support", messages=HELLO, max_tokens=6,
                                                                 stream=True))
                    outcome = "ok" if chunks and chunks[-1].choices[0].finish_reason else "incomplete stream"
                else:
                    response = client.chat.completions.create(model="support", messages=HELLO, max_tokens=6)
                    outcome = "ok" if response.choices[0].finish_reason else "no finish"
            except openai.APIStatusError as e:
                outcome = f"http {e.status_code}"
            except openai.APIError as e:  # connection dropped, timeout
                outcome = f"dropped: {type(e).__name__}"
            with self.lock:
                self.outcomes[outcome] += 1

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.mark.slow
def test_promotion_and_rollback_switch_versions_with_no_failed_request(tiny_model_dir, tmp_path):
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    registry = Registry(db)
    for seed in (1, 2):
        run = make_adapter_run(tiny_model_dir, tmp_path / f"run-{seed}", seed=seed)
        registry.register(version_from_run("support", run), alias="production" if seed == 1 else "candidate")
    served = build(["registry:support@production"], ServeSettings(db_url=db, registry_poll_s=0.2,
                                                                   max_tokens_limit=32, batch_wait_ms=2))
    try:
        with ServerThread(served.app) as thread:
            client = openai.OpenAI(base_url=thread.url + "/v1", api_key="none", max_retries=0)
            assert {m.id for m in client.models.list()} >= {"support"}
            v1_answer = _answer(client)
            with Traffic(thread.url) as traffic:
                time.sleep(1.0)
                registry.promote("support", 2, actor="test")
                _wait_for(thread.url, 2)
                v2_answer = _answer(client)
                time.sleep(0.5)
                registry.rollback("support", actor="test")
                health = _wait_for(thread.url, 1)
                back_answer = _answer(client)
                time.sleep(0.5)
    finally:
        served.close()
        registry.close()
    assert v2_answer != v1_answer and back_answer == v1_answer
    assert health["registry"]["swaps"] == 2
    outcomes = dict(traffic.outcomes)
    assert set(outcomes) == {"ok"}, outcomes  # no 5xx, no dropped connection, no incomplete stream
    assert outcomes["ok"] >= 6
