"""DeepSpeed ZeRO as the engine of ``distributed.strategy: deepspeed``: its config, start and weights.

The recipe's ``distributed:`` keys become a DeepSpeed config (:func:`recipe_config`), or a user's JSON
file is used as is (:func:`file_config`), with its ``"auto"`` values filled from ``train:``. tuneloop
keeps its own loop under DeepSpeed, as it does under DDP and FSDP2:

* its optimizer (``train.optimizer``) goes to ``deepspeed.initialize``, which wraps it in the ZeRO
  optimizer; the learning rate of each step is set on the param groups, which ZeRO keeps;
* its micro-steps and loss normalisation: DeepSpeed is told the whole per-process step is one micro
  batch (``gradient_accumulation_steps`` 1, so it never rescales the loss), and tuneloop marks the
  last micro-step with ``set_gradient_accumulation_boundary`` (as accelerate does) before ``step()``;
* ZeRO averages gradients over processes, as DDP does, so the loss carries the same world-size factor.

Checkpoints are DeepSpeed's own (``save_checkpoint``/``load_checkpoint``, each rank writing its
partition, frozen weights left out; see ``train.checkpoint``). Under ZeRO-1/2 every process holds the
whole weights; under ZeRO-3 they are partitioned and :func:`gathered_state` collects them for
``best/`` and the final save. On a CPU machine DeepSpeed runs on its CPU accelerator (gloo), on GPUs
on CUDA (nccl). Torch optimizers need no compiled DeepSpeed op, which is why offload keeps tuneloop's
optimizer instead of requiring DeepSpeedCPUAdam (``zero_force_ds_cpu_optimizer: false``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tuneloop.errors import UserError
from tuneloop.train.data import examples_per_micro_batch

DEFAULT_STAGE = 2
# The keys that say what tuneloop's loop does; a user's file may leave them out or say "auto".
LOOP_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
QUIET = 10**9  # steps_per_print: DeepSpeed's own per-step log line would interleave with the progress bar


def require_deepspeed():
    try:
        import deepspeed
    except ImportError as error:
        raise UserError(f"distributed.strategy: deepspeed needs the deepspeed package ({error})",
                        hint="pip install 'tuneloop[deepspeed]' (DS_BUILD_OPS=0: no compiled ops are "
                             "needed), or use strategy: fsdp") from None
    return deepspeed


def loop_settings(train, world_size: int) -> dict:
    """What tuneloop's loop does per optimizer step, in DeepSpeed's words (``train`` is ``train:``)."""
    per_micro = examples_per_micro_batch(train.batch_size, train.batch_tokens)
    return {"train_batch_size": per_micro * train.gradient_accumulation * world_size,
            "train_micro_batch_size_per_gpu": per_micro,
            "gradient_accumulation_steps": train.gradient_accumulation,
            "gradient_clipping": float(train.max_grad_norm or 0.0)}


def engine_settings(train, world_size: int) -> dict:
    """The loop keys DeepSpeed runs with: one "micro batch" per step (tuneloop accumulates itself)."""
    loop = loop_settings(train, world_size)
    per_process = loop["train_batch_size"] // world_size
    return {"train_batch_size": loop["train_batch_size"], "train_micro_batch_size_per_gpu": per_process,
            "gradient_accumulation_steps": 1, "gradient_clipping": loop["gradient_clipping"]}


def recipe_config(distributed, train, world_size: int) -> dict:
    """The DeepSpeed config for the recipe's ``distributed:`` (zero_stage, offload) and ``train:``."""
    zero = {"stage": distributed.zero_stage or DEFAULT_STAGE}
    if distributed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if distributed.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {**engine_settings(train, world_size), "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,  # train.optimizer may be other than torch's Adam/AdamW
            "zero_force_ds_cpu_optimizer": False, "steps_per_print": QUIET}


def read_config_file(path: str) -> dict:
    try:
        config = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"distributed.deepspeed_config: no file {path}", where=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"distributed.deepspeed_config: not a JSON file ({error})", where=path) from None
    if not isinstance(config, dict):
        raise UserError("distributed.deepspeed_config: the file must hold a JSON object", where=path)
    return config


def file_config(path: str, train, world_size: int) -> dict:
    """A user's DeepSpeed config as is, but for what tuneloop's loop decides.

    The batch keys and gradient_clipping must be absent, "auto" or what ``train:`` says (they are
    then set as :func:`engine_settings` runs them); an optimizer or scheduler section is refused,
    since ``train:`` picks both. Other "auto" values (e.g. Hugging Face's bucket sizes) are dropped,
    leaving DeepSpeed's defaults.
    """
    config = read_config_file(path)
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise UserError(f"distributed.deepspeed_config: a {section!r} section; tuneloop's own "
                            f"train: settings choose the optimizer and schedule", where=path,
                            hint=f"remove {section!r} from the file and set train.optimizer / "
                                 "train.learning_rate / train.lr_scheduler in the recipe")
    expected = loop_settings(train, world_size)
    for key, value in expected.items():
        given = config.get(key, "auto")
        if given != "auto" and float(given) != float(value):
            raise UserError(f"distributed.deepspeed_config: {key} is {given}, the recipe's train: section "
                            f"makes it {value}", where=path,
                            hint=f'set "{key}": "auto" in the file, or change train: in the recipe')
    config = without_auto(config)
    config.update(engine_settings(train, world_size))
    config.setdefault("steps_per_print", QUIET)
    return config


def without_auto(config):
    """``config`` without the keys whose value is "auto" (at any depth)."""
    if isinstance(config, dict):
        return {k: without_auto(v) for k, v in config.items() if v != "auto"}
    return config


def stage_of(distributed) -> int:
    """The ZeRO stage a run uses: the recipe's, or its config file's (DeepSpeed's default there is 0)."""
    if distributed.deepspeed_config:
        stage = read_config_file(distributed.deepspeed_config).get("zero_optimization", {}).get("stage", 0)
        return int(stage)
    return distributed.zero_stage or DEFAULT_STAGE


def start(module: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict):
    """``deepspeed.initialize`` on ``module`` with tuneloop's ``optimizer``; returns the engine."""
    deepspeed = require_deepspeed()
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    return engine


def gathered_state(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """ZeRO-3: ``model``'s weights gathered whole, one module at a time (a collective every rank
    joins); rank 0 gets the state dict (trainable weights as fp32, or every weight and persistent
    buffer), the others an empty dict. A tied weight (e.g. the head sharing the embeddings) is kept
    under its first name only, as ``save_pretrained`` writes it on one process."""
    import deepspeed
    import torch.distributed as dist

    main, state, seen = dist.get_rank() == 0, {}, set()
    for prefix, module in model.named_modules():
        named = [(n, p) for n, p in module.named_parameters(recurse=False)
                 if (p.requires_grad or not trainable_only) and id(p) not in seen]
        seen.update(id(p) for _, p in named)
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            if main:
                for name, param in named:
                    tensor = param.detach().to("cpu", copy=True)
                    state[f"{prefix}.{name}" if prefix else name] = tensor.float() if trainable_only else tensor
        if main and not trainable_only:
            for name, buffer in module.named_buffers(recurse=False):
                if name not in module._non_persistent_buffers_set:
                    state[f"{prefix}.{name}" if prefix else name] = buffer.detach().cpu()
    return state


# ---------------------------------------------------------------------------------------------
# `accelerate launch --use_deepspeed ...`: accelerate's DeepSpeed flags reach the processes as
# environment variables (accelerate/utils/launch.py); tuneloop reads the ones that map to its keys.


def from_accelerate(distributed, env) -> object:
    """``distributed`` with the DeepSpeed settings of an ``accelerate launch --use_deepspeed`` filled in.

    Unset recipe keys take accelerate's values (--zero_stage, --offload_optimizer_device cpu,
    --offload_param_device cpu, --deepspeed_config_file); a recipe that says otherwise is refused
    rather than silently overruled. Without --use_deepspeed, ``distributed`` is returned as is.
    """
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return distributed
    if "strategy" in distributed.model_fields_set and distributed.strategy != "deepspeed":
        raise UserError(f"accelerate launch --use_deepspeed, but the recipe says distributed.strategy: "
                        f"{distributed.strategy}", hint="drop --use_deepspeed, or set strategy: deepspeed")
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    given = {"zero_stage": int(stage) if stage else None,
             "offload_optimizer": env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE") == "cpu",
             "offload_params": env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE") == "cpu",
             "deepspeed_config": env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None}
    if given["deepspeed_config"]:  # accelerate passes its other flags along with a file; the file rules
        given = {"deepspeed_config": given["deepspeed_config"]}
    update = {"strategy": "deepspeed"}
    for key, value in given.items():
        ours = getattr(distributed, key)
        if key in distributed.model_fields_set and ours != value and value not in (None, False):
            raise UserError(f"accelerate launch says {key} {value}, the recipe says distributed.{key}: {ours}",
                            hint=f"drop the accelerate flag or the recipe's {key}")
        if key not in distributed.model_fields_set and value not in (None, False):
            update[key] = value
    try:
        return type(distributed).model_validate({**distributed.model_dump(exclude_unset=True), **update})
    except ValueError as error:  # pydantic's ValidationError: the two together break a rule of distributed:
        raise UserError(f"accelerate launch --use_deepspeed with this recipe's distributed: section: {error}",
                        hint="set the DeepSpeed options in one place, the recipe or the launcher") from None
