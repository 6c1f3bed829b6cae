"""``tuneloop quickstart --loop``, the second act: the store changes a policy, users correct the
served model, one ``improve`` round runs, and the served answer changes, without a restart.

    from tuneloop.quickstart.loop_act import run_loop_act
    summary = run_loop_act("quickstart-out/loop", "quickstart-out/runs/brightcart-support")

Steps (all through the library's own parts, over loopback HTTP with the official ``openai`` client):

1. register the production model (the quickstart's tuned run) in a registry inside ``out_dir`` and
   ``serve --model registry:brightcart@production`` in a background thread;
2. Brightcart's return window goes from 45 to 60 days (:data:`CHANGE`);
3. simulated users ask the return-window training phrasings; each answer is rated against the
   store's new fact table (thumbs up when it says "60 days", else thumbs down and the support team's
   corrected answer), and other facts are asked and rated too;
4. ``improve`` runs one round: its held-out set comes from the corrections, its regression set is
   the quickstart's held-out questions on the facts that did not change;
5. while a client keeps sending requests, the server follows the promotion; the act then asks the
   held-out return-window questions again and reports answers, satisfaction before and after, and
   the number of failed requests during the switch (expected: 0).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tuneloop.improve import ImproveSettings, run_round
from tuneloop.models.loading import resolve_model
from tuneloop.paths import make_dir, read_jsonl, write_json_atomic, write_jsonl_atomic
from tuneloop.quickstart.make_dataset import DATA_DIR, HELDOUT_FILE
from tuneloop.quickstart.store_facts import POLICIES, SYSTEM_PROMPT
from tuneloop.registry.lineage import version_from_run
from tuneloop.registry.store import Registry
from tuneloop.serve.app import build
from tuneloop.serve.runner import ServerThread
from tuneloop.serve.settings import ServeSettings
from tuneloop.serve.store import Store

MODEL_NAME = "brightcart"


@dataclass(frozen=True)
class PolicyChange:
    key: str
    old: str
    new: str


CHANGE = PolicyChange("returns.window", "45 days", "60 days")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def changed_fact():
    return next(f for f in POLICIES if f.key == CHANGE.key)


def new_answers() -> list[str]:
    return [a.replace(CHANGE.old, CHANGE.new) for a in changed_fact().answers]


def regression_set(out_dir: Path) -> Path:
    """The quickstart's held-out questions on every fact that did not change."""
    records = [r for r in read_jsonl(DATA_DIR / HELDOUT_FILE) if not r["id"].startswith(CHANGE.key + ".")]
    path = out_dir / "regression.jsonl"
    write_jsonl_atomic(path, records)
    return path


def _messages(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


class SimulatedUsers:
    """Ask, rate against the (new) fact table, correct wrong answers."""

    def __init__(self, url: str, model: str = MODEL_NAME):
        import httpx
        import openai

        self.client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        self.http, self.url, self.model = httpx, url, model

    def ask(self, question: str, max_tokens: int = 40):
        response = self.client.chat.completions.create(model=self.model, messages=_messages(question),
                                                       max_tokens=max_tokens, temperature=0)
        return response.id, response.choices[0].message.content

    def rate(self, completion_id: str, correct: bool, correction: str | None) -> None:
        body = {"completion_id": completion_id, "rating": 1 if correct else -1}
        if not correct and correction:
            body["correction"] = correction
        self.http.post(self.url + "/v1/feedback", json=body, timeout=60).raise_for_status()

    def session(self, questions: list[tuple[str, str, list[str]]]) -> list[dict]:
        """(question, correction, facts) each: ask, rate, correct; returns what happened."""
        rows = []
        for question, correction, facts in questions:
            completion_id, answer = self.ask(question)
            correct = all(f.lower() in answer.lower() for f in facts)
            self.rate(completion_id, correct, correction)
            rows.append({"question": question, "answer": answer, "correct": correct})
        return rows


class Traffic:
    """A client sending requests all the time, counting outcomes (the no-downtime evidence)."""

    def __init__(self, users: SimulatedUsers, question: str):
        self.users, self.question = users, question
        self.outcomes: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import openai

        while not self._stop.is_set():
            try:
                self.users.ask(self.question, max_tokens=8)
                self.outcomes["ok"] += 1
            except openai.APIStatusError as e:
                self.outcomes[f"http {e.status_code}"] += 1
            except openai.APIError as e:
                self.outcomes[f"dropped: {type(e).__name__}"] += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=300)


def user_questions(rounds: int) -> list[tuple[str, str, list[str]]]:
    """The changed fact's training phrasings (``rounds`` times, answers rotating) plus one question on
    each of a few unchanged policies, whose correction is the team's usual answer."""
    fact, answers = changed_fact(), new_answers()
    asked = [(q, answers[(i + r) % len(answers)], [CHANGE.new])
             for r in range(rounds) for i, q in enumerate(fact.questions)]
    asked += [(f.questions[0], f.answers[0], list(f.facts)) for f in unchanged_sample()]
    return asked


def unchanged_sample(count: int = 6) -> list:
    """A spread of the policies that did not change (asking all of them would triple the act's time)."""
    others = [f for f in POLICIES if f.key != CHANGE.key]
    return others[:: max(1, len(others) // count)][:count]


def _satisfaction(db_url: str, model: str, since_id: int = 0) -> tuple[float | None, int]:
    """(share of thumbs up among ratings after feedback ``since_id``, the last feedback id)."""
    store = Store(db_url)
    try:
        rated = [f["rating"] for f in store.feedback() if f["model"] == model and f["id"] > since_id
                 and f["rating"] is not None]
        last = max((f["id"] for f in store.feedback()), default=0)
    finally:
        store.close()
    return (sum(r > 0 for r in rated) / len(rated) if rated else None), last


def _wait_for_version(url: str, version: int, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        registry = httpx.get(url + "/health", timeout=30).json().get("registry", {})
        if f"registry:{MODEL_NAME}@production" in registry.get("versions", {}) and \
                registry["versions"][f"registry:{MODEL_NAME}@production"] == version and not registry["draining"]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the server did not switch to v{version} in {timeout:.0f} s")


def run_loop_act(out_dir, production: str, improve: ImproveSettings | None = None, repeats: int = 1) -> dict:
    """The whole act; returns (and writes to loop.json) its summary."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if (out_dir / "serve.db").is_file():  # a previous act's registry would point at an old run
        shutil.rmtree(out_dir)
    out_dir = make_dir(out_dir)
    db = f"sqlite:///{out_dir / 'serve.db'}"
    regression = regression_set(out_dir)
    registry = Registry(db)
    if "production" not in (registry.aliases(MODEL_NAME) if MODEL_NAME in registry.names() else {}):
        resolve_model(production)  # refuses a directory that is no model before anything is registered
        registry.register(version_from_run(MODEL_NAME, Path(production), regression_data=str(regression),
                                           source="quickstart"), alias="production", actor="quickstart")
    # 60 LoRA steps of 4 examples at 2e-3, each correction 8 times, replay 3x that (the default):
    # the quickstart's model learnt "45 days" over 3 epochs, and fewer steps or repeats left its
    # held-out phrasings at 45 (benchmarks/results/loop_act.json has the run; about 2 minutes of
    # training on a 2-core CPU).
    settings = improve or ImproveSettings(name=MODEL_NAME, steps=60, batch_size=4, learning_rate=2e-3, repeat=8)
    settings = ImproveSettings(**{**settings.__dict__, "name": MODEL_NAME, "db_url": db,
                                  "out_dir": str(out_dir / "rounds")})
    served = build([f"registry:{MODEL_NAME}@production"],
                   ServeSettings(db_url=db, registry_poll_s=0.5, max_tokens_limit=64, threads=None))
    heldout = changed_fact().heldout
    try:
        with ServerThread(served.app) as thread:
            users = SimulatedUsers(thread.url)
            _log(f"\n== Loop act: Brightcart's return window changes from {CHANGE.old} to {CHANGE.new}")
            before = [{"question": q, "answer": users.ask(q)[1]} for q in heldout]
            feedback = users.session(user_questions(repeats))
            satisfaction_before, last_id = _satisfaction(db, MODEL_NAME)
            _log(f"   {len(feedback)} questions asked and rated; satisfaction {satisfaction_before:.0%}")
            with Traffic(users, heldout[0]) as traffic:
                result = run_round(settings)
                if result["status"] == "promoted":
                    _wait_for_version(thread.url, result["candidate"])
            after = [{"question": q, "answer": users.ask(q)[1]} for q in heldout]
            later = users.session([(q, None, [CHANGE.new]) for q in heldout] +
                                  [(f.heldout[0], None, list(f.facts)) for f in unchanged_sample()])
            satisfaction_after, _ = _satisfaction(db, MODEL_NAME, since_id=last_id)
    finally:
        served.close()
        registry.close()
    summary = {"change": CHANGE.__dict__, "round": {k: result.get(k) for k in ("status", "candidate", "production",
                                                                               "gate", "counts", "round_dir")},
               "before": before, "after": after, "answers_new_fact_before": _has(before), "answers_new_fact_after":
               _has(after), "satisfaction_before": satisfaction_before, "satisfaction_after": satisfaction_after,
               "later_feedback": later, "requests_during_switch": dict(traffic.outcomes),
               "seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(out_dir / "loop.json", summary)
    return summary


def _has(rows: list[dict]) -> int:
    return sum(CHANGE.new in r["answer"] for r in rows)
