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
                 temperature: float = 0.0, top_p: float = 1.0) -> list[list[int]]:
    """New token ids per prompt (EOS excluded), one left-padded batch."""
    import torch

    width = max(len(p) for p in prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sampling = temperature > 0
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
            do_sample=sampling, temperature=temperature if sampling else None,
            top_p=top_p if sampling else None, top_k=None,
            pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
        )
    results = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        results.append(row)
    return results


def generate_chat(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128,
                  temperature: float = 0.0, batch_size: int = 8) -> list[Generation]:
    results = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        prompts = [render_prompt_ids(tokenizer, messages) for messages in chunk]
        for prompt, ids in zip(prompts, generate_ids(model, tokenizer, prompts, max_new_tokens, temperature)):
            stopped = bool(ids) and ids[-1] == tokenizer.eos_token_id
            text = tokenizer.decode(ids[:-1] if stopped else ids, skip_special_tokens=True)
            results.append(Generation(text.strip(), len(prompt), len(ids), "stop" if stopped else "length"))
    return results
