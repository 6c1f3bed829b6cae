"""The token loop behind serving: prefill a left-padded batch, then one decode step per token.

Why our own loop rather than ``model.generate``: a server needs a callback after every token (for
streaming), per-request sampling settings and stop strings inside one batch, and to drop a finished
request from the batch at once so the rest run faster. The loop keeps a KV cache
(``transformers.DynamicCache``) and explicit ``position_ids``, because with left padding the positions
of each row start after its own padding, not at column 0.

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


@dataclass
class Sequence:
    """One request inside a batch: its prompt, settings and what it has produced so far."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: TextStream
    generator: object = None  # torch.Generator for seeded sampling
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def advance(self, token_id: int, eos_ids: set[int], context_left: int) -> str:
        """Take one sampled token; returns the text delta and sets ``finish_reason`` when done."""
        self.generated.append(token_id)
        if token_id in eos_ids:
            self.finish_reason = "stop"
            return self.stream.flush()
        delta = self.stream.push(token_id)
        if self.stream.stopped:
            self.finish_reason = "stop"
        elif len(self.generated) >= self.params.max_tokens or context_left <= 0:
            self.finish_reason = "length"
            delta += self.stream.flush()
        return delta


def _prefill(model, prompts: list[list[int]], pad_id: int):
    import torch
    from transformers import DynamicCache

    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :], cache, mask


def _decode_step(model, tokens: list[int], cache, mask):
    import torch

    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    positions = mask.sum(dim=1, keepdim=True) - 1
    out = model(input_ids=torch.tensor(tokens).unsqueeze(1), attention_mask=mask, position_ids=positions,
                cache=cache, use_cache=True)
    return out.logits[:, -1, :], mask


def generate_batch(model, sequences: list[Sequence], pad_id: int, eos_ids: set[int], max_context: int,
                   on_delta: Callable[[int, str], None], is_cancelled: Callable[[int], bool]) -> None:
    """Run ``sequences`` to completion as one batch; ``on_delta(index, text)`` after every token.

    A sequence that finishes (or whose client went away) leaves the batch at once: its rows are cut
    from the KV cache so later steps only compute the ones still running.
    """
    import torch

    with torch.inference_mode():
        logits, cache, mask = _prefill(model, [s.prompt_ids for s in sequences], pad_id)
        active = list(range(len(sequences)))
        while active:
            running = [sequences[i] for i in active]
            tokens = sample_next(logits, [s.params for s in running], [s.generator for s in running])
            keep = []
            for row, (i, seq, token) in enumerate(zip(active, running, tokens)):
                context_left = max_context - len(seq.prompt_ids) - len(seq.generated) - 1
                delta = seq.advance(token, eos_ids, context_left)
                if delta or seq.finish_reason:
                    on_delta(i, delta)
                if seq.finish_reason is None and not is_cancelled(i):
                    keep.append(row)
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                mask = mask[index]
                tokens = [tokens[r] for r in keep]
                active = [active[r] for r in keep]
            logits, mask = _decode_step(model, tokens, cache, mask)
