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
from tuneloop.train.distributed import DistInfo, all_reduce_max, all_reduce_sum


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


def train_step(engine, batches: list[dict], optimizer, params: list, lr: float,
               max_grad_norm: float | None, dist: DistInfo, real_tokens: int,
               filler: dict | None = None) -> StepResult:
    """Forward/backward over this process's micro-batches through the engine (DDP, FSDP2, DeepSpeed or
    plain), step.

    Each micro-batch's summed loss is divided by the supervised-token count of the whole global step,
    so accumulated (and synchronised) gradients are exactly those of one big batch. Every process runs
    the same number of micro-steps (FSDP2 gathers weights in each forward, DDP syncs on the last):
    a process with fewer rows repeats one of them at weight 0 (``filler``, one of the step's rows,
    where it has none at all: an epoch's last step with fewer rows than processes).
    """
    engine.zero_grad(optimizer)
    counts = torch.tensor([sum(count_targets(b) for b in batches), real_tokens], dtype=torch.float64)
    global_supervised, global_tokens = all_reduce_sum(counts, dist).tolist()
    weighted = padded_micro_batches(batches, dist, filler)
    scale = engine.gradient_scale / max(1.0, global_supervised)
    loss_total = torch.zeros((), dtype=torch.float64)
    for i, (batch, weight) in enumerate(weighted):
        with engine.synchronising(last=i == len(weighted) - 1):
            loss_sum, _ = engine(call_loss, {k: v.to(dist.device) for k, v in batch.items()})
            engine.backward(loss_sum * (weight * scale))
        loss_total += weight * loss_sum.detach().double().cpu()
    loss_total = all_reduce_sum(loss_total, dist)
    for group in optimizer.param_groups:
        group["lr"] = lr
    grad_norm = engine.step(optimizer, params, max_grad_norm)
    return StepResult(float(loss_total) / max(1.0, global_supervised), int(global_tokens),
                      int(global_supervised), grad_norm)


def call_loss(loss_model, batch: dict):
    """What the engine runs for SFT: the loss module's forward (summed loss, supervised tokens)."""
    return loss_model(**batch)


def padded_micro_batches(batches: list, dist: DistInfo, filler=None) -> list[tuple]:
    """``(batch, weight)`` pairs, as many on every process: the real ones at weight 1, then repeats of
    one (``filler`` where this process has none) at weight 0."""
    most = all_reduce_max(len(batches), dist)
    spare = batches[0] if batches else filler
    return [(b, 1.0) for b in batches] + [(spare, 0.0)] * (most - len(batches))


@torch.no_grad()
def evaluate(engine, rows: list[list[Sample]], batch_size: int, pad_id: int, dist: DistInfo,
             packing: bool = True) -> float:
    """Mean validation loss per supervised token. Memory stays one micro-batch: only sums are kept."""
    loss_model = engine.inner
    was_training = loss_model.training
    loss_model.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    mine = micro_batches(rows, dist.rank, dist.world_size, batch_size)
    for batch_rows, weight in padded_micro_batches(mine, dist, filler=rows[:1]):
        batch = collate_micro_batch(batch_rows, pad_id, packing)
        loss_sum, count = engine(call_loss, {k: v.to(dist.device) for k, v in batch.items()})
        totals += weight * torch.tensor([float(loss_sum), float(count)], dtype=torch.float64)
    totals = all_reduce_sum(totals, dist)
    loss_model.train(was_training)
    return float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")


def step_real_tokens(rows: list[list[Sample]]) -> int:
    return sum(row_tokens(row) for row in rows)


# ---------------------------------------------------------------------------------------------
# Guards against a run that trains nothing


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of an FSDP2 (DTensor) value or a ZeRO-3 parameter; a plain tensor as it is."""
    if hasattr(tensor, "ds_tensor"):  # ZeRO-3: the parameter's own data is empty between gathers
        return tensor.ds_tensor
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def check_gradients(model, dist: DistInfo | None = None) -> None:
    """After the first backward: every trainable tensor must have a non-zero gradient.

    LoRA A matrices are exempt at this point: B starts at zero, so A's gradient is exactly zero on
    the first step by construction (it becomes non-zero once B has moved). Under FSDP2 each process
    sees its shard of each gradient; a tensor is dead if it is zero on every process.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and "lora_A" not in name]
    alive = torch.tensor([float(p.grad is not None and bool(torch.any(local(p.grad) != 0))) for _, p in named])
    alive = all_reduce_sum(alive, dist) if dist is not None and dist.sharded else alive
    dead = [name for (name, _), a in zip(named, alive.tolist()) if a == 0]
    if dead:
        raise UserError(
            f"training would change nothing: {len(dead)} trainable tensor(s) got no gradient on the first "
            f"step, e.g. {', '.join(dead[:3])}",
            hint="check that the targeted modules are used by the model and that samples have trained tokens")


def lora_b_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: local(p).detach().clone() for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n}


def check_moved(model, before: dict[str, torch.Tensor], dist: DistInfo | None = None) -> None:
    """After the first optimizer step: every LoRA B matrix must have moved away from its start
    (on some process, under FSDP2, where each holds a shard)."""
    params = dict(model.named_parameters())
    names = list(before)
    moved = torch.tensor([float(not torch.equal(local(params[n]).detach(), before[n])) for n in names])
    moved = all_reduce_sum(moved, dist) if dist is not None and dist.sharded else moved
    still = [n for n, m in zip(names, moved.tolist()) if m == 0]
    if still:
        raise UserError(
            f"training would change nothing: {len(still)} LoRA B matrices did not move on the first "
            f"optimizer step, e.g. {still[0]}",
            hint="the learning rate may be zero or far too small for fp32 to register (train.learning_rate)")
