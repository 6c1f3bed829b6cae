"""``--engine vllm``: the same API served through vLLM's engine (CUDA machines with vllm installed).

vLLM does its own continuous batching and paged attention; each LoRA adapter is a ``LoRARequest``
chosen per request. Prompts are still rendered by :mod:`tuneloop.chat.template` and passed as token
ids, so a prompt is byte-for-byte the one the transformers engine (and training) would use.
The interface matches :class:`tuneloop.serve.engine.BatchingEngine`: ``submit`` returns a job whose
asyncio queue receives ("delta", text)... then ("done", GenerationResult) or ("error", message).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import threading

from tuneloop.errors import UserError
from tuneloop.models.loading import ResolvedModel, load_tokenizer
from tuneloop.serve.adapters import ModelTable
from tuneloop.models.decoding import SamplingParams
from tuneloop.serve.engine import GenerationResult, Job
from tuneloop.serve.settings import ServeSettings


def check_vllm_available() -> None:
    """A clear message instead of an ImportError or a CUDA error deep inside vLLM."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError("--engine vllm needs the vllm package, which is not installed", where="--engine",
                        hint="pip install 'tuneloop[vllm]' on a CUDA machine, or use --engine transformers")
    import torch

    if not torch.cuda.is_available():
        raise UserError("--engine vllm needs a CUDA GPU, and none is visible", where="--engine",
                        hint="use --engine transformers (CPU, dynamic batching) on this machine")


class VLLMEngine:
    def __init__(self, table: ModelTable, settings: ServeSettings):
        check_vllm_available()
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        adapters = table.adapters()
        ranks = [json.loads((m.adapter_path / "adapter_config.json").read_text()).get("r", 16) for m in adapters]
        args = AsyncEngineArgs(model=str(table.base_path), max_num_seqs=max(settings.max_batch_size, 1),
                               enable_lora=bool(adapters), max_loras=max(len(adapters), 1),
                               max_lora_rank=max(ranks, default=16))
        self.engine = AsyncLLMEngine.from_engine_args(args)
        self.tokenizer = load_tokenizer(ResolvedModel(str(table.base_path), table.base_path))
        self.max_context = _context_length(table.base_path)
        self._lora = self._lora_requests(table)
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task] = set()

    @staticmethod
    def _lora_requests(table: ModelTable) -> dict:
        from vllm.lora.request import LoRARequest

        requests = {}
        for number, served in enumerate(table.models.values(), start=1):
            if served.adapter_path is not None:
                requests[served.id] = LoRARequest(served.id, number, str(served.adapter_path))
        return requests

    def submit(self, model_id: str, prompt_ids: list[int], params: SamplingParams) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(model_id, prompt_ids, params, loop, asyncio.Queue(), threading.Event())
        task = loop.create_task(self._run(job, f"tuneloop-{next(self._ids)}"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job, request_id: str) -> None:
        from vllm import SamplingParams as VLLMSamplingParams

        p = job.params
        sampling = VLLMSamplingParams(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                                      stop=list(p.stop) or None, seed=p.seed)
        sent, final = 0, None
        try:
            async for output in self.engine.generate({"prompt_token_ids": job.prompt_ids}, sampling, request_id,
                                                     lora_request=self._lora.get(job.model_id)):
                if job.cancelled.is_set():
                    await self.engine.abort(request_id)
                    return
                final = output.outputs[0]
                if len(final.text) > sent:
                    job.events.put_nowait(("delta", final.text[sent:]))
                    sent = len(final.text)
            job.events.put_nowait(("done", GenerationResult(final.text, len(job.prompt_ids),
                                                            len(final.token_ids), final.finish_reason or "stop")))
        except Exception as e:
            job.events.put_nowait(("error", f"vLLM failed: {type(e).__name__}: {e}"))

    def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


def _context_length(path) -> int:
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 2048) or 2048)
