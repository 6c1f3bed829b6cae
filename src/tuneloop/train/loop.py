"""The pieces of the training loop: schedule, batch order, one optimizer step, evaluation, guards.

Read top to bottom like nanoGPT's train.py, but as functions so other methods (DPO, QAT, mixtures)
and the benchmark can call them with their own loss. The orchestration that strings them together
(run directory, checkpoints, progress bar) is in :mod:`tuneloop.train.run`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tuneloop.chat.template import IGNORE_INDEX
from tuneloop.errors import UserError
from tuneloop.train.data import Sample, collate_micro_batch, row_tokens
from tuneloop.train.distributed import DistInfo, all_reduce_gradients, all_reduce_sum


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, schedule: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    # 1) linear warmup; never 0, so the first step already trains (and the guard can check it)
    if step < warmup_steps:
        return peak * (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return peak
    # 2) after warmup, decay towards 0 over the remaining steps (progress < 1 at the last step)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return peak * (1.0 - progress)
    # 3) cosine
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of an epoch: a pure function of (seed, epoch), so resume can replay it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_rows, generator=generator).tolist()


def steps_per_epoch(n_rows: int, rows_per_step: int) -> int:
    return max(1, math.ceil(n_rows / rows_per_step))


def total_steps(n_rows: int, rows_per_step: int, epochs: float, max_steps: int | None) -> int:
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(epochs * steps_per_epoch(n_rows, rows_per_step)))


def micro_batches(step_rows: list, rank: int, world_size: int, batch_size: int) -> list[list]:
    """This process's share of a step's units (every world_size-th), cut into micro-batches.

    ``batch_size`` is in units: examples, or token-budget rows (see ``data.examples_per_micro_batch``).
    """
    mine = step_rows[rank::world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


@dataclass
class StepResult:
    loss: float  # mean loss per supervised token over the whole (global) step
    tokens: int  # real (non-padding) tokens in the global step
    supervised_tokens: int
    grad_norm: float | None


def count_targets(batch: dict) -> int:
    return int((batch["targets"] != IGNORE_INDEX).sum())


def train_step(loss_model, batches: list[dict], optimizer, params: list, lr: float,
               max_grad_norm: float | None, dist: DistInfo, real_tokens: int) -> StepResult:
    """Forward/backward over this process's micro-batches, sum gradients across processes, step.

    Each micro-batch's summed loss is divided by the supervised-token count of the whole global step,
    so accumulated (and all-reduced) gradients are exactly those of one big batch.
    """
    optimizer.zero_grad(set_to_none=True)
    counts = torch.tensor([sum(count_targets(b) for b in batches), real_tokens], dtype=torch.float64)
    global_supervised, global_tokens = all_reduce_sum(counts, dist).tolist()
    loss_total = torch.zeros((), dtype=torch.float64)
    for batch in batches:
        loss_sum, _ = loss_model(**{k: v.to(dist.device) for k, v in batch.items()})
        (loss_sum / max(1.0, global_supervised)).backward()
        loss_total += loss_sum.detach().double().cpu()
    all_reduce_gradients(params, dist)
    loss_total = all_reduce_sum(loss_total, dist)
    grad_norm = None
    if max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return StepResult(float(loss_total) / max(1.0, global_supervised), int(global_tokens),
                      int(global_supervised), grad_norm)


@torch.no_grad()
def evaluate(loss_model, rows: list[list[Sample]], batch_size: int, pad_id: int, dist: DistInfo,
             packing: bool = True) -> float:
    """Mean validation loss per supervised token. Memory stays one micro-batch: only sums are kept."""
    was_training = loss_model.training
    loss_model.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    for batch_rows in micro_batches(rows, dist.rank, dist.world_size, batch_size):
        batch = collate_micro_batch(batch_rows, pad_id, packing)
        loss_sum, count = loss_model(**{k: v.to(dist.device) for k, v in batch.items()})
        totals += torch.tensor([float(loss_sum), float(count)], dtype=torch.float64)
    totals = all_reduce_sum(totals, dist)
    loss_model.train(was_training)
    return float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")


def step_real_tokens(rows: list[list[Sample]]) -> int:
    return sum(row_tokens(row) for row in rows)


# ---------------------------------------------------------------------------------------------
# Guards against a run that trains nothing


def check_gradients(model) -> None:
    """After the first backward: every trainable tensor must have a non-zero gradient.

    LoRA A matrices are exempt at this point: B starts at zero, so A's gradient is exactly zero on
    the first step by construction (it becomes non-zero once B has moved).
    """
    dead = [name for name, p in model.named_parameters() if p.requires_grad and "lora_A" not in name
            and (p.grad is None or not torch.any(p.grad != 0))]
    if dead:
        raise UserError(
            f"training would change nothing: {len(dead)} trainable tensor(s) got no gradient on the first "
            f"step, e.g. {', '.join(dead[:3])}",
            hint="check that the targeted modules are used by the model and that samples have trained tokens")


def lora_b_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n}


def check_moved(model, before: dict[str, torch.Tensor]) -> None:
    """After the first optimizer step: every LoRA B matrix must have moved away from its start."""
    params = dict(model.named_parameters())
    still = [n for n, b in before.items() if torch.equal(params[n].detach(), b)]
    if still:
        raise UserError(
            f"training would change nothing: {len(still)} LoRA B matrices did not move on the first "
            f"optimizer step, e.g. {still[0]}",
            hint="the learning rate may be zero or far too small for fp32 to register (train.learning_rate)")
