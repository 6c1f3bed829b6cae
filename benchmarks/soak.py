"""Soak: N clients for M minutes against ``tuneloop serve`` (its own process, as users run it), each
asking, sometimes streaming, and rating about half the answers through ``/v1/feedback``.

    .venv/bin/python benchmarks/soak.py [--clients 16] [--minutes 10] [--model smollm2-135m-instruct]

What it checks, from the outside:
- p95 latency per minute stays level (last minute vs first full minute);
- the server's RSS stays flat after warm-up (growth beyond ``--rss-bound-mb`` fails);
- every stored row is accounted for: each request a client sent is in the store once, with the
  status the client got, and each feedback the server accepted is stored.
Writes benchmarks/results/soak.json and soak.png.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, RESULTS, ensure_workdir, write_result  # noqa: E402

QUESTIONS = ["Where is my order?", "How do I reset my password?", "Can I change my delivery address?",
             "What is your refund policy?", "My card was charged twice.", "Do you sell gift cards?",
             "How do I cancel my subscription?", "The app crashes when I open it.", "Can I pay with PayPal?"]


def start_server(model: str, workdir: Path, threads: int | None) -> tuple[subprocess.Popen, str, Path]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = workdir / "soak.db"
    db.unlink(missing_ok=True)
    args = [PYTHON, "-m", "tuneloop.cli.main", "serve", "--model", model, "--port", str(port),
            "--db", f"sqlite:///{db}", "--request-timeout", "600", "--max-tokens-limit", "64"]
    args += ["--threads", str(threads)] if threads else []
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(workdir / "soak-server.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 1800  # a loaded machine can take many minutes to import torch and load
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {(workdir / 'soak-server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url, db
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Ledger:
    """What the clients saw: every request and feedback with its outcome (thread-safe appends)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # {t, latency, status, id, stream}
        self.feedback: list[dict] = []  # {completion_id, rating, status}

    def add(self, kind: str, row: dict) -> None:
        with self.lock:
            getattr(self, kind).append(row)


def client_loop(url: str, model: str, max_tokens: int, stop_at: float, ledger: Ledger, seed: int, t0: float) -> None:
    import httpx
    import openai

    rng = random.Random(seed)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    http = httpx.Client(base_url=url, timeout=600)
    while time.time() < stop_at:
        question = rng.choice(QUESTIONS) + f" (customer {rng.randrange(10_000)})"
        stream = rng.random() < 0.3
        started = time.perf_counter()
        completion_id, status = None, 200
        try:
            messages = [{"role": "user", "content": question}]
            if stream:
                for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                            stream=True):
                    completion_id = chunk.id
            else:
                completion_id = client.chat.completions.create(model=model, messages=messages,
                                                               max_tokens=max_tokens).id
        except openai.APIStatusError as e:
            status = e.status_code
        except openai.APIConnectionError:
            status = -1  # no answer at all: counted, and it fails the soak
        ledger.add("requests", {"t": time.time() - t0, "latency": time.perf_counter() - started, "status": status,
                                "id": completion_id, "stream": stream})
        if status == 200 and rng.random() < 0.5:
            rating = rng.choice([-1, 1])
            response = http.post("/v1/feedback", json={"completion_id": completion_id, "rating": rating,
                                                       "comment": "soak"})
            ledger.add("feedback", {"completion_id": completion_id, "rating": rating, "status": response.status_code})


def sample_rss(pid: int, stop: threading.Event, samples: list, t0: float, every: float = 5.0) -> None:
    while not stop.wait(every):
        try:
            samples.append((time.time() - t0, rss_mb(pid)))
        except OSError:
            return


def account_for_rows(db: Path, ledger: Ledger) -> dict:
    """Compare the store with what the clients saw, row by row."""
    from tuneloop.serve.store import Store

    store = Store(f"sqlite:///{db}")
    stored = {row["id"]: row for row in store.requests()}
    feedback = store.feedback()
    store.close()
    answered = [r for r in ledger.requests if r["status"] == 200]
    missing = [r["id"] for r in answered if r["id"] not in stored]
    wrong_status = [r["id"] for r in answered if r["id"] in stored and stored[r["id"]]["status"] != 200]
    accepted_feedback = [f for f in ledger.feedback if f["status"] == 200]
    stored_feedback = {(f["completion_id"], f["rating"]) for f in feedback}
    return {"requests_sent": len(ledger.requests), "requests_answered_200": len(answered),
            "requests_other_status": len(ledger.requests) - len(answered),
            "rows_in_store": len(stored), "answered_but_missing_from_store": len(missing),
            "stored_with_another_status": len(wrong_status),
            "feedback_sent": len(ledger.feedback), "feedback_accepted": len(accepted_feedback),
            "feedback_rows_in_store": len(feedback),
            "accepted_feedback_missing": sum((f["completion_id"], f["rating"]) not in stored_feedback
                                             for f in accepted_feedback),
            "all_accounted_for": not missing and not wrong_status and len(stored) == len(ledger.requests)
            and len(feedback) == len(accepted_feedback)}


def per_minute(ledger: Ledger, minutes: float) -> list[dict]:
    windows = []
    for minute in range(int(minutes + 0.999)):
        latencies = sorted(r["latency"] for r in ledger.requests
                           if r["status"] == 200 and minute * 60 <= r["t"] < (minute + 1) * 60)
        if latencies:
            windows.append({"minute": minute + 1, "requests": len(latencies),
                            "p50_s": round(statistics.median(latencies), 3),
                            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3)})
    return windows


def plot(windows: list[dict], rss: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot([w["minute"] for w in windows], [w["p95_s"] for w in windows], marker="o", label="p95")
    left.plot([w["minute"] for w in windows], [w["p50_s"] for w in windows], marker="o", label="p50")
    left.set(xlabel="minute", ylabel="latency (s)", title="latency per minute")
    left.legend()
    right.plot([t / 60 for t, _ in rss], [m for _, m in rss])
    right.set(xlabel="minute", ylabel="server RSS (MB)", title="server memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="server's CPU threads")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured after this")
    parser.add_argument("--rss-bound-mb", type=float, default=100.0)
    parser.add_argument("--p95-ratio-bound", type=float, default=2.0)
    parser.add_argument("--label", default="", help="e.g. 'short run: machine loaded by parallel agents'")
    args = parser.parse_args()

    workdir = ensure_workdir()
    process, url, db = start_server(args.model, workdir, args.threads)
    ledger, rss, stop = Ledger(), [], threading.Event()
    t0 = time.time()
    rss.append((0.0, rss_mb(process.pid)))
    sampler = threading.Thread(target=sample_rss, args=(process.pid, stop, rss, t0), daemon=True)
    sampler.start()
    stop_at = t0 + args.minutes * 60
    workers = [threading.Thread(target=client_loop, args=(url, args.model, args.max_tokens, stop_at, ledger, i, t0))
               for i in range(args.clients)]
    for worker in workers:
        worker.start()
    from tqdm import tqdm

    with tqdm(total=round(args.minutes * 60), desc="soak", unit="s") as bar:
        while any(w.is_alive() for w in workers):
            time.sleep(5)
            bar.n = min(bar.total, round(time.time() - t0))
            bar.set_postfix(requests=len(ledger.requests), rss_mb=round(rss[-1][1]))
    stop.set()
    duration = time.time() - t0
    process.send_signal(signal.SIGINT)  # a clean stop: the writer thread drains before exit
    process.wait(timeout=120)

    windows = per_minute(ledger, duration / 60)
    full = [w for w in windows if w["minute"] * 60 <= duration]  # drop the last partial minute
    after_warmup = [m for t, m in rss if t >= args.warmup_s] or [rss[-1][1]]
    accounting = account_for_rows(db, ledger)
    p95_ratio = round(full[-1]["p95_s"] / full[0]["p95_s"], 2) if len(full) >= 2 else None
    growth = round(max(after_warmup) - after_warmup[0], 1)
    result = {
        "label": args.label, "model": args.model, "clients": args.clients, "minutes_planned": args.minutes,
        "seconds_run": round(duration, 1), "max_tokens": args.max_tokens, "per_minute": windows,
        "p95_last_over_first_full_minute": p95_ratio,
        "rss_mb": {"start": round(rss[0][1], 1), "after_warmup": round(after_warmup[0], 1),
                   "max_after_warmup": round(max(after_warmup), 1), "end": round(rss[-1][1], 1),
                   "growth_after_warmup": growth, "bound": args.rss_bound_mb},
        "rows": accounting,
        "passed": {"p95_stable": p95_ratio is not None and p95_ratio <= args.p95_ratio_bound,
                   "rss_flat": growth <= args.rss_bound_mb, "rows_accounted_for": accounting["all_accounted_for"],
                   "no_connection_errors": not any(r["status"] == -1 for r in ledger.requests)},
    }
    plot(windows, rss, RESULTS / "soak.png")
    write_result("soak", result)
    print(json.dumps({k: result[k] for k in ("p95_last_over_first_full_minute", "rss_mb", "rows", "passed")}, indent=1))


if __name__ == "__main__":
    main()
