"""The run shell: everything a training run does the same way whatever the method.

A method (SFT in :mod:`tuneloop.train.run`, the preference methods in
:mod:`tuneloop.train.preference.engine`) supplies what differs: its data, its model, one optimizer
step and its held-out evaluation. The shell supplies the rest, once:

1. the resume check, before any data or model work: a bad ``--resume`` fails in a second;
2. seeding, and threads (one per physical core, shared among local ranks; tiny models on one);
3. one optimizer (``train.optimizer``, AdamW by default), with norms and biases out of weight
   decay; the schedule is ``loop.learning_rate``;
4. the run directory: ``recipe.resolved.yaml``, ``tuneloop_base.json`` (the same keys for every
   method), ``metrics.jsonl`` and the tracker (MLflow), ``summary.json``;
5. the step loop: progress bar, evaluation every ``eval_every`` steps and at the end, a checkpoint
   every ``save_every`` steps (pruned to ``keep_checkpoints``), early stopping and the caller's
   ``on_evaluate`` callback, decided alike on every process so that all ranks stop together;
6. the final weights: ``adapter/`` or ``model/`` (the best checkpoint's under early stopping),
   written to a temporary directory and renamed into place.

Data parallelism: a method shares each step's work among the processes and runs its model through
the engine (DDP, FSDP2 or DeepSpeed, see ``train.distributed``); :func:`engine_and_optimizer` builds
both, in the order each engine needs (FSDP2 replaces the parameters by their shards before the
optimizer sees them; DeepSpeed is started with the optimizer). Only rank 0 writes files; under FSDP2
and DeepSpeed saving is a collective (sharded checkpoints; under FSDP2 and ZeRO-3 weights gathered
for ``best/`` and the final save), so those functions are called on every rank.

A *job* is the object both engines hand to :func:`run_steps`; it has the attributes ``recipe``,
``dist``, ``run_dir``, ``model``, ``engine``, ``optimizer``, ``state``, ``total_steps``, ``keep_best``,
``metrics`` (a MetricsLog on rank 0), ``tracker`` and ``on_evaluate``.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from tuneloop.config.recipe import SFT_METHODS
from tuneloop.errors import UserError
from tuneloop.paths import make_dir, write_json_atomic, write_text_atomic
from tuneloop.train import checkpoint as ckpt
from tuneloop.train import optimizers, zero
from tuneloop.train.distributed import DistInfo, Engine, all_reduce_sum
from tuneloop.train.tracking import MetricsLog, Tracker

# on_evaluate(step, metrics) -> True to stop the run (final outputs are still written)
EvaluateCallback = Callable[[int, dict], bool]


# ---------------------------------------------------------------------------------------------
# Before the model loads


def checkpoint_to_resume(recipe) -> Path:
    """The newest step checkpoint, after checking that this recipe can continue it."""
    found = ckpt.step_checkpoints(recipe.run_dir() / "checkpoints")
    if not found:
        raise UserError(f"--resume: no checkpoint in {recipe.run_dir() / 'checkpoints'}",
                        hint="run without --resume to start, or check name/output_dir")
    ckpt.check_compatible(found[-1], recipe)
    return found[-1]


def with_launcher_settings(recipe):
    """The recipe with the DeepSpeed flags of ``accelerate launch --use_deepspeed`` (if that started
    this process) in ``distributed:``; recipe.resolved.yaml then records what ran."""
    distributed = zero.from_accelerate(recipe.distributed, os.environ)
    return recipe if distributed is recipe.distributed else recipe.model_copy(update={"distributed": distributed})


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def set_threads(dist: DistInfo, model_parameters: int) -> None:
    """One thread per physical core (hyper-threads slow matmuls down), shared among local ranks.

    Tiny models (tests) run on one thread: their matmuls are too small to split, and on a busy
    machine idle-spinning worker threads made a step ~10x slower. TUNELOOP_NUM_THREADS overrides.
    """
    if os.environ.get("TUNELOOP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["TUNELOOP_NUM_THREADS"]))
        return
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        cores = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
    threads = max(1, cores // max(1, local_world))
    torch.set_num_threads(1 if model_parameters < 20_000_000 else threads)


# What the sharding engines do not run yet: they generate answers per rank (a different number of
# forwards on each, where FSDP2 and ZeRO-3 gather weights in every forward), or change the model's
# weights outside the optimizer. DeepSpeed refuses them at every stage: not tried under ZeRO-1/2.
SHARDED_UNSUPPORTED = {"grpo": "samples answers during training", "ppo": "samples answers during training",
                       "qlora": "keeps 4-bit weights the engine cannot shard"}


def check_strategy(recipe, dist: DistInfo) -> None:
    """Refuse, before the model loads, what the chosen engine cannot run."""
    if not (dist.sharded or dist.strategy == "deepspeed"):
        return
    if recipe.distributed.cpu_offload and dist.device.type == "cpu":
        # FSDP2's CPUOffloadPolicy moves shards from accelerator memory to pinned host memory. (ZeRO-Offload
        # on DeepSpeed's CPU accelerator runs, saving nothing, so the offload path can be tested on a CPU.)
        raise UserError("distributed.cpu_offload: this run is on the CPU already; offloading moves shards "
                        "out of GPU memory", hint="set cpu_offload: false on CPU machines")
    why = SHARDED_UNSUPPORTED.get(recipe.method)
    if why is None and recipe.quantization_aware is not None:
        why = "fake-quantizes weights outside the optimizer"
    if why:
        raise UserError(f"distributed.strategy {dist.strategy}: method {recipe.method} {why}; not supported "
                        f"under {dist.strategy} yet", hint="use distributed.strategy: ddp")


def engine_and_optimizer(inner: torch.nn.Module, model: torch.nn.Module, dist: DistInfo,
                         recipe) -> tuple[Engine, torch.optim.Optimizer]:
    """The engine this process runs ``inner`` through (plain, DDP, FSDP2 or DeepSpeed, per
    ``distributed:``) and the optimizer of ``model``'s trainable weights (``model`` is in ``inner``)."""
    engine = Engine(inner, dist, recipe.distributed)  # FSDP2 swaps in shards here, before the optimizer
    optimizer = make_optimizer(model, recipe.train)
    if engine.deepspeed:
        engine.start_deepspeed(optimizer, deepspeed_config(recipe, dist))
    return engine, optimizer


def deepspeed_config(recipe, dist: DistInfo) -> dict:
    """The DeepSpeed config of this run: the recipe's file as is, or one made from ``distributed:``."""
    d = recipe.distributed
    if d.deepspeed_config:
        return zero.file_config(d.deepspeed_config, recipe.train, dist.world_size)
    return zero.recipe_config(d, recipe.train, dist.world_size)


def make_optimizer(model, t) -> torch.optim.Optimizer:
    """The recipe's ``train.optimizer`` (AdamW by default), no weight decay on norms or biases."""
    return optimizers.make_optimizer(optimizers.decay_groups(model, t.weight_decay), t,
                                     next(model.parameters()).device)


# ---------------------------------------------------------------------------------------------
# The run directory


def recipe_yaml(recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def finetuning(recipe) -> str:
    """What a run trains: ``full``, or the adapter kind (lora, dora, qlora)."""
    return recipe.method if recipe.method in SFT_METHODS else recipe.finetuning


def trains_adapter(recipe) -> bool:
    return finetuning(recipe) != "full"


def base_record(recipe) -> dict:
    """``tuneloop_base.json``: what ``serve``, ``eval`` and ``export`` read to find the base model.

    The same keys for every method: ``base_model`` (a local path made absolute), ``method`` and
    ``finetuning`` (``full``, or the adapter kind: lora, dora, qlora).
    """
    base = recipe.model
    if Path(base).expanduser().exists():
        base = str(Path(base).expanduser().resolve())
    return {"base_model": base, "method": recipe.method, "finetuning": finetuning(recipe)}


def clear_stale_checkpoints(run_dir: Path) -> None:
    """A fresh run must not leave someone's old steps for a later ``--resume`` to pick up."""
    if (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")


def open_run_dir(recipe, resume: bool, step: int, params: dict) -> tuple[MetricsLog, Tracker]:
    """Create (or reopen) the run directory; write the resolved recipe and base record (rank 0)."""
    run_dir = recipe.run_dir()
    make_dir(run_dir, "run directory")
    write_text_atomic(run_dir / "recipe.resolved.yaml", recipe_yaml(recipe))
    write_json_atomic(run_dir / "tuneloop_base.json", base_record(recipe))
    metrics = MetricsLog(run_dir / "metrics.jsonl", step if resume else None)
    tracker = Tracker(recipe.tracking, run_dir, recipe.name, resume=resume)
    tracker.log_params(recipe.model_dump() | params)
    return metrics, tracker


def save_step_checkpoint(job) -> None:
    """``checkpoints/step-N/`` (rank 0 writes it; under FSDP2 and DeepSpeed every rank calls this and
    writes its shards)."""
    directory = job.run_dir / "checkpoints" / f"step-{job.state.step}"
    if job.dist.checkpoint_format == "fsdp":
        ckpt.save_sharded_checkpoint(directory, job.model, job.optimizer, job.state, job.recipe,
                                     recipe_yaml(job.recipe), job.dist)
    elif job.dist.checkpoint_format == "deepspeed":
        ckpt.save_deepspeed_checkpoint(directory, job.engine.module, job.state, job.recipe,
                                       recipe_yaml(job.recipe), job.dist)
    elif job.dist.is_main:
        ckpt.save_checkpoint(directory, job.model, job.optimizer, job.state, job.recipe, recipe_yaml(job.recipe))
    if job.dist.is_main:
        ckpt.prune_checkpoints(job.run_dir / "checkpoints", job.recipe.train.keep_checkpoints)


def save_final(job, tokenizer, before_save: Callable | None = None) -> Path | None:
    """``adapter/`` or ``model/`` with the tokenizer, written to a temp dir and renamed into place.

    With early stopping, the best checkpoint's weights are the ones saved. Called on every rank:
    under FSDP2 and ZeRO-3 the weights are first gathered to rank 0 (a collective), so the saved model is one
    ordinary consolidated checkpoint that export and serve read as they would any other; only rank
    0 writes. Returns the directory on rank 0.
    """
    best = job.run_dir / "checkpoints" / "best"
    use_best = job.recipe.train.early_stopping and (best / "trainable.safetensors").is_file()
    weights = ckpt.full_model_state(job.model, job.dist) if job.dist.sharded else None
    if not job.dist.is_main:
        return None
    if use_best and weights is None:
        ckpt.load_weights(best, job.model)
    elif use_best:
        from safetensors.torch import load_file

        weights.update(load_file(str(best / "trainable.safetensors")))
    name = "adapter" if trains_adapter(job.recipe) else "model"
    target, tmp = job.run_dir / name, job.run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if before_save is not None:
        before_save(job.model)
    job.model.save_pretrained(tmp, **({"state_dict": weights} if weights is not None else {}))
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss: KiB on Linux


# ---------------------------------------------------------------------------------------------
# The step loop


def run_steps(job, step: Callable[[], dict], evaluate: Callable[[], tuple[dict, float | None] | None],
              desc: str) -> None:
    """Train until ``total_steps`` or a stop: ``step()`` does one optimizer step and returns its
    metrics row; ``evaluate()`` returns (held-out metrics, the value early stopping watches) or None.
    """
    t, state = job.recipe.train, job.state
    bar = tqdm(total=job.total_steps, initial=state.step, desc=desc, unit="step",
               disable=not job.dist.is_main, dynamic_ncols=True)
    while state.step < job.total_steps:
        record = step()
        stop = False
        if state.step % t.eval_every == 0 or state.step >= job.total_steps:
            evaluated = evaluate()
            if evaluated is not None:
                metrics, watched = evaluated
                record.update(metrics)
                stop = after_evaluation(job, metrics, watched)
        log_record(job, record, bar)
        if state.step % t.save_every == 0 and state.step < job.total_steps:
            save_step_checkpoint(job)
        if stop:
            break
    bar.close()


def log_record(job, record: dict, bar=None) -> None:
    if not job.dist.is_main:
        return
    job.metrics.write({k: v for k, v in record.items() if v is not None})
    if job.tracker:
        job.tracker.log_metrics(record, record["step"])
    if bar is None:
        return
    shown = {"loss": f"{record['loss']:.4f}"}
    if record.get("tokens_per_s") is not None:
        shown["tok/s"] = f"{record['tokens_per_s']:.0f}"
    if "validation_loss" in record:
        shown["val"] = f"{record['validation_loss']:.4f}"
    bar.set_postfix(shown, refresh=False)
    bar.update(1)


def save_best(job) -> None:
    """``checkpoints/best/``: the trainable weights (gathered from every rank under FSDP2 and ZeRO-3)."""
    sharded = job.dist.sharded
    weights = ckpt.trainable_state(job.model, sharded, job.dist) if sharded or job.dist.is_main else None
    if job.dist.is_main:
        ckpt.save_checkpoint(job.run_dir / "checkpoints" / "best", job.model, None, job.state,
                             job.recipe, recipe_yaml(job.recipe), weights_only=True, weights=weights)


def lower_is_better(metric: str) -> bool:
    """Losses and divergences fall as a run improves; rewards and accuracies rise."""
    return "loss" in metric or metric.endswith("kl") or metric.endswith("perplexity")


def after_evaluation(job, metrics: dict, watched: float | None) -> bool:
    """Best-so-far bookkeeping, early stopping and ``on_evaluate``; True = stop, on every rank.

    ``watched`` is the value of ``train.early_stopping.metric`` (validation loss by default).
    """
    t, state = job.recipe.train, job.state
    metric = t.early_stopping.metric if t.early_stopping else "validation_loss"
    min_delta = t.early_stopping.min_delta if t.early_stopping else 0.0
    sign = 1.0 if lower_is_better(metric) else -1.0
    stop = False
    if watched is None:  # nothing to watch (e.g. GRPO without early stopping): no best to keep
        pass
    elif state.best_metric is None or sign * watched < sign * state.best_metric - min_delta:
        state.best_metric, state.best_step, state.evals_without_improvement = watched, state.step, 0
        if job.keep_best:
            save_best(job)
    else:
        state.evals_without_improvement += 1
        if t.early_stopping and state.evals_without_improvement >= t.early_stopping.patience:
            if job.dist.is_main:
                print(f"\nearly stopping at step {state.step}: {metric} has not improved for "
                      f"{state.evals_without_improvement} evaluations (best {state.best_metric:.4f} at "
                      f"step {state.best_step})", flush=True)
            stop = True
    if job.dist.is_main and job.on_evaluate is not None and job.on_evaluate(state.step, dict(metrics)):
        print(f"\nstopped at step {state.step} by the on_evaluate callback", flush=True)
        stop = True
    # on_evaluate runs on rank 0 only: every rank follows its decision.
    return bool(all_reduce_sum(torch.tensor([float(stop)]), job.dist).item() > 0)
