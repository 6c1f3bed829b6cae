"""Checkpoints that describe themselves, written atomically, and restored exactly on ``--resume``.

``checkpoints/step-N/`` holds:
  trainable.safetensors   the trainable weights (adapter or full model), fp32
  optimizer.pt            AdamW state
  rng.pt                  python, numpy and torch (and CUDA) RNG states
  state.json              step, data position (epoch, batch index, shuffle seed), tokens seen, early-stopping
                          state, the recipe hash, the model, library versions
  recipe.resolved.yaml    the recipe that wrote it

Under FSDP2 (``distributed.strategy: fsdp``) weights and optimizer state are sharded, and so is the
checkpoint: ``sharded/`` is a torch.distributed.checkpoint (DCP) directory of the trainable weights
and optimizer state, every rank writing its own shards (``get_state_dict``/``set_state_dict`` map
them to and from the model's parameter names), and ``rng-<rank>.pt`` holds each rank's RNG states;
``state.json`` and the recipe are written by rank 0. A sharded checkpoint resumes on the same number
of processes with the same strategy (the recipe hash holds the world size).

Under DeepSpeed (``distributed.strategy: deepspeed``) ``deepspeed/`` is DeepSpeed's own checkpoint
(``engine.save_checkpoint`` with tag ``deepspeed``: each rank's ZeRO partition of the fp32 weights and
optimizer state, frozen weights left out), beside DeepSpeed's ``zero_to_fp32.py`` consolidation
script and ``rng-<rank>.pt``; ``--resume`` reads it back with ``engine.load_checkpoint``.

A checkpoint is first written to a hidden temporary directory and renamed into place, so a run
killed while saving leaves the previous checkpoint intact and never a half-written one.
The learning-rate schedule is a pure function of the step, so it needs no state of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tuneloop.errors import UserError
from tuneloop.train import zero
from tuneloop.train.distributed import barrier

# Fields whose change makes a checkpoint's optimizer state or data position meaningless.
HASHED_TRAIN_FIELDS = (
    "epochs", "max_steps", "learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay",
    "max_grad_norm", "batch_size", "gradient_accumulation", "max_seq_len", "packing", "batch_tokens", "overlong",
    "train_on", "precision", "seed",
)


@dataclass
class TrainState:
    """Where training is: enough to continue exactly where it stopped."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_index: int = 0  # next step-batch within the epoch
    tokens_seen: int = 0
    train_seconds: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    initial_validation_loss: float | None = None
    task_tokens: dict = field(default_factory=dict)  # multi-task: tokens trained per task


def recipe_hash(recipe) -> str:
    """Hash of the recipe fields that matter for continuing a run (not logging or eval cadence)."""
    train = recipe.train.model_dump()
    key = {
        "model": recipe.model, "method": recipe.method, "lora": recipe.lora.model_dump(),
        "data.train": recipe.data.train or [task.model_dump() for task in recipe.data.mixture or []], "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "train": {k: train[k] for k in HASHED_TRAIN_FIELDS},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def library_versions() -> dict:
    import importlib.metadata as md

    versions = {}
    for name in ("tuneloop", "torch", "transformers", "peft", "accelerate"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return versions


def trainable_state(model, sharded: bool = False, dist=None) -> dict[str, torch.Tensor]:
    """The trainable weights as full fp32 CPU tensors. ``sharded`` (FSDP2, or ZeRO-3 when ``dist``
    says deepspeed): gathered from every rank, a collective all must join; rank 0 gets the weights,
    the others an empty dict."""
    if sharded and dist is not None and dist.strategy == "deepspeed":
        return zero.gathered_state(model, trainable_only=True)
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        return {name: t.to(torch.float32).contiguous() for name, t in full.items()}
    return {name: p.detach().to("cpu", torch.float32).contiguous().clone()
            for name, p in model.named_parameters() if p.requires_grad}


def full_model_state(model, dist=None) -> dict[str, torch.Tensor]:
    """FSDP2 or ZeRO-3: every weight, trainable or not, gathered to rank 0 (a collective) for the final save."""
    if dist is not None and dist.strategy == "deepspeed":
        return zero.gathered_state(model, trainable_only=False)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def rng_state() -> dict:
    """Every RNG's state as lists, numbers and tensors only, so it loads with ``weights_only=True``
    (a checkpoint may come from someone else; a pickle of arbitrary objects could run code)."""
    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, model, optimizer, state: TrainState, recipe, recipe_yaml: str,
                    weights_only: bool = False, weights: dict | None = None) -> Path:
    """Write a checkpoint to ``directory`` atomically (temp dir + rename, replacing an older one).

    ``weights``: the trainable weights when already gathered (FSDP2), else read from ``model``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights if weights is not None else trainable_state(model), str(tmp / "trainable.safetensors"))
    if not weights_only:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
    _write_meta(tmp, state, recipe, recipe_yaml)
    _move_into_place(tmp, directory)
    return directory


def _write_meta(tmp: Path, state: TrainState, recipe, recipe_yaml: str, checkpoint_format: str = "plain") -> None:
    meta = {"state": asdict(state), "recipe_hash": recipe_hash(recipe), "model": recipe.model,
            "method": recipe.method, "versions": library_versions()}
    if checkpoint_format == "fsdp":
        meta["sharded"] = True  # the key fsdp checkpoints have always carried
    elif checkpoint_format != "plain":
        meta["format"] = checkpoint_format
    (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / "recipe.resolved.yaml").write_text(recipe_yaml)


def save_sharded_checkpoint(directory: Path, model, optimizer, state: TrainState, recipe, recipe_yaml: str,
                            dist) -> Path:
    """FSDP2: every rank writes its shards of the trainable weights and optimizer state (DCP) and its
    RNG states into one temporary directory (a shared file system on several nodes); rank 0 then
    writes the metadata and renames it into place. A collective: every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp-sharded"  # the same name on every rank
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(dist)
    weights, optimizer_state = get_state_dict(model, optimizer,
                                              options=StateDictOptions(ignore_frozen_params=True))
    dcp.save({"model": weights, "optimizer": optimizer_state}, checkpoint_id=str(tmp / "sharded"))
    torch.save(rng_state(), tmp / f"rng-{dist.rank}.pt")
    barrier(dist)
    if dist.is_main:
        _write_meta(tmp, state, recipe, recipe_yaml, "fsdp")
        _move_into_place(tmp, directory)
    barrier(dist)
    return directory


def save_deepspeed_checkpoint(directory: Path, engine, state: TrainState, recipe, recipe_yaml: str, dist) -> Path:
    """DeepSpeed: ``engine.save_checkpoint`` (every rank writes its ZeRO partition) and each rank's RNG
    states into one temporary directory; rank 0 then writes the metadata and renames it into place.
    A collective: every rank calls it."""
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp-deepspeed"  # the same name on every rank
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(dist)
    engine.save_checkpoint(str(tmp), tag="deepspeed", exclude_frozen_parameters=True)
    torch.save(rng_state(), tmp / f"rng-{dist.rank}.pt")
    barrier(dist)
    if dist.is_main:
        _write_meta(tmp, state, recipe, recipe_yaml, "deepspeed")
        _move_into_place(tmp, directory)
    barrier(dist)
    return directory


def _move_into_place(tmp: Path, directory: Path) -> None:
    if directory.exists():  # e.g. best/ being replaced: move the old one aside first
        old = directory.parent / f".{directory.name}.old-{os.getpid()}"
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)


def step_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete ``step-N`` checkpoints, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.glob("step-*") if (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    for old in step_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def check_compatible(checkpoint: Path, recipe) -> dict:
    """The checkpoint's metadata, or a UserError saying why this recipe cannot continue it."""
    try:
        meta = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
        keys_present = all(k in meta for k in ("model", "method", "recipe_hash", "state"))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        keys_present = False
    if not keys_present:
        raise UserError("cannot resume: damaged checkpoint metadata", where=str(checkpoint / "state.json"),
                        hint=f"delete {checkpoint} to resume from the checkpoint before it, or drop --resume")
    if meta["model"] != recipe.model:
        raise UserError(f"cannot resume: checkpoint {checkpoint} was trained from model {meta['model']!r}, "
                        f"the recipe says {recipe.model!r}", hint="use the same model, or drop --resume")
    if meta["method"] != recipe.method:
        raise UserError(f"cannot resume: checkpoint {checkpoint} used method {meta['method']!r}, "
                        f"the recipe says {recipe.method!r}", hint="use the same method, or drop --resume")
    if meta["recipe_hash"] != recipe_hash(recipe):
        raise UserError(
            f"cannot resume: checkpoint {checkpoint} was written by a different recipe "
            f"(hash {meta['recipe_hash']} vs {recipe_hash(recipe)}); a change in data, lora or "
            f"train.{{{', '.join(HASHED_TRAIN_FIELDS[:4])}, ...}} or the number of processes "
            "makes its optimizer state and data position meaningless",
            hint=f"compare with {checkpoint / 'recipe.resolved.yaml'}, or drop --resume to start afresh")
    return meta


def load_weights(checkpoint: Path, model) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise UserError(f"cannot resume: checkpoint {checkpoint} lacks weights such as {missing[0]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def written_format(meta: dict) -> str:
    """How a checkpoint was written: ``plain``, ``fsdp`` or ``deepspeed`` (see DistInfo.checkpoint_format)."""
    return meta.get("format") or ("fsdp" if meta.get("sharded") else "plain")


def restore_checkpoint(checkpoint: Path, model, optimizer, dist=None, engine=None) -> TrainState:
    """Weights, optimizer state and RNG states back into place; returns where training was.

    ``dist`` says how the run writes checkpoints (one process or DDP, FSDP2, DeepSpeed), which must
    match how this one was written; ``engine`` is the run's Engine (DeepSpeed loads through it).
    """
    meta = json.loads((checkpoint / "state.json").read_text())
    now = dist.checkpoint_format if dist is not None else "plain"
    if written_format(meta) != now:
        names = {"plain": "ddp or one process", "fsdp": "fsdp", "deepspeed": "deepspeed"}
        raise UserError(f"cannot resume: checkpoint {checkpoint} was written with {names[written_format(meta)]}, "
                        f"this run uses {names[now]}",
                        hint="resume with the distributed.strategy (and process count) that wrote it")
    if now == "fsdp":
        _restore_sharded(checkpoint, model, optimizer, dist)
        return TrainState(**meta["state"])
    if now == "deepspeed":
        _restore_deepspeed(checkpoint, engine.module, dist)
        return TrainState(**meta["state"])
    load_weights(checkpoint, model)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=True))
    return TrainState(**meta["state"])


def _restore_sharded(checkpoint: Path, model, optimizer, dist) -> None:
    """FSDP2: each rank reads its shards (DCP re-shards if the layout differs) and its RNG states."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    weights, optimizer_state = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    loaded = {"model": weights, "optimizer": optimizer_state}
    # dcp.load fails on any trainable weight the checkpoint lacks; the frozen ones were never saved,
    # hence strict=False when setting them back.
    dcp.load(loaded, checkpoint_id=str(checkpoint / "sharded"))
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"],
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
    set_rng_state(torch.load(checkpoint / f"rng-{dist.rank}.pt", weights_only=True))


def _restore_deepspeed(checkpoint: Path, engine, dist) -> None:
    """DeepSpeed: each rank reads its ZeRO partition back (``load_checkpoint``; the frozen weights were
    never saved, hence not strict), then its RNG states."""
    path, _ = engine.load_checkpoint(str(checkpoint), tag="deepspeed", load_module_strict=False,
                                     load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise UserError(f"cannot resume: DeepSpeed found no checkpoint in {checkpoint / 'deepspeed'}",
                        hint=f"delete {checkpoint} to resume from the checkpoint before it, or drop --resume")
    set_rng_state(torch.load(checkpoint / f"rng-{dist.rank}.pt", weights_only=True))
