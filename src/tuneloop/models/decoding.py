"""The one token loop of tuneloop: serving, evaluation, chat, augmentation and GRPO rollouts all
decode here. Prefill a left-padded batch, then one decode step per token.

Why our own loop rather than ``model.generate``: a server needs a callback after every token (for
streaming), per-request sampling settings, stop strings and adapters inside one batch, and to drop a
finished request from the batch at once so the rest run faster. The loop keeps a pre-allocated KV
cache (:mod:`tuneloop.models.kv_cache`) and explicit ``position_ids``, because with left padding the
positions of each row start after its own padding, not at column 0.

Requests for different LoRA adapters of one PEFT model share each forward pass: every row names its
adapter (``"__base__"`` for the base model) and PEFT's mixed-batch inference (``adapter_names=``)
applies each adapter to its own rows only.

Pure helpers: :func:`sample_next` (greedy / temperature / top-p per row) and :class:`TextStream`
(incremental detokenisation that never emits half a character or the start of a stop string).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


class TextStream:
    """Turns token ids into text deltas, one token at a time, honouring stop strings.

    Decoding a single token on its own garbles multi-byte characters and leading spaces, so each step
    decodes a short window of recent ids and emits only what it adds (the offsets scheme of HF's
    text-generation-inference). Text that might be the start of a stop string is held back until it
    is clearly not one.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Add one token; returns the text that can be shown now (may be empty)."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        after = decode(self.ids[self._prefix_offset:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return self._release()

    def _release(self) -> str:
        if self.stop:
            search_from = max(0, self.emitted - max(len(s) for s in self.stop))
            hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self.flush()
        safe_end = len(self.text) - self._held_back()
        delta = self.text[self.emitted:safe_end]
        self.emitted = max(self.emitted, safe_end)
        return delta

    def _held_back(self) -> int:
        # The longest tail of the text that is a proper prefix of some stop string.
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        """Everything not yet emitted (called when the sequence ends)."""
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta


def sample_next(logits, params: list[SamplingParams], generators: list) -> list[int]:
    """One next token per row of ``logits`` [rows, vocab], each row with its own settings."""
    import torch

    chosen = logits.argmax(dim=-1).tolist()
    for row, (p, generator) in enumerate(zip(params, generators)):
        if p.temperature <= 0:
            continue
        probs = torch.softmax(logits[row].float() / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set whose mass reaches top_p (always at least the top token).
            outside = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        chosen[row] = int(torch.multinomial(probs, 1, generator=generator).item())
    return chosen


@dataclass(eq=False)
class Sequence:
    """One request inside a batch: its prompt, settings and what it has produced so far.

    ``stream``: None when nobody reads text as it comes (evaluation, rollouts): no per-token decoding.
    ``adapter``: the PEFT adapter this row runs with (``"__base__"``: none); None: the model as it is.
    """

    prompt_ids: list[int]
    params: SamplingParams
    stream: TextStream | None = None
    generator: object = None  # torch.Generator for seeded sampling
    owner: object = None  # whoever waits for this sequence (the engine's job)
    adapter: str | None = None
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def advance(self, token_id: int, eos_ids: set[int], context_left: int) -> str:
        """Take one sampled token; returns the text delta and sets ``finish_reason`` when done."""
        self.generated.append(token_id)
        stream = self.stream
        if token_id in eos_ids:
            self.finish_reason = "stop"
            return stream.flush() if stream else ""
        delta = stream.push(token_id) if stream else ""
        if stream and stream.stopped:
            self.finish_reason = "stop"
        elif len(self.generated) >= self.params.max_tokens or context_left <= 0:
            self.finish_reason = "length"
            delta += stream.flush() if stream else ""
        return delta


def _forward(model, sequences: list[Sequence], **inputs):
    adapters = [s.adapter for s in sequences]
    if any(a is not None for a in adapters):  # PEFT's mixed-adapter batch
        inputs["adapter_names"] = [a or "__base__" for a in adapters]
    return model(use_cache=True, **inputs).logits[:, -1, :]


def _prefill(model, sequences: list[Sequence], pad_id: int, device):
    import torch

    from tuneloop.models.kv_cache import new_cache  # imports transformers: only when decoding

    prompts = [s.prompt_ids for s in sequences]
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = new_cache(model, capacity=width + max(s.params.max_tokens for s in sequences))
    logits = _forward(model, sequences, input_ids=input_ids, attention_mask=mask, position_ids=positions,
                      cache=cache, logits_to_keep=1)
    return logits, cache, mask


def _decode_step(model, sequences: list[Sequence], tokens: list[int], cache, mask):
    import torch

    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    positions = mask.sum(dim=1, keepdim=True) - 1
    input_ids = torch.tensor(tokens, device=mask.device).unsqueeze(1)
    logits = _forward(model, sequences, input_ids=input_ids, attention_mask=mask, position_ids=positions,
                      cache=cache)
    return logits, mask


class RunningBatch:
    """Sequences decoding together; new ones can join between steps (continuous batching).

    Joining: the newcomers are prefilled as their own left-padded batch, then their KV cache is
    stacked under the running rows, the narrower side left-padded. Padding is masked out and every
    row has its own positions, so a row's tokens do not depend on who it shares the batch with. A
    finished row (or one whose client left) is cut out at once, and padding columns no row needs any
    more are trimmed, so the batch only ever computes what is still running.
    """

    def __init__(self, model, pad_id: int, eos_ids: set[int], max_context: int):
        self.model, self.pad_id, self.eos_ids, self.max_context = model, pad_id, eos_ids, max_context
        self.device = next(model.parameters()).device  # the model may live on a GPU
        self.sequences: list[Sequence] = []
        self.cache = self.mask = self.logits = None

    def __len__(self) -> int:
        return len(self.sequences)

    def can_join(self) -> bool:
        """Only pre-allocated full-attention caches can be stacked (not sliding-window ones)."""
        from tuneloop.models.kv_cache import is_stackable

        return self.cache is None or is_stackable(self.cache)

    def add(self, sequences: list[Sequence]) -> None:
        import torch
        import torch.nn.functional as F

        from tuneloop.models.kv_cache import stack_rows

        with torch.inference_mode():
            logits, cache, mask = _prefill(self.model, sequences, self.pad_id, self.device)
            if self.cache is None:
                self.cache, self.mask, self.logits = cache, mask, logits
            else:
                stack_rows(self.cache, cache)
                width = max(self.mask.shape[1], mask.shape[1])
                self.mask = torch.cat([F.pad(self.mask, (width - self.mask.shape[1], 0)),
                                       F.pad(mask, (width - mask.shape[1], 0))])
                self.logits = torch.cat([self.logits, logits])
        self.sequences += sequences

    def step(self, on_delta: Callable[[Sequence, str], None],
             is_cancelled: Callable[[Sequence], bool]) -> list[Sequence]:
        """Sample one token for every row; returns the sequences that finished (or were cancelled)."""
        import torch

        running = self.sequences
        tokens = sample_next(self.logits, [s.params for s in running], [s.generator for s in running])
        keep, done = [], []
        for row, (seq, token) in enumerate(zip(running, tokens)):
            context_left = self.max_context - len(seq.prompt_ids) - len(seq.generated) - 1
            delta = seq.advance(token, self.eos_ids, context_left)
            if delta or seq.finish_reason:
                on_delta(seq, delta)
            (done if seq.finish_reason or is_cancelled(seq) else keep).append(row)
        if not keep:
            self.sequences, self.cache, self.mask, self.logits = [], None, None, None
            return [running[r] for r in done]
        with torch.inference_mode():
            if done:
                self._keep_rows(keep)
                tokens = [tokens[r] for r in keep]
            self.logits, self.mask = _decode_step(self.model, self.sequences, tokens, self.cache, self.mask)
        return [running[r] for r in done]

    def _keep_rows(self, keep: list[int]) -> None:
        import torch

        from tuneloop.models.kv_cache import drop_columns

        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.sequences = [self.sequences[r] for r in keep]
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0 and self.can_join():  # columns that are padding in every remaining row
            self.mask = self.mask[:, first:]
            drop_columns(self.cache, first)


def generate_batch(model, sequences: list[Sequence], pad_id: int, eos_ids: set[int], max_context: int,
                   on_delta: Callable[[Sequence, str], None] = lambda s, d: None,
                   on_step: Callable[[], None] | None = None) -> None:
    """Run ``sequences`` to completion as one batch (no joiners): for scripts, evaluation and tests.

    ``on_step()`` is called once per decoding step, right after that step's logits exist.
    """
    batch = RunningBatch(model, pad_id, eos_ids, max_context)
    batch.add(sequences)
    while len(batch):
        if on_step is not None:
            on_step()
        batch.step(on_delta, lambda s: False)
