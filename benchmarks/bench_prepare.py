"""Benchmark: ``data prepare`` on 100,000 synthetic support chats, near-duplicates and PII on.

    .venv/bin/python benchmarks/bench_prepare.py [--records 100000] [--model smollm2-135m-instruct|none]

The records imitate a support-chat corpus: a system prompt on some, a user question built from
templates (intents x products x phrasings), ~10% with PII (e-mails, phones, cards, IBANs, IPs, keys),
~5% near-duplicates (a word changed or added) and ~3% exact duplicates (case/punctuation changes).
The whole pipeline is timed from reading the JSONL file to writing every output, as the CLI runs it.
Prints records/s (wall clock, and per CPU-second: on a shared machine the wall clock also measures the
neighbours) and writes ``benchmarks/results/prepare.json`` with the per-stage seconds and a
description of the machine (CPU model, cores, load average, Python/torch/numpy versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTENTS = ["top up my card", "cancel a transfer", "change my PIN", "order a new card", "close my account",
           "dispute a charge", "update my address", "activate my card", "check my balance", "get a refund",
           "increase my limit", "report a lost card", "exchange currency", "set up direct debit",
           "verify my identity", "unlock my account", "add a payee", "download a statement"]
PRODUCTS = ["debit card", "credit card", "savings account", "mobile app", "virtual card", "premium plan",
            "business account", "joint account", "travel card", "student account"]
OPENERS = ["How do I", "Can you help me", "I need to", "What is the fastest way to", "Is it possible to",
           "Please tell me how to", "Why can't I", "Where can I", "I want to", "Could you explain how to"]
TAILS = ["", " today", " from abroad", " in the app", " without visiting a branch", " as soon as possible",
         " before my trip", " for my partner", " on the website", " this week"]
ANSWERS = ["You can do this in the app under {p} settings. It takes about {n} minutes.",
           "Open the {p} page, choose the option and confirm with your passcode. Fees: {n} EUR.",
           "We have started the request for your {p}. You will get an update within {n} days.",
           "For your {p}, go to Help, then Contact us. Our team answers within {n} hours."]
PII = ["My email is {first}.{last}{n}@example.com.", "Call me on +44 20 7946 {n:04d}.",
       "My card is 4111 1111 1111 1111.", "My IBAN is GB82 WEST 1234 5698 7654 32.",
       "I logged in from 192.168.{a}.{b}.", "My API key is sk-proj-{key}.", "My name is {First} {Last}."]
NAMES = ["anna", "ben", "chloe", "dev", "emma", "felix", "grace", "hugo", "ines", "jon"]
MERCHANTS = ["Tesco", "Amazon", "Uber", "Shell", "Zara", "Lidl", "Netflix", "Ryanair", "Ikea", "Apple", "Boots",
             "Costa", "Aldi", "Spotify", "Airbnb", "Booking.com", "Deliveroo", "H&M", "Currys", "Argos"]
CITIES = ["London", "Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Dublin", "Vienna", "Prague", "Warsaw",
          "Oslo", "Athens", "Zurich", "Brussels", "Amsterdam", "Milan", "Porto", "Krakow", "Seville", "Munich"]
DAYS = ["yesterday", "on Monday", "last week", "this morning", "two days ago", "on Friday night", "at the weekend"]
STEPS = ["If that does not work, restart the app.", "Keep your receipt until the refund arrives.",
         "You will get a push notification when it is done.", "Check that your app is up to date.",
         "Let us know if you need anything else.", "This does not affect your credit score.",
         "Your card stays active in the meantime.", "There is no fee for this service."]


def synthetic_record(rng: random.Random, i: int) -> dict:
    intent, product = rng.choice(INTENTS), rng.choice(PRODUCTS)
    question = (f"{rng.choice(OPENERS)} {intent} for my {product}{rng.choice(TAILS)}? It started {rng.choice(DAYS)} "
                f"after paying {rng.randrange(1, 900)}.{rng.randrange(100):02d} at {rng.choice(MERCHANTS)} in "
                f"{rng.choice(CITIES)}.")
    if rng.random() < 0.10:
        first, last = rng.choice(NAMES), rng.choice(NAMES)
        question += " " + rng.choice(PII).format(first=first, last=last, First=first.title(), Last=last.title(),
                                                 n=rng.randrange(10000), a=rng.randrange(256), b=rng.randrange(256),
                                                 key="".join(rng.choices("abcdefghijk0123456789", k=24)))
    answer = (rng.choice(ANSWERS).format(p=product, n=rng.randrange(2, 60)) + " " + rng.choice(STEPS)
              + f" Regards, {rng.choice(NAMES).title()} from support (case {rng.randrange(10**6):06d}).")
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": "You are a helpful banking support assistant."})
    return {"messages": messages}


def synthetic_corpus(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records: list[dict] = []
    for i in range(n):
        roll = rng.random()
        if records and roll < 0.03:  # exact duplicate up to case and punctuation
            copy = json.loads(json.dumps(rng.choice(records)))
            copy["messages"][-2]["content"] = copy["messages"][-2]["content"].upper() + "!"
            records.append(copy)
        elif records and roll < 0.08:  # near duplicate: one word added
            copy = json.loads(json.dumps(rng.choice(records)))
            copy["messages"][-1]["content"] += " Thanks."
            records.append(copy)
        else:
            records.append(synthetic_record(rng, i))
    return records


def cpu_time() -> float:
    """CPU seconds of this process and its finished children (prepare forks workers for big inputs)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    if hasattr(os, "getloadavg"):
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    for module in ("torch", "numpy", "tokenizers"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="tokenizer for lengths; 'none' = estimate")
    parser.add_argument("--workers", type=int, default=None, help="processes for validate/clean/PII (1: none)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from tuneloop.data.prepare import PrepareOptions, prepare

    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "chats.jsonl"
        with open(source, "w") as f:
            for record in synthetic_corpus(args.records):
                f.write(json.dumps(record) + "\n")
        if args.model.lower() != "none":
            from tuneloop.data.stats import load_token_counter

            from tuneloop.data.prepare import training_estimate
            from tuneloop.models.loading import resolve_model

            # One-time work (converting the embedded model, measuring the matmul peak; both cached
            # on disk) stays out of the timing; loading the tokenizer, as every CLI run does, is in.
            resolve_model(args.model)
            training_estimate(args.model, 1000, 1024)
            load_token_counter.cache_clear()
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        started, cpu_started = time.perf_counter(), cpu_time()
        report = prepare([source], Path(tmp) / "out", PrepareOptions(model=args.model, workers=args.workers))
        seconds, cpu_seconds = time.perf_counter() - started, cpu_time() - cpu_started
        info["load_average_1m_during"] = load_before
    # On a shared machine wall time depends on the other processes; CPU time (all threads of this
    # process and its workers) shows what the pipeline itself costs. Both are reported.
    result = {"benchmark": "data prepare", "records": args.records, "seconds": round(seconds, 2),
              "records_per_s": round(args.records / seconds), "goal_records_per_s": 5000,
              "cpu_seconds": round(cpu_seconds, 2), "records_per_cpu_s": round(args.records / cpu_seconds),
              "workers": args.workers or "auto", "stage_seconds": report.stage_seconds, "counts": report.counts,
              "pii": {k: v for k, v in report.pii.items() if k != "enabled"},
              "tokenizer": report.tokens["tokenizer"], "machine": info}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"data prepare: {args.records:,} records in {seconds:.1f} s = {result['records_per_s']:,} records/s "
          f"(goal 5,000) on {info['cpu']} x{info['cores']}, load {info.get('load_average_1m_at_start')}; "
          f"CPU time {cpu_seconds:.1f} s = {result['records_per_cpu_s']:,} records per CPU-second")
    print("stages (s):", report.stage_seconds)
    print("counts:", report.counts)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
