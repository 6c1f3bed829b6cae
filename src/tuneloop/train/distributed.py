"""Data parallelism on torch's own engines, across processes started by ``torchrun`` or ``accelerate launch``.

The recipe's ``distributed.strategy`` picks the engine when WORLD_SIZE > 1 (one process runs plain):

* ``ddp``: :class:`torch.nn.parallel.DistributedDataParallel`; every process holds the whole model and
  the gradients are all-reduced in buckets while backward runs.
* ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on every decoder layer and on the root;
  weights, gradients and optimizer state are sharded, so checkpoints are sharded too (DCP, see
  ``train.checkpoint``) and the final weights are gathered to rank 0 once.

Each process tokenises the same data deterministically, takes its share of every optimizer step's
rows, and divides its summed loss by the supervised-token count of the *global* step. Both engines
*average* gradients over the processes, so the loss is also multiplied by the world size
(:attr:`Engine.gradient_scale`): the synchronised gradient then equals the single-process gradient of
the same global batch. Gradient-accumulation micro-steps skip the synchronisation (``no_sync()`` /
``set_requires_gradient_sync(False)``); the last one synchronises. Only rank 0 writes files.
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

STRATEGIES = ("ddp", "fsdp")  # the ones that run; the recipe also accepts deepspeed, to refuse it clearly


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"  # none (one process) | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        """Weights are sharded: saving and loading them are collectives every rank must join."""
        return self.strategy == "fsdp"


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
    if strategy not in STRATEGIES:
        raise UserError(
            f"distributed.strategy: {strategy} is not supported by this version of tuneloop (DeepSpeed is "
            "not installed here and no DeepSpeed engine is wired in)",
            hint="use strategy: fsdp (sharded weights, gradients and optimizer state: ZeRO-3's memory "
                 "savings on torch's own engine) or ddp")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(device)
    return DistInfo(dist.get_rank(), world, local_rank, device, strategy)


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
    """How this process runs ``inner`` (a model, or a module holding one): plain, DDP or FSDP2.

    ``engine(fn, *args)`` = ``fn(inner, *args)`` inside the engine's forward.
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

    def __call__(self, fn: Callable, *args, **kwargs):
        return self.module(fn, *args, **kwargs)

    @property
    def gradient_scale(self) -> float:
        """Both engines average gradients over processes; the loss is normalised for a sum."""
        return float(self.dist.world_size) if self.dist.strategy in STRATEGIES else 1.0

    def synchronising(self, last: bool):
        """Context for one micro-step's forward and backward: gradients sync on the ``last`` only."""
        if self.dist.strategy == "ddp" and not last:
            return self.module.no_sync()
        if self.dist.strategy == "fsdp":
            self.module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

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
