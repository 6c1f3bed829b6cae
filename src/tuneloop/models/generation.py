"""Generating answers to chat conversations in batches (used by chat, evaluation and export checks).

Prompts go through :mod:`tuneloop.chat.template`, are left-padded into one batch, and decoding stops
at the tokenizer's EOS (the chat template's end-of-turn token).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.chat.template import render_prompt_ids


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


def generate_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, on_step=None) -> list[list[int]]:
    """New token ids per prompt (EOS kept where generated), one left-padded batch.

    ``on_step()`` is called once per decoding step, right after that step's logits exist; evaluation
    uses it to time when each row's last token was produced (its latency within the batch).
    """
    import torch

    width = max(len(p) for p in prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device  # the model may live on a GPU
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    sampling = temperature > 0
    extra = {}
    if on_step is not None:
        from transformers import LogitsProcessorList

        extra["logits_processor"] = LogitsProcessorList([_StepHook(on_step)])
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
            do_sample=sampling, temperature=temperature if sampling else None,
            top_p=top_p if sampling else None, top_k=None,
            pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, **extra,
        )
    results = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        results.append(row)
    return results


class _StepHook:
    """A logits processor that changes nothing and calls ``fn()`` once per decoding step."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, input_ids, scores):
        self.fn()
        return scores


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
