"""Two `tuneloop serve` replicas on loopback share one PostgreSQL store while 16 concurrent clients
(the official openai client, feedback over httpx) go through both for TUNELOOP_REPLICA_TEST_SECONDS
(default 30); one replica is SIGKILLed mid-run and restarted on its port.

It must show: every request that got a 2xx is in the store with status 200; the feedback for each
is stored exactly once, though every client also replays it on the other replica (a retry after a
lost response) with the same Idempotency-Key; the surviving replica answers no 5xx; the killed one
serves again after its restart; and an API key stored once works on both.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import openai
import pytest
from store_support import postgres_schema

from tuneloop.serve.access import add_key
from tuneloop.serve.store import Store

SECONDS = float(os.environ.get("TUNELOOP_REPLICA_TEST_SECONDS", "30"))
CLIENTS = 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Replica:
    """One `tuneloop serve` process on a fixed loopback port (so a restart comes back at the same URL)."""

    def __init__(self, name: str, model_dir, db: str, log_dir):
        self.name, self.db, self.port = name, db, _free_port()
        self.args = [sys.executable, "-m", "tuneloop.cli.main", "serve", "--model", f"tiny={model_dir}",
                     "--port", str(self.port), "--db", db, "--threads", "1", "--max-tokens-limit", "16"]
        self.log = log_dir / f"{name}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def spawn(self) -> Replica:
        self.process = subprocess.Popen(self.args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        return self

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"replica {self.name} exited with {self.process.returncode}: "
                            f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        pytest.fail(f"replica {self.name} did not become healthy in {timeout:g} s")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Outcomes:
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict[str, Counter] = field(default_factory=lambda: {"a": Counter(), "b": Counter()})
    completed: dict[str, str] = field(default_factory=dict)  # completion id -> the replica that answered 2xx
    feedback_stored: dict[str, int] = field(default_factory=dict)  # completion id -> its feedback row's id
    replays: Counter = field(default_factory=Counter)  # the replay's "replayed" flag
    errors: list[str] = field(default_factory=list)  # answers that were neither 2xx nor a connection failure

    def status(self, replica: str, status: int | str) -> None:
        with self.lock:
            self.statuses[replica][status] += 1


def _post_feedback(outcomes: Outcomes, urls: dict[str, str], order: list[str], body: dict, key: str, api_key: str):
    """POST /v1/feedback to the first replica of ``order`` that answers; the JSON of its 200."""
    for replica in order:
        try:
            answer = httpx.post(urls[replica] + "/v1/feedback", json=body, timeout=60,
                                headers={"Idempotency-Key": key, "Authorization": f"Bearer {api_key}"})
        except httpx.TransportError:
            outcomes.status(replica, "connection")
            continue
        outcomes.status(replica, answer.status_code)
        if answer.status_code == 200:
            return answer.json()
        with outcomes.lock:
            outcomes.errors.append(f"feedback on {replica}: {answer.status_code} {answer.text[:200]}")
        return None
    return None


def _client(number: int, urls: dict[str, str], api_key: str, stop: threading.Event, outcomes: Outcomes) -> None:
    clients = {r: openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=60)
               for r, url in urls.items()}
    i = 0
    while not stop.is_set():
        i += 1
        replica = "ab"[(number + i) % 2]  # both replicas, alternately
        other = "b" if replica == "a" else "a"
        try:
            completion = clients[replica].chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"client {number} question {i}"}], max_tokens=4)
        except openai.APIConnectionError:  # the killed replica: the client goes on with the other one
            outcomes.status(replica, "connection")
            continue
        except openai.APIStatusError as e:
            outcomes.status(replica, e.status_code)
            with outcomes.lock:
                outcomes.errors.append(f"completion on {replica}: {e.status_code} {e.message[:200]}")
            continue
        outcomes.status(replica, 200)
        with outcomes.lock:
            outcomes.completed[completion.id] = replica
        body, key = {"completion_id": completion.id, "rating": 1 if i % 2 else -1}, f"fb-{completion.id}"
        first = _post_feedback(outcomes, urls, [replica, other], body, key, api_key)
        replay = _post_feedback(outcomes, urls, [other, replica], body, key, api_key)  # a retry: must not store twice
        with outcomes.lock:
            if first is not None:
                outcomes.feedback_stored[completion.id] = first["rating"]
            if replay is not None:
                outcomes.replays[replay["replayed"]] += 1


@pytest.mark.slow  # two server processes under load for 30 s, one killed and restarted
@pytest.mark.postgres
def test_two_replicas_on_one_postgres_survive_a_sigkill(tiny_model_dir, tmp_path):
    with postgres_schema("replicas") as (_schema, db):
        # A key stored once in the shared store: both replicas (and the restarted one) must accept it.
        store = Store(db)
        api_key = add_key(store.engine, "load-test", ["infer", "feedback"], actor="test")
        store.close()
        replicas = {name: Replica(name, tiny_model_dir, db, tmp_path) for name in "ab"}
        outcomes, stop = Outcomes(), threading.Event()
        try:
            spawned = time.monotonic()
            for replica in replicas.values():  # both load at once
                replica.spawn()
            for replica in replicas.values():
                replica.wait_healthy()
            timings = {"start_s": time.monotonic() - spawned}
            urls = {name: r.url for name, r in replicas.items()}
            threads = [threading.Thread(target=_client, args=(n, urls, api_key, stop, outcomes)) for n in range(CLIENTS)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            time.sleep(SECONDS * 0.25)
            wait_until = time.monotonic() + 120  # kill under load: once b has answered a few (a slow machine)
            while outcomes.statuses["b"][200] < 4 and time.monotonic() < wait_until:
                time.sleep(0.1)
            replicas["b"].kill()
            killed, killed_at = time.monotonic(), outcomes.statuses["b"][200]
            time.sleep(1)
            replicas["b"].spawn().wait_healthy()
            timings["down_s"] = time.monotonic() - killed
            served_before_restart = outcomes.statuses["b"][200]
            # Run to the end, and at least 3 s after the restart (on a loaded machine it may be slow).
            time.sleep(max(3.0, SECONDS - (time.monotonic() - started)))
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            timings["load_s"] = time.monotonic() - started
        finally:
            stop.set()
            for replica in replicas.values():
                replica.stop()

        a, b = outcomes.statuses["a"], outcomes.statuses["b"]
        print(f"replica a: {dict(a)}; replica b: {dict(b)}; {len(outcomes.completed)} completions; "
              + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        assert not [s for s in a if s == "connection" or s >= 500], f"the surviving replica failed: {a}"
        assert not [s for s in b if s != "connection" and s >= 500], b
        assert not outcomes.errors, outcomes.errors[:5]
        assert killed_at > 0 and b["connection"] > 0, "the kill did not happen under load"
        assert b[200] > served_before_restart, "the restarted replica served nothing"
        assert len(outcomes.completed) >= 2 * CLIENTS, "too few requests to mean anything"

        store = Store(db)
        try:
            stored = {r["id"]: r["status"] for r in store.requests()}
            feedback = Counter(f["completion_id"] for f in store.feedback())
        finally:
            store.close()
        missing = [cid for cid in outcomes.completed if stored.get(cid) != 200]
        assert not missing, f"{len(missing)} of {len(outcomes.completed)} 2xx completions are not in the store"
        assert set(outcomes.feedback_stored) == set(outcomes.completed)  # every 2xx got its feedback in
        assert {cid: feedback[cid] for cid in outcomes.completed} == {cid: 1 for cid in outcomes.completed}
        assert sum(feedback.values()) == len(outcomes.completed)  # and nothing else was stored
        assert outcomes.replays[True] == len(outcomes.completed)  # every replay was recognised as one
