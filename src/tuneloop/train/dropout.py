"""LoRA dropout that costs less than the matmul it feeds.

PEFT drops out the input of every adapter (``lora_A(dropout(x))``) with ``nn.Dropout``, whose CPU
kernel draws one random number per element through ``bernoulli_``. With adapters on all seven linear
layers of a block that is ~5,000 draws per token per layer, and on a 2-core CPU it was a fifth of a
training step, more than the attention. :class:`FastDropout` draws 64 random bits at a time and
turns each 16-bit slice into one keep/drop decision (keep probability ``1 - p`` to within 1/65536),
then applies the mask with one multiply; the mask is kept as booleans for backward.

Same distribution and scaling as ``nn.Dropout`` (inverted dropout: kept values are scaled by
``1 / (1 - p)``; identity in eval mode), drawn from the same torch generator, so seeding and the
RNG state saved in checkpoints still make runs reproducible. On CUDA the stock kernel is already
fast and is used as is.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Booleans of ``shape``, each True with probability ``1 - p`` (quantised to 1/65536)."""
    count = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=device)
    slices = words.view(torch.int16)[:count].view(shape)  # uniform over [-32768, 32767]
    return slices >= round(p * 65536) - 32768


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on CPU; a subclass, so code that checks for dropout still sees it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        if self.p >= 1:
            return torch.zeros_like(x)
        return x * keep_mask(x.shape, self.p, x.device) * (1.0 / (1.0 - self.p))


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` inside LoRA layers' ``lora_dropout`` dicts; returns how many."""
    replaced = 0
    for module in model.modules():
        holder = getattr(module, "lora_dropout", None)
        if not isinstance(holder, nn.ModuleDict):
            continue
        for name, dropout in list(holder.items()):
            if type(dropout) is nn.Dropout and dropout.p > 0:
                holder[name] = FastDropout(dropout.p)
                holder[name].train(dropout.training)
                replaced += 1
    return replaced
