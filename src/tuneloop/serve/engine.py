"""Dynamic batching: requests that arrive together share forward passes, on one worker thread.

Handlers call :meth:`BatchingEngine.submit`, which puts a :class:`Job` on a queue; the job's
asyncio queue then receives its events (text deltas, then the result). One worker thread gathers up
to ``max_batch_size`` jobs (waiting ``batch_wait_s`` for more when the batch is not full) and decodes
them as a :class:`tuneloop.models.decoding.RunningBatch`. Requests that arrive while it runs join it
between two steps (continuous batching), so a request never waits for a whole batch to end. Requests
for different adapters of the base share the batch: each row names its adapter and PEFT applies it
to that row only, so no model id waits for another's batch to drain.

One worker on purpose: the model runs on all cores already, and a second batch in parallel would
only fight it for them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tuneloop.models.decoding import RunningBatch, SamplingParams, Sequence, TextStream

log = logging.getLogger("tuneloop.serve")


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class Job:
    """One request's generation; events go back to the asyncio loop that submitted it."""

    model_id: str
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (its server stopped): nobody is waiting any more
            self.cancelled.set()


class BatchingEngine:
    """Serves a base model and its PEFT adapters. ``adapters`` maps model id -> adapter name (None: base)."""

    def __init__(self, model, tokenizer, adapters: dict[str, str | None], max_batch_size: int = 8,
                 batch_wait_s: float = 0.005, on_batch: Callable[[str, int], None] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.on_batch = on_batch
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        self._pending: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="tuneloop-batcher", daemon=True)
        self._thread.start()

    def submit(self, model_id: str, prompt_ids: list[int], params: SamplingParams) -> Job:
        """Queue a generation (call from the event loop); read its events with ``job.events.get()``.

        Events: ("delta", text)... then ("done", GenerationResult) or ("error", message). Set
        ``job.cancelled`` when the client is gone: its rows leave the batch at the next step.
        """
        job = Job(model_id, prompt_ids, params, asyncio.get_running_loop())
        with self._wakeup:
            self._pending.append(job)
            self._wakeup.notify()
        return job

    def close(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join(timeout=10)

    def _next_batch(self) -> list[Job]:
        """Wait for work; then up to max_batch_size jobs, oldest first."""
        with self._wakeup:
            while not self._pending and not self._stopping:
                self._wakeup.wait()
            if self._stopping:
                return []
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._pending) < self.max_batch_size and time.monotonic() < deadline:
                self._wakeup.wait(timeout=max(0.0, deadline - time.monotonic()))
        return self._take(self.max_batch_size)

    def _take(self, room: int) -> list[Job]:
        with self._wakeup:
            taken = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
        return [job for job in taken if not job.cancelled.is_set()]

    def _work(self) -> None:
        while not self._stopping:
            jobs = self._next_batch()
            if not jobs:
                continue
            active: list[Job] = []
            try:
                self._serve(jobs, active)
            except Exception as e:  # a bug or out of memory: fail these requests, keep serving
                log.exception("generation failed")
                for job in active:
                    job.send("error", f"generation failed: {type(e).__name__}: {e}")

    def _serve(self, jobs: list[Job], active: list[Job]) -> None:
        """Decode ``jobs`` and every job that arrives meanwhile (joining between steps) until none is left."""
        batch = RunningBatch(self.model, self.pad_id, self.eos_ids, self.max_context)
        self._admit(batch, jobs, active)
        while len(batch):
            if self.on_batch:
                for model_id in {seq.owner.model_id for seq in batch.sequences}:
                    self.on_batch(model_id, len(batch))
            for seq in batch.step(self._send_delta, lambda s: s.owner.cancelled.is_set()):
                seq.owner.send("done", GenerationResult(seq.stream.text, len(seq.prompt_ids),
                                                        len(seq.generated), seq.finish_reason or "cancelled"))
                active.remove(seq.owner)
            room = self.max_batch_size - len(batch)
            if room > 0 and len(batch) and batch.can_join():
                self._admit(batch, self._take(room), active)

    def _admit(self, batch: RunningBatch, jobs: list[Job], active: list[Job]) -> None:
        import torch

        if not jobs:
            return
        sequences = []
        for job in jobs:
            generator = None
            if job.params.seed is not None and job.params.temperature > 0:
                generator = torch.Generator().manual_seed(job.params.seed)
            sequences.append(Sequence(job.prompt_ids, job.params, TextStream(self.tokenizer, job.params.stop),
                                      generator, owner=job, adapter=self._adapter(job.model_id)))
        active.extend(jobs)
        batch.add(sequences)

    @staticmethod
    def _send_delta(seq: Sequence, delta: str) -> None:
        if delta:
            seq.owner.send("delta", delta)

    def _adapter(self, model_id: str) -> str | None:
        """The row's PEFT adapter name ("__base__" for the base); None when the model has no adapters."""
        if not hasattr(self.model, "peft_config"):
            return None
        return self.adapters[model_id] or "__base__"


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(configured)
    return {i for i in ids if i is not None}
