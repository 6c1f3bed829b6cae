"""Generating answers to chat conversations in batches (used by chat, evaluation and export checks).

Prompts go through :mod:`tuneloop.chat.template`, are left-padded into one batch and decoded by the
same token loop as serving (:mod:`tuneloop.models.decoding`); decoding stops at the tokenizer's EOS
(the chat template's end-of-turn token).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.chat.template import render_prompt_ids
from tuneloop.models.decoding import SamplingParams, Sequence, generate_batch


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


def generate_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, on_step=None) -> list[list[int]]:
    """New token ids per prompt (EOS kept where generated), decoded as one batch.

    Runs on the serving engine's token loop (:mod:`tuneloop.models.decoding`); sampling draws from
    torch's global generator, so ``torch.manual_seed`` makes it reproducible. ``on_step()`` is called
    once per decoding step, right after that step's logits exist; evaluation uses it to time when
    each row's last token was produced (its latency within the batch).
    """
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    sequences = [Sequence(list(p), params) for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    unlimited = 2**62  # as with model.generate, only max_new_tokens (or EOS) ends a row
    generate_batch(model, sequences, pad_id, {tokenizer.eos_token_id}, unlimited, on_step=on_step)
    return [s.generated for s in sequences]


def decode_generation(tokenizer, prompt: list[int], ids: list[int]) -> Generation:
    stopped = bool(ids) and ids[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(ids[:-1] if stopped else ids, skip_special_tokens=True)
    return Generation(text.strip(), len(prompt), len(ids), "stop" if stopped else "length")


def generate_chat(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128,
                  temperature: float = 0.0, batch_size: int = 8) -> list[Generation]:
    """Answers in input order. Prompts are batched by length, so little of each batch is padding."""
    prompts = [render_prompt_ids(tokenizer, messages) for messages in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = [prompts[i] for i in chunk]
        for i, ids in zip(chunk, generate_ids(model, tokenizer, batch, max_new_tokens, temperature)):
            results[i] = decode_generation(tokenizer, prompts[i], ids)
    return results
