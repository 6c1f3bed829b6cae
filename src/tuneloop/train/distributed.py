"""Data parallelism on torch's own engines, across processes started by ``torchrun`` or ``accelerate launch``.

The recipe's ``distributed.strategy`` picks the engine when WORLD_SIZE > 1 (one process runs plain):

* ``ddp``: :class:`torch.nn.parallel.DistributedDataParallel`; every process holds the whole model and
  the gradients are all-reduced in buckets while backward runs.
* ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on every decoder layer and on the root;
  weights, gradients and optimizer state are sharded, so checkpoints are sharded too (DCP, see
  ``train.checkpoint``) and the final weights are gathered to rank 0 once.
* ``deepspeed``: DeepSpeed ZeRO stage 1, 2 or 3 (``deepspeed.initialize``, see ``train.zero``);
  its engine also takes the backward pass and the optimizer step (:meth:`Engine.backward`,
  :meth:`Engine.step`), and checkpoints are DeepSpeed's own.

Each process tokenises the same data deterministically, takes its share of every optimizer step's
rows, and divides its summed loss by the supervised-token count of the *global* step. The engines
*average* gradients over the processes, so the loss is also multiplied by the world size
(:attr:`Engine.gradient_scale`): the synchronised gradient then equals the single-process gradient of
the same global batch. Gradient-accumulation micro-steps skip the synchronisation (``no_sync()`` /
``set_requires_gradient_sync(False)``; DeepSpeed: ``set_gradient_accumulation_boundary(False)``);
the last one synchronises. Only rank 0 writes files.
Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tuneloop.errors import UserError
from tuneloop.train import zero

STRATEGIES = ("ddp", "fsdp", "deepspeed")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"  # none (one process) | ddp | fsdp | deepspeed
    zero_stage: int = 0  # deepspeed: 1, 2 or 3

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        """Weights are sharded (FSDP2, ZeRO-3): gathering them, and every forward, are collectives
        every rank must join."""
        return self.strategy == "fsdp" or (self.strategy == "deepspeed" and self.zero_stage == 3)

    @property
    def checkpoint_format(self) -> str:
        """How step checkpoints are written: ``plain`` (rank 0), ``fsdp`` (DCP) or ``deepspeed``."""
        return self.strategy if self.strategy in ("fsdp", "deepspeed") else "plain"


def init_distributed(config=None) -> DistInfo:
    """Join the process group when launched with WORLD_SIZE > 1; otherwise a single process.

    ``config`` is the recipe's ``distributed:`` section (None: ddp).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world <= 1:
        return DistInfo(0, 1, 0, device)
    strategy = config.strategy if config is not None else "ddp"
    stage = 0
    if strategy == "deepspeed":
        zero.require_deepspeed()  # before the process group: a missing package fails at once, on every rank
        stage = zero.stage_of(config)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(device)
    return DistInfo(dist.get_rank(), world, local_rank, device, strategy, stage)


# ---------------------------------------------------------------------------------------------
# The engine a process runs its model through


class Forward(nn.Module):
    """The module the engine wraps: ``forward(fn, *args)`` returns ``fn(self.inner, *args)``.

    Why: DDP prepares its gradient synchronisation, and FSDP2 gathers the root's weights (embeddings,
    final norm, a tied head), only inside the wrapped module's own forward. The methods compute with
    parts of their model (the decoder, then the head at answer positions only, or ``generate``); run
    through this module, every such computation is inside the engine's forward.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, fn: Callable, *args, **kwargs):
        return fn(self.inner, *args, **kwargs)


class Engine:
    """How this process runs ``inner`` (a model, or a module holding one): plain, DDP, FSDP2 or DeepSpeed.

    ``engine(fn, *args)`` = ``fn(inner, *args)`` inside the engine's forward. DeepSpeed's engine is
    made with the optimizer, so under deepspeed :meth:`start_deepspeed` completes the set-up.
    """

    def __init__(self, inner: nn.Module, dist: DistInfo, config=None):
        self.dist = dist
        self.inner = inner
        self.module: nn.Module = Forward(inner)
        if dist.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # Buffers (rotary frequencies) are the same everywhere: no broadcast before each forward,
            # so rank 0 may also run forwards of its own (sample generations) without a collective.
            self.module = DistributedDataParallel(
                self.module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                broadcast_buffers=False)
        elif dist.strategy == "fsdp":
            shard(self.module, decoder_layers(inner), config)

    @property
    def deepspeed(self) -> bool:
        return self.dist.strategy == "deepspeed"

    def start_deepspeed(self, optimizer: torch.optim.Optimizer, config: dict) -> None:
        """``deepspeed.initialize`` with tuneloop's optimizer and the run's DeepSpeed ``config``."""
        self.module = zero.start(self.module, optimizer, config)

    def __call__(self, fn: Callable, *args, **kwargs):
        return self.module(fn, *args, **kwargs)

    @property
    def gradient_scale(self) -> float:
        """The engines average gradients over processes; the loss is normalised for a sum."""
        return float(self.dist.world_size) if self.dist.strategy in STRATEGIES else 1.0

    def synchronising(self, last: bool):
        """Context for one micro-step's forward and backward: gradients sync on the ``last`` only."""
        if self.dist.strategy == "ddp" and not last:
            return self.module.no_sync()
        if self.dist.strategy == "fsdp":
            self.module.set_requires_gradient_sync(last)
        if self.deepspeed:  # ZeRO reduces (and steps) at the boundary; tuneloop owns the micro-steps
            self.module.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """DeepSpeed's backward (ZeRO's gradient hooks and loss scaling), unscaled: the loss is
        already normalised for the whole step; else plain autograd."""
        if self.deepspeed:
            self.module.backward(loss, scale_wrt_gas=False)
        else:
            loss.backward()

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Before a step's first backward. DeepSpeed clears its gradients itself, in ``step()``."""
        if not self.deepspeed:
            optimizer.zero_grad(set_to_none=True)

    def step(self, optimizer: torch.optim.Optimizer, params: list, max_grad_norm: float | None) -> float | None:
        """Clip (``max_grad_norm``) and take the optimizer step; returns the gradient norm before
        clipping (None without clipping). DeepSpeed clips inside its ``step()`` (``gradient_clipping``
        in its config) and reports the norm of its partitioned gradients."""
        if self.deepspeed:
            self.module.step()
            norm = self.module.get_global_grad_norm()
            return float(norm) if max_grad_norm is not None and norm is not None else None
        grad_norm = self.clip_grad_norm(params, max_grad_norm) if max_grad_norm is not None else None
        optimizer.step()
        return grad_norm

    def clip_grad_norm(self, params: list, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: the norm of sharded gradients is a DTensor
            norm = norm.full_tensor()
        return float(norm)


def decoder_layers(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face model inside ``module`` (each gets its own FSDP unit).

    Found by the classes the model lists in ``_no_split_modules`` (e.g. LlamaDecoderLayer): the same
    blocks transformers keeps whole when it places a model on several devices.
    """
    names = set()
    for sub in module.modules():
        names.update(getattr(sub, "_no_split_modules", None) or [])
    layers = [sub for sub in module.modules() if type(sub).__name__ in names]
    if not layers:
        raise UserError("distributed.strategy fsdp: this model names no decoder-layer class to shard "
                        "(transformers' _no_split_modules is empty)", hint="use strategy: ddp")
    return layers


def shard(root: nn.Module, layers: list[nn.Module], config) -> None:
    """FSDP2: ``fully_shard`` each decoder layer, then the root (embeddings, norm and head)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    options = {"offload_policy": CPUOffloadPolicy() if config is not None and config.cpu_offload else OffloadPolicy()}
    precision = getattr(config, "mixed_precision", "none")
    if precision != "none":
        # Gathered weights (and so the matmuls) in bf16/fp16; gradients reduced in fp32, master weights fp32.
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(root, **options)


# ---------------------------------------------------------------------------------------------
# Collectives on small values (counts, metrics, decisions)


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return value
    import torch.distributed as dist

    on_device = value.to(info.device)  # nccl reduces CUDA tensors only; gloo CPU ones
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.to(value.device)


def all_reduce_max(value: int, info: DistInfo) -> int:
    if not info.enabled:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
