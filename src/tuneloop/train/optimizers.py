"""The optimizer a recipe names (``train.optimizer``), as one pure function both trainers call.

    optimizer = make_optimizer(param_groups, recipe.train)

``param_groups`` are torch parameter groups (each may carry its own ``weight_decay``); the learning
rate is the recipe's peak rate, which the step loop's warmup-then-decay schedule scales each step.

* ``adamw`` (default): torch's AdamW, betas (0.9, 0.999).
* ``adamw_8bit``: bitsandbytes' 8-bit AdamW (optimizer state in 8 bits: ~75% less optimizer memory);
  CUDA only, since bitsandbytes' kernels are.
* ``sgd``: SGD with momentum 0.9 (the least optimizer memory; needs a higher learning rate).
* ``adafactor``: torch's Adafactor (factored second moments, no first moment: memory ~ rows + cols
  per matrix instead of 2x its size).
"""

from __future__ import annotations

import torch

from tuneloop.errors import UserError

OPTIMIZERS = ("adamw", "adamw_8bit", "sgd", "adafactor")


def make_optimizer(param_groups: list[dict], train_config, device: str | torch.device = "cpu"):
    """The optimizer ``train_config.optimizer`` names over ``param_groups`` (empty groups dropped)."""
    groups = [g for g in param_groups if g["params"]]
    name = getattr(train_config, "optimizer", "adamw")
    lr = train_config.learning_rate
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr)
    if name == "adamw_8bit":
        if torch.device(device).type != "cuda":
            raise UserError("train.optimizer adamw_8bit needs a CUDA GPU (bitsandbytes' 8-bit kernels)",
                            hint="use adamw or adafactor on this machine")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("train.optimizer adamw_8bit needs bitsandbytes",
                            hint="pip install 'tuneloop[gpu]'") from None
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=(0.9, 0.999))
    raise UserError(f"train.optimizer: unknown optimizer {name!r}", hint=f"use one of {', '.join(OPTIMIZERS)}")


def decay_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not norms or biases), the usual AdamW practice."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
