"""Serving throughput: aggregate generated tokens/s with 8 concurrent clients vs the same requests
one at a time, against ``tuneloop serve`` on the embedded model (goals of issue 26: one stream >= 50
tokens/s, 8 concurrent clients >= 200 tokens/s; batching should give >= 3x). The server holds bf16
weights where the CPU multiplies bf16 natively (``machine.native_bf16``), fp32 otherwise.

    .venv/bin/python benchmarks/bench_serve.py [--requests 16] [--max-tokens 64] [--clients 8]

The server runs in its own process (as users run it); clients use the official openai package.
Greedy decoding, so both runs generate exactly the same tokens. Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, write_result  # noqa: E402

QUESTIONS = [
    "Where is my order?", "How do I reset my password?", "Can I change my delivery address?",
    "What is your refund policy?", "My card was charged twice, what should I do?",
    "How long does shipping to Canada take?", "Do you sell gift cards?", "How do I cancel my subscription?",
    "The app crashes when I open it.", "Can I pay with PayPal?", "Is there a student discount?",
    "How do I contact a human agent?", "My package arrived damaged.", "What are your opening hours?",
    "How do I update my billing details?", "Can I return an item without a receipt?",
]


def start_server(model: str, max_batch_size: int, threads: int | None, workdir: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [PYTHON, "-m", "tuneloop.cli.main", "serve", "--model", model, "--port", str(port),
            "--db", f"sqlite:///{workdir / 'serve.db'}", "--max-batch-size", str(max_batch_size),
            "--request-timeout", "3600"] + (["--threads", str(threads)] if threads else [])
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(1800):
        if process.poll() is not None:
            raise SystemExit(f"server exited: {(workdir / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start")


def one_request(client, model: str, question: str, max_tokens: int) -> int:
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                              max_tokens=max_tokens, temperature=0)
    return response.usage.completion_tokens


def timed_run(client, model: str, questions: list[str], max_tokens: int, clients: int) -> dict:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        tokens = list(pool.map(lambda q: one_request(client, model, q, max_tokens), questions))
    seconds = time.perf_counter() - start
    return {"clients": clients, "requests": len(questions), "generated_tokens": sum(tokens),
            "seconds": round(seconds, 2), "tokens_per_s": round(sum(tokens) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None,
                        help="server's CPU threads (default: all cores; use 1 on a machine shared with other jobs)")
    args = parser.parse_args()
    import openai

    questions = (QUESTIONS * (args.requests // len(QUESTIONS) + 1))[: args.requests]
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(args.model, args.clients, args.threads, Path(tmp))
        try:
            model_id = openai.OpenAI(base_url=url + "/v1", api_key="x").models.list().data[0].id
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
            one_request(client, model_id, "Hello", 8)  # warm-up: first-call allocations
            sequential = timed_run(client, model_id, questions, args.max_tokens, clients=1)
            concurrent_run = timed_run(client, model_id, questions, args.max_tokens, clients=args.clients)
        finally:
            process.terminate()
            process.wait(timeout=30)
    speedup = concurrent_run["tokens_per_s"] / sequential["tokens_per_s"]
    from tuneloop.models.estimate import bf16_supported  # what the server decides for its weights

    result = {"model": args.model, "max_tokens": args.max_tokens, "decoding": "greedy",
              "server_threads": args.threads or "all cores", "weights": "bf16" if bf16_supported() else "fp32",
              "one_at_a_time": sequential, "concurrent": concurrent_run, "speedup": round(speedup, 2),
              "goals": {"one_stream_tokens_per_s": 50, "concurrent_8_tokens_per_s": 200, "speedup": 3}}
    path = write_result("serve", result)
    print(f"one at a time: {sequential['tokens_per_s']} tokens/s; {args.clients} concurrent clients: "
          f"{concurrent_run['tokens_per_s']} tokens/s; speedup {speedup:.2f}x -> {path}")


if __name__ == "__main__":
    main()
