"""``tuneloop improve`` rounds on the tiny model, with real processes and a real serving store:

- two rounds started at once: one runs and promotes, the other exits 1 saying a round is in progress;
- a round killed with SIGKILL mid-training leaves the registry (and so every server) as it was;
- a round on poisoned corrections is rejected by the gate and production does not move.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tuneloop.improve import ImproveSettings, run_round
from tuneloop.improve.lock import RoundLock
from tuneloop.paths import write_jsonl_atomic
from tuneloop.registry.lineage import version_from_run
from tuneloop.registry.store import Registry
from tuneloop.serve.store import FeedbackRow, RequestRow, Store

SYSTEM = {"role": "system", "content": "You are the support assistant of Brightcart."}
NEW_ANSWER = "You can return any item within 60 days of delivery."
QUESTIONS = ["How long do I have to return something?", "What is your return window?",
             "How many days do I have to return an item?", "What's the deadline for returns?",
             "Is there a time limit on returns?", "How long is the return period?",
             "Until when can I send an item back?", "What is the return policy time frame?",
             "Can I still return my order?", "Returning stuff: how many days after delivery?",
             "How much time do I get to bring a purchase back?", "When does the return window close?"]
ROUND_FLAGS = ["--steps", "24", "--learning-rate", "1e-2"]
pytestmark = pytest.mark.slow


def _chat(question: str, answer: str) -> dict:
    return {"messages": [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def add_feedback(db: str, tag: str, correction) -> None:
    """Each question asked once and answered wrongly; the user rates it down and corrects it."""
    store = Store(db)
    for i, question in enumerate(QUESTIONS):
        rid = f"chatcmpl-{tag}{i}"
        store.record_request(RequestRow(rid, "support", "chat", 5.0, 200, prompt=[SYSTEM, {"role": "user", "content": question}],
                                        response="You can return items within 45 days."))
        store.record_feedback(FeedbackRow(rid, "support", -1, correction=correction(i)))
    store.close()


@pytest.fixture
def loop(tiny_model_dir, tmp_path):
    """A registry of its own per test (v1 in production, no rounds), so no test builds on another's."""
    tmp = tmp_path
    db = f"sqlite:///{tmp / 'serve.db'}"
    old = [_chat(f"What does product {i} cost?", f"Product {i} costs ${i}.99.") for i in range(40)]
    write_jsonl_atomic(tmp / "v1-train.jsonl", old)
    write_jsonl_atomic(tmp / "returns.jsonl", [_chat(q, NEW_ANSWER) for q in QUESTIONS[:6]])
    registry = Registry(db)
    registry.register(version_from_run("support", tiny_model_dir, train_data=str(tmp / "v1-train.jsonl")),
                      alias="production")
    registry.close()
    return tmp, db


def _improve(db: str, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", "improve", "--model", "support", "--db", db,
                             "--once", "--out", str(out), *ROUND_FLAGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 300) -> list[str]:
    """Read proc's stderr until a line contains ``text``; the rest keeps draining in a thread."""
    seen, found = [], threading.Event()

    def read():
        for line in proc.stderr:
            seen.append(line)
            if text in line:
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout) and any(text in line for line in seen), "".join(seen[-20:])
    return seen


def _state(db: str) -> tuple:
    registry = Registry(db)
    try:
        return len(registry.versions("support")), registry.aliases("support"), len(registry.rounds("support"))
    finally:
        registry.close()


def test_two_rounds_at_once_one_runs_and_promotes_the_other_says_a_round_is_in_progress(loop):
    tmp, db = loop
    add_feedback(db, "a", lambda i: NEW_ANSWER)
    first = _improve(db, tmp / "rounds")
    try:
        log = _wait_for_line(first, "round in")  # it holds the lock now
        second = _improve(db, tmp / "rounds-2")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1 and "an improve round for 'support' is in progress" in err, err
        assert first.wait(timeout=600) == 0, "".join(log[-30:])
    finally:
        first.kill()  # no-op once it has finished; never leave a round running after a failure
    summary = first.stdout.read()
    assert summary.startswith("promoted: v2 is production"), summary
    versions, aliases, rounds = _state(db)
    assert (versions, aliases.get("production"), rounds) == (2, 2, 1)
    registry = Registry(db)
    card = registry.get("support", 2).model_card  # the candidate keeps its model card
    registry.close()
    assert card.startswith("---\n") and "base_model:" in card
    assert list((tmp / "rounds").glob("round-1-*/report.html"))
    assert not (tmp / "rounds-2").exists()  # the refused process wrote nothing


def test_a_round_killed_mid_training_leaves_the_registry_as_it_was(loop):
    tmp, db = loop
    before = _state(db)
    add_feedback(db, "p", lambda i: f"zq{i} vok{i * 7} pell{i * 13} {'ra' * i}")  # poisoned: noise
    proc = _improve(db, tmp / "killed")
    try:
        _wait_for_line(proc, "training a candidate")
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert _state(db) == before
    with RoundLock("support", db):  # the kernel released the dead round's lock
        pass


def _settings(tmp: Path, db: str, **knobs) -> ImproveSettings:
    return ImproveSettings(name="support", db_url=db, out_dir=str(tmp / "rounds"), **knobs)


def test_a_round_on_poisoned_corrections_is_rejected_and_production_stays(loop):
    tmp, db = loop
    add_feedback(db, "a", lambda i: NEW_ANSWER)  # first a good round: production becomes v2, which knows
    good = run_round(_settings(tmp, db, steps=24, learning_rate=1e-2))  # the answer of returns.jsonl
    assert (good["status"], good["production"]) == ("promoted", 2), good.get("gate")
    add_feedback(db, "p", lambda i: f"zq{i} vok{i * 7} pell{i * 13} {'ra' * i}")  # poisoned: noise
    result = run_round(_settings(tmp, db, steps=24, learning_rate=1e-2, regression_data=str(tmp / "returns.jsonl")))
    assert result["status"] == "rejected", result["gate"]
    assert not result["gate"]["passed"]
    versions, aliases, rounds = _state(db)
    assert aliases["production"] == 2 and aliases["candidate"] == 3 and versions == 3 and rounds == 2
    again = run_round(_settings(tmp, db))
    assert again["status"] == "waiting"  # the poisoned feedback was consumed, not retried forever


def test_a_dpo_round_trains_on_the_preference_pairs_and_is_gated_like_sft(loop):
    tmp, db = loop
    add_feedback(db, "d", lambda i: NEW_ANSWER)  # each correction is also a pair: correction > served answer
    result = run_round(_settings(tmp, db, method="dpo", steps=24, learning_rate=1e-2))
    counts = result["counts"]
    assert counts["train_pairs"] == counts["train_corrections"] and counts["heldout"] >= 1, counts
    assert counts["train_records"] == counts["train_pairs"] * 4  # repeat 4, no replay in a DPO round
    round_dir = Path(result["round_dir"])
    recipe = (round_dir / "runs" / "candidate" / "recipe.resolved.yaml").read_text()
    assert "method: dpo" in recipe
    pairs = [line for line in (round_dir / "data" / "train.jsonl").read_text().splitlines()]
    assert all('"chosen"' in p and '"rejected"' in p for p in pairs)
    gain = result["gate"]["checks"][0]
    assert gain["metric"] == "fact_accuracy"  # the held-out corrections changed "45 days" to "60 days"
    assert result["status"] == ("promoted" if result["gate"]["passed"] else "rejected")
    assert (result["status"] == "promoted") == (gain["ci95"][0] > 0)
