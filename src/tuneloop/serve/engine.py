"""Dynamic batching: requests that arrive together share forward passes, on one worker thread.

Handlers call :meth:`BatchingEngine.submit`, which puts a :class:`Job` on a queue; the job's
asyncio queue then receives its events (text deltas, then the result). One worker thread takes the
oldest job's model id, gathers up to ``max_batch_size`` jobs for that model (waiting
``batch_wait_s`` for more when the batch is not full), selects the adapter and decodes them as a
:class:`tuneloop.serve.decoding.RunningBatch`. Requests for the same model that arrive while it runs
join it between two steps (continuous batching), so a request never waits for a whole batch to end.

One worker on purpose: the model runs on all cores already, and a second batch in parallel would
only fight it for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tuneloop.serve.decoding import RunningBatch, SamplingParams, Sequence, TextStream

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
        """Wait for work; then the oldest job's model id and up to max_batch_size of its jobs."""
        with self._wakeup:
            while not self._pending and not self._stopping:
                self._wakeup.wait()
            if self._stopping:
                return []
            model_id = self._pending[0].model_id
            deadline = time.monotonic() + self.batch_wait_s
            while self._count(model_id) < self.max_batch_size and time.monotonic() < deadline:
                self._wakeup.wait(timeout=max(0.0, deadline - time.monotonic()))
        return self._take(model_id, self.max_batch_size)

    def _take(self, model_id: str, room: int) -> list[Job]:
        with self._wakeup:
            taken = [j for j in self._pending if j.model_id == model_id][:room]
            for job in taken:
                self._pending.remove(job)
        return [job for job in taken if not job.cancelled.is_set()]

    def _count(self, model_id: str) -> int:
        return sum(1 for j in self._pending if j.model_id == model_id)

    def _others_waiting(self, model_id: str) -> bool:
        with self._wakeup:
            return any(j.model_id != model_id for j in self._pending)

    def _work(self) -> None:
        while not self._stopping:
            jobs = self._next_batch()
            if not jobs:
                continue
            active: list[Job] = []
            try:
                self._serve_model(jobs, active)
            except Exception as e:  # a bug or out of memory: fail these requests, keep serving
                log.exception("generation failed")
                for job in active:
                    job.send("error", f"generation failed: {type(e).__name__}: {e}")

    def _serve_model(self, jobs: list[Job], active: list[Job]) -> None:
        """Decode ``jobs`` and every same-model job that arrives meanwhile, until none is left.

        Newcomers join between steps, unless another model's requests are waiting: then the batch
        drains and that model gets its turn.
        """
        model_id = jobs[0].model_id
        batch = RunningBatch(self.model, self.pad_id, self.eos_ids, self.max_context)
        with self._adapter(self.adapters[model_id]):
            self._admit(batch, jobs, active)
            while len(batch):
                if self.on_batch:
                    self.on_batch(model_id, len(batch))
                for seq in batch.step(self._send_delta, lambda s: s.owner.cancelled.is_set()):
                    seq.owner.send("done", GenerationResult(seq.stream.text, len(seq.prompt_ids),
                                                            len(seq.generated), seq.finish_reason or "cancelled"))
                    active.remove(seq.owner)
                room = self.max_batch_size - len(batch)
                if room > 0 and len(batch) and batch.can_join() and not self._others_waiting(model_id):
                    self._admit(batch, self._take(model_id, room), active)

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
                                      generator, owner=job))
        active.extend(jobs)
        batch.add(sequences)

    @staticmethod
    def _send_delta(seq: Sequence, delta: str) -> None:
        if delta:
            seq.owner.send("delta", delta)

    def _adapter(self, name: str | None):
        if not hasattr(self.model, "peft_config"):
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(configured)
    return {i for i in ids if i is not None}
