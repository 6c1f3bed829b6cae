"""What both sides of the training benchmark are measured with, so the comparison is like for like.

- :func:`count_tokens`: the real (non-padding) tokens of the training chats, rendered once with the
  model's chat template; tokens/s = this x epochs / training wall time, for every side.
- :func:`validation_loss`: mean cross-entropy over the supervised (assistant) tokens of the held-out
  chats, in fp32 without autocast, computed by this same function on each side's trained model.
- :data:`LORA`, :data:`HYPER`: the settings both sides share.
"""

from __future__ import annotations

LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
HYPER = {"batch_size": 8, "gradient_accumulation": 1, "learning_rate": 2e-4, "lr_scheduler": "cosine",
         "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0, "max_seq_len": 512, "seed": 0}


def count_tokens(tokenizer, chats: list[list[dict]]) -> dict:
    from tuneloop.chat.template import encode_chat

    encoded = [encode_chat(tokenizer, messages) for messages in chats]
    return {"examples": len(encoded), "tokens": sum(len(e.input_ids) for e in encoded),
            "supervised_tokens": sum(e.n_trainable for e in encoded),
            "longest": max((len(e.input_ids) for e in encoded), default=0)}


def validation_loss(model, tokenizer, chats: list[list[dict]], batch_size: int = 16) -> float:
    """Token-weighted mean loss on the assistant tokens of ``chats`` (lower is better)."""
    import torch
    import torch.nn.functional as F

    from tuneloop.chat.template import IGNORE_INDEX, encode_chat
    from tuneloop.chat.batch import pad_batch

    encoded = [encode_chat(tokenizer, messages) for messages in chats]
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i:i + batch_size]
            batch = pad_batch(chunk, tokenizer.pad_token_id)
            ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shifted = labels[:, 1:]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
            total += loss.item()
            count += int((shifted != IGNORE_INDEX).sum())
    return total / max(count, 1)
