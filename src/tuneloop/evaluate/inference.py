"""Run one model over the evaluation prompts: answers, per-sample latency, tokens/s, memory, size.

Prompts are batched by length (little padding) and decoded greedily, so an evaluation is
reproducible. Latency of a sample is the time from its batch's start until its own last token was
produced (timed per decoding step), i.e. what a client of a batching server at ``batch_size`` waits;
``--batch-size 1`` gives single-stream latency. ``amortised_s`` (batch time / rows) sums to the total
generation time, which is what ``tokens_per_s`` divides by.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tuneloop.chat.template import render_prompt_ids
from tuneloop.models.generation import decode_generation, generate_ids


@dataclass
class ModelAnswers:
    texts: list[str]
    completion_tokens: list[int]
    latency_ms: list[float]
    amortised_s: list[float]
    finish_reasons: list[str]
    wall_s: float


class PeakMemory:
    """Peak resident memory (MB) of this process while the block runs; GPU peak on CUDA.

    RSS is sampled every 20 ms by a thread, since ``ru_maxrss`` only ever grows over the process's
    life and could not tell the model's peak from the baseline's.
    """

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _sample(self):
        import psutil

        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20


def model_size_mb(path: Path, adapter: Path | None = None) -> float:
    """Weights on disk (safetensors/bin/pt files) of the model plus its adapter, in MB."""
    total = 0
    for folder in (path, adapter):
        if folder is None:
            continue
        for f in Path(folder).rglob("*"):
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
                total += f.stat().st_size
    return total / 2**20


def _timed_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int):
    """Generated ids per row and each row's latency in ms (start of batch -> its last token)."""
    steps: list[float] = []
    start = time.perf_counter()
    rows = generate_ids(model, tokenizer, prompts, max_new_tokens, on_step=lambda: steps.append(time.perf_counter()))
    end = time.perf_counter()
    latencies = []
    for ids in rows:
        done = steps[len(ids) - 1] if 0 < len(ids) <= len(steps) else end
        latencies.append((done - start) * 1000)
    return rows, latencies, end - start


def answer_prompts(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                   batch_size: int, progress=None) -> ModelAnswers:
    """Greedy answers to each conversation, in input order."""
    prompts = [render_prompt_ids(tokenizer, messages) for messages in conversations]
    # Longest first: the most memory-hungry batch runs first, and the ETA starts pessimistic.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    n = len(prompts)
    # Warm-up: one-off costs (CUDA context, kernel selection, first allocations) must not be timed
    # as the first batch's latency.
    generate_ids(model, tokenizer, [prompts[order[-1]]], max_new_tokens=2)
    texts, tokens, latency, amortised, finish = [""] * n, [0] * n, [0.0] * n, [0.0] * n, ["stop"] * n
    started = time.perf_counter()
    for begin in range(0, n, batch_size):
        chunk = order[begin : begin + batch_size]
        rows, latencies, batch_s = _timed_batch(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens)
        for i, ids, ms in zip(chunk, rows, latencies):
            generation = decode_generation(tokenizer, prompts[i], ids)
            texts[i], tokens[i], finish[i] = generation.text, generation.completion_tokens, generation.finish_reason
            latency[i], amortised[i] = ms, batch_s / len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    return ModelAnswers(texts, tokens, latency, amortised, finish, time.perf_counter() - started)
