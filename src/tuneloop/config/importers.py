"""`tuneloop recipe import FILE`: an Axolotl, LLaMA-Factory or TRL config as a tuneloop recipe.

:func:`import_config` detects the tool from the keys, maps each key it knows onto the recipe and
returns the keys it could not map with the reason, so nothing is dropped silently. The mapping is a
table per tool (tool key -> recipe path, with a converter where values differ); keys that mean
nothing for tuneloop's training (logging cadence of the other tool, hub upload, DeepSpeed paths)
are reported as not mapped like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneloop.errors import UserError

_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant",
               "constant_with_warmup": "constant"}
_METHODS = {"sft": None, "dpo": "dpo", "kto": "kto", "orpo": "orpo", "rm": "reward", "ppo": None,
            "grpo": "grpo", "simpo": None}


def _first(value):
    return value[0] if isinstance(value, list) and value else value


def _targets(value):
    if value in ("all", "all-linear", True):
        return "all-linear"
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _dataset(value):
    entry = _first(value)
    if isinstance(entry, dict):
        entry = entry.get("path") or entry.get("name")
    if isinstance(entry, str) and "," in entry:
        entry = entry.split(",")[0].strip()
    return entry


def _scheduler(value):
    if value not in _SCHEDULERS:
        raise ValueError(f"scheduler {value!r} has no tuneloop equivalent (cosine, linear, constant)")
    return _SCHEDULERS[value]


def _tracking(value):
    names = [value] if isinstance(value, str) else list(value or [])
    known = [n for n in names if n in ("mlflow", "tensorboard", "wandb", "none")]
    if not known:
        raise ValueError(f"{value!r} is not a tracking backend tuneloop has (mlflow, tensorboard, wandb)")
    return known if len(known) > 1 else known[0]


# tool key -> (recipe path, converter)
Mapping = dict[str, tuple[str, Callable[[Any], Any] | None]]

COMMON: Mapping = {
    "learning_rate": ("train.learning_rate", float),
    "gradient_accumulation_steps": ("train.gradient_accumulation", int),
    "max_steps": ("train.max_steps", lambda v: int(v) if v and int(v) > 0 else None),
    "warmup_ratio": ("train.warmup_ratio", float),
    "weight_decay": ("train.weight_decay", float),
    "max_grad_norm": ("train.max_grad_norm", float),
    "seed": ("train.seed", int),
    "gradient_checkpointing": ("train.gradient_checkpointing", bool),
    "neftune_noise_alpha": ("train.neftune_alpha", lambda v: float(v) if v else None),  # TRL, Axolotl
    "eval_steps": ("train.eval_every", int),
    "save_steps": ("train.save_every", int),
    "lora_alpha": ("lora.alpha", float),
    "lora_dropout": ("lora.dropout", float),
    "bf16": ("train.precision", lambda v: "bf16" if v else "fp32"),
    "fp16": ("train.precision", lambda v: "fp16" if v else "fp32"),
}

TOOLS: dict[str, Mapping] = {
    "axolotl": COMMON | {
        "base_model": ("model", str),
        "datasets": ("data.train", _dataset),
        "adapter": ("method", lambda v: {"lora": "lora", "qlora": "qlora"}[v]),
        "rl": ("method", lambda v: _METHODS[v] or _unsupported(v)),
        "lora_r": ("lora.r", int),
        "lora_target_modules": ("lora.target_modules", _targets),
        "lora_target_linear": ("lora.target_modules", lambda v: "all-linear" if v else _unsupported(v)),
        "sequence_len": ("train.max_seq_len", int),
        "sample_packing": ("train.packing", bool),
        "micro_batch_size": ("train.batch_size", int),
        "num_epochs": ("train.epochs", float),
        "lr_scheduler": ("train.lr_scheduler", _scheduler),
        "chat_template": ("chat_template", lambda v: "chatml" if v == "chatml" else _unsupported(v)),
        "train_on_inputs": ("train.train_on", lambda v: "all" if v else "assistant"),
        "output_dir": ("output_dir", str),
    },
    "llama-factory": COMMON | {
        "model_name_or_path": ("model", str),
        "dataset": ("data.train", _dataset),
        "stage": ("method", lambda v: _METHODS.get(v) or ("lora" if v == "sft" else _unsupported(v))),
        "finetuning_type": ("finetuning", lambda v: {"lora": "lora", "full": "full"}[v]),
        "lora_rank": ("lora.r", int),
        "lora_target": ("lora.target_modules", _targets),
        "cutoff_len": ("train.max_seq_len", int),
        "packing": ("train.packing", bool),
        "per_device_train_batch_size": ("train.batch_size", int),
        "num_train_epochs": ("train.epochs", float),
        "lr_scheduler_type": ("train.lr_scheduler", _scheduler),
        "pref_beta": ("preference.beta", float),
        "neftune_alpha": ("train.neftune_alpha", lambda v: float(v) if v else None),
        "template": ("chat_template", lambda v: "chatml" if v in ("chatml", "qwen") else _unsupported(v)),
        "report_to": ("tracking.backend", _tracking),
        "output_dir": ("output_dir", str),
    },
    "trl": COMMON | {
        "model_name_or_path": ("model", str),
        "dataset_name": ("data.train", str),
        "use_peft": ("method", lambda v: "lora" if v else "full"),
        "lora_r": ("lora.r", int),
        "lora_target_modules": ("lora.target_modules", _targets),
        "max_length": ("train.max_seq_len", int),
        "max_seq_length": ("train.max_seq_len", int),
        "packing": ("train.packing", bool),
        "per_device_train_batch_size": ("train.batch_size", int),
        "num_train_epochs": ("train.epochs", float),
        "lr_scheduler_type": ("train.lr_scheduler", _scheduler),
        "beta": ("preference.beta", float),
        "assistant_only_loss": ("train.train_on", lambda v: "assistant" if v else "all"),
        "report_to": ("tracking.backend", _tracking),
        "output_dir": ("output_dir", str),
    },
}


def _unsupported(value):
    raise ValueError(f"{value!r} has no tuneloop equivalent")


@dataclass
class Imported:
    tool: str
    recipe: dict
    unmapped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)


def detect_tool(raw: dict) -> str:
    keys = set(raw)
    if keys & {"base_model", "micro_batch_size", "sequence_len", "datasets"}:
        return "axolotl"
    if keys & {"stage", "finetuning_type", "cutoff_len", "lora_target", "template"}:
        return "llama-factory"
    if keys & {"model_name_or_path", "dataset_name", "use_peft", "per_device_train_batch_size"}:
        return "trl"
    raise UserError("not an Axolotl, LLaMA-Factory or TRL config (none of their model keys: base_model, "
                    "model_name_or_path, stage, dataset_name)",
                    hint="give the YAML you pass to `axolotl train`, `llamafactory-cli train` or a TRL script")


def import_config(raw: dict, tool: str | None = None) -> Imported:
    """The recipe dict for a tool's config, and every key that could not be mapped (with why)."""
    tool = tool or detect_tool(raw)
    table = TOOLS[tool]
    result = Imported(tool, {"name": "imported", "method": "lora", "data": {"train": None},
                             "tracking": {"backend": "none"}})
    for key, value in raw.items():
        if key not in table:
            result.unmapped.append((key, "no tuneloop equivalent"))
            continue
        path, convert = table[key]
        try:
            converted = convert(value) if convert else value
        except (ValueError, KeyError, TypeError) as e:
            result.unmapped.append((key, str(e) if isinstance(e, ValueError) else f"value {value!r} not supported"))
            continue
        _set(result.recipe, path, converted)
    recipe = result.recipe
    # LLaMA-Factory's stage names the objective, finetuning_type whether it is LoRA or full.
    if recipe.get("finetuning") == "full" and recipe["method"] == "lora":
        recipe["method"] = "full"
        recipe.pop("finetuning")
    elif recipe.get("finetuning") and recipe["method"] in ("lora", "full", "qlora"):
        recipe.pop("finetuning")
    if recipe["data"]["train"] is None:
        result.unmapped.append(("(data)", "no dataset found; set data.train to a JSONL file"))
        recipe["data"]["train"] = "train.jsonl"
    return result


def _set(tree: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value
