"""The SFT loss, computed only where there is something to learn.

A causal LM's head turns every hidden state into 49k logits; for chat data most positions are prompt
tokens whose logits are thrown away by the mask. So we run the decoder, gather the hidden states at
positions with a target (label != -100) and only then apply the LM head and cross-entropy, in chunks,
so the full (tokens x vocab) logits tensor is never built.

The loss is returned as a *sum* plus a token count: the training loop divides by the number of
supervised tokens in the whole optimizer step (all micro-batches, all processes), which makes
gradient accumulation, packing and data parallelism give the same gradient as one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuneloop.chat.template import IGNORE_INDEX
from tuneloop.train import attention
from tuneloop.train.attention import segment_buckets


def causal_lm_parts(model) -> tuple[nn.Module, nn.Module]:
    """(decoder, lm_head) of a Hugging Face causal LM, with or without a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def chunked_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module,
                          chunk_size: int = 2048) -> torch.Tensor:
    """Sum of cross-entropy over rows of ``hidden`` (N x H) against ``targets`` (N), chunk by chunk.

    Logits are upcast to fp32 for the softmax (bf16 log-softmax over 49k classes loses ~2 digits).
    When there is more than one chunk each chunk is recomputed in backward instead of kept, so peak
    memory is one chunk of logits whatever the batch.
    """
    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(lm_head(h).float(), t, reduction="sum")

    if hidden.shape[0] <= chunk_size:
        return chunk_loss(hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        total = total + torch.utils.checkpoint.checkpoint(chunk_loss, h, t, use_reentrant=False)
    return total


class SupervisedCausalLM(nn.Module):
    """Wraps a causal LM so ``forward(batch)`` returns (summed loss, supervised token count).

    A module (rather than a function) so DistributedDataParallel and torch.compile can wrap it.
    ``autocast_dtype`` (e.g. bfloat16) runs the matmuls in that dtype while weights stay as stored.
    ``packed_attention`` computes attention per packed sample (train/attention.py) instead of over
    whole rows with a block-diagonal mask; the results are the same, the work is not.
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None,
                 chunk_size: int = 2048, packed_attention: bool = True):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.chunk_size = chunk_size
        self.packed_attention = packed_attention and _use_packed_attention(model)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decoder, lm_head = causal_lm_parts(self.model)
        device_type = input_ids.device.type
        with torch.autocast(device_type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            # No attention mask: position ids restart at 0 for each packed sample (train/data.py);
            # from them transformers derives a block-diagonal causal mask, or our packed attention
            # the per-sample index buckets.
            extra = {"packed_segments": segment_buckets(position_ids)} if self.packed_attention else {}
            hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                             **extra).last_hidden_state
            keep = targets != IGNORE_INDEX
            loss_sum = chunked_cross_entropy(hidden[keep], targets[keep], lm_head, self.chunk_size)
        return loss_sum, keep.sum()


def _use_packed_attention(model) -> bool:
    """Switch a model that runs on SDPA to the packed implementation (generation still gets SDPA)."""

    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", attention.NAME):
        return False  # eager, flash-attention or a custom kernel: leave the model's choice alone
    attention.register()
    config._attn_implementation = attention.NAME
    return True
