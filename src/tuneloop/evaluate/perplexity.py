"""Teacher-forced loss and perplexity, streaming in bounded memory; shared by training and evaluation.

Training calls :func:`validation_loss` on its validation batches; evaluation calls
:func:`reference_nll` to score each reference answer. Only supervised tokens count (labels that are
not ``-100``, i.e. assistant tokens from :func:`tuneloop.chat.template.encode_chat`), and only running
sums are kept, so memory does not grow with the number of batches.

    >>> result = validation_loss(model, batches)   # batches: dicts of input_ids, labels[, attention_mask]
    >>> result.loss, result.perplexity, result.n_tokens
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tuneloop.chat.batch import pad_batch
from tuneloop.chat.template import IGNORE_INDEX, encode_chat


@dataclass(frozen=True)
class LossResult:
    loss: float  # mean negative log-likelihood per supervised token (nats)
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.n_tokens else float("nan")


def per_sequence_nll(model, batch: dict) -> tuple[list[float], list[int]]:
    """Summed NLL (nats) and supervised-token count of each row of one batch."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    attention = batch.get("attention_mask")
    attention = attention.to(device) if attention is not None else torch.ones_like(input_ids)
    # Only positions that predict a supervised token need logits: projecting every position onto a
    # 49k-word vocabulary is most of the memory and much of the time of a short-answer evaluation.
    targets_all = labels[:, 1:]
    positions = (targets_all != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    targets = targets_all[:, positions]
    if positions.numel() == 0:
        return [0.0] * len(input_ids), [0] * len(input_ids)
    with torch.inference_mode():
        try:
            logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=positions).logits
        except TypeError:  # architectures without logits_to_keep
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1][:, positions]
        losses = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                 reduction="none")
        mask = targets != IGNORE_INDEX
        sums = (losses * mask).sum(dim=1)
    return sums.tolist(), mask.sum(dim=1).tolist()


def validation_loss(model, batches: Iterable[dict]) -> LossResult:
    """Mean per-token loss over all supervised tokens of all batches (streaming, model left in eval)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            sums, counts = per_sequence_nll(model, batch)
            total += sum(sums)
            count += sum(counts)
    finally:
        model.train(was_training)
    return LossResult(total / count if count else float("nan"), count)


def reference_batches(tokenizer, conversations: list[list[dict]], batch_size: int = 16,
                      max_len: int = 2048) -> Iterator[tuple[list[int], dict]]:
    """(original indices, batch) for conversations ending in their reference answer.

    Sorted by length so rows of a batch are about as long as each other (less padding); over-long
    conversations keep their last ``max_len`` tokens, where the answer is.
    """
    encoded = []
    for messages in conversations:
        e = encode_chat(tokenizer, messages)
        if len(e.input_ids) > max_len:
            e = type(e)(e.input_ids[-max_len:], e.labels[-max_len:])
        encoded.append(e)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield chunk, pad_batch([encoded[i] for i in chunk], pad_id)


def reference_nll(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16,
                  progress=None) -> tuple[list[float], list[int]]:
    """Per conversation: summed NLL of its assistant tokens and how many there are (input order)."""
    n = len(conversations)
    sums, counts = [0.0] * n, [0] * n
    for indices, batch in reference_batches(tokenizer, conversations, batch_size):
        batch_sums, batch_counts = per_sequence_nll(model, batch)
        for i, s, c in zip(indices, batch_sums, batch_counts):
            sums[i], counts[i] = s, c
        if progress is not None:
            progress.update(len(indices))
    return sums, counts
