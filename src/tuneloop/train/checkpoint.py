"""Checkpoints that describe themselves, written atomically, and restored exactly on ``--resume``.

``checkpoints/step-N/`` holds:
  trainable.safetensors   the trainable weights (adapter or full model), fp32
  optimizer.pt            AdamW state
  rng.pt                  python, numpy and torch (and CUDA) RNG states
  state.json              step, data position (epoch, batch index, shuffle seed), tokens seen, early-stopping
                          state, the recipe hash, the model, library versions
  recipe.resolved.yaml    the recipe that wrote it

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


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", torch.float32).contiguous().clone()
            for name, p in model.named_parameters() if p.requires_grad}


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
                    weights_only: bool = False) -> Path:
    """Write a checkpoint to ``directory`` atomically (temp dir + rename, replacing an older one)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    if not weights_only:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
    meta = {"state": asdict(state), "recipe_hash": recipe_hash(recipe), "model": recipe.model,
            "method": recipe.method, "versions": library_versions()}
    (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / "recipe.resolved.yaml").write_text(recipe_yaml)
    if directory.exists():  # e.g. best/ being replaced: move the old one aside first
        old = directory.parent / f".{directory.name}.old-{os.getpid()}"
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory


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


def restore_checkpoint(checkpoint: Path, model, optimizer) -> TrainState:
    meta = json.loads((checkpoint / "state.json").read_text())
    load_weights(checkpoint, model)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=True))
    return TrainState(**meta["state"])
