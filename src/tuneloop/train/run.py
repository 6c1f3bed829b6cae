"""``run_training(recipe)``: the SFT recipe (full / lora / dora / qlora) from data to a run directory.

The recipe follows a small protocol, as torchtune's do: :func:`setup` (model, data, optimizer,
resume), :func:`train` (the loop), :func:`save_final` and the summary. Everything heavy lives in the
library modules beside this one (data, loss, loop, checkpoint, tracking, distributed), which other
methods reuse with their own loss.

    runs/<name>/recipe.resolved.yaml   metrics.jsonl   samples.jsonl   summary.json
               checkpoints/step-N/  checkpoints/best/   adapter/ (+ tuneloop_base.json) or model/
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneloop.errors import UserError
from tuneloop.paths import make_dir, write_json_atomic, write_jsonl_atomic, write_text_atomic
from tuneloop.train import checkpoint as ckpt
from tuneloop.train import loop
from tuneloop.train.data import (Sample, TokenizeReport, batch_units, collate_micro_batch,
                                 examples_per_micro_batch, read_chat_jsonl, tokenize_records)
from tuneloop.train.distributed import DistInfo, barrier, init_distributed, shutdown
from tuneloop.train.optimizers import decay_groups, make_optimizer


@dataclass
class TrainData:
    train_rows: list[list[Sample]]
    validation_rows: list[list[Sample]]
    report: TokenizeReport
    validation_report: TokenizeReport | None
    sample_prompts: list[list[dict]]
    validation_by_task: dict = field(default_factory=dict)  # task -> rows (multi-task only)


@dataclass
class Run:
    """Everything the loop needs, set up once."""

    recipe: object
    dist: DistInfo
    run_dir: Path
    tokenizer: object
    prepared: object  # methods.PreparedModel
    loss_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list
    data: TrainData
    total_steps: int
    warmup_steps: int
    rows_per_step: int
    state: ckpt.TrainState
    precision: object
    started: float = field(default_factory=time.time)
    metrics: object = None  # tracking.MetricsLog on rank 0


# ---------------------------------------------------------------------------------------------
# Data


def prepare_data(recipe, tokenizer, show_progress: bool = True) -> TrainData:
    """Tokenise, check and pack train (and validation) data. Deterministic, so every rank agrees."""
    t = recipe.train
    if recipe.data.mixture:
        from tuneloop.train.mixture import prepare_mixture_data

        return prepare_mixture_data(recipe, tokenizer, show_progress)
    records = read_chat_jsonl(recipe.data.train)
    samples, report = tokenize_records(tokenizer, records, t.max_seq_len, t.overlong, t.train_on,
                                       show_progress=show_progress)
    if not samples:
        raise UserError(
            f"no sample in {recipe.data.train} has a trainable token ({report.no_trainable_tokens} without "
            f"any, {report.dropped_overlong} longer than max_seq_len)",
            hint="each record needs an assistant turn with content (loss is on assistant tokens; "
                 "train.train_on: all trains on everything)")
    val_rows, val_report, prompts = [], None, []
    if recipe.data.validation:
        val_records = read_chat_jsonl(recipe.data.validation)
        val_samples, val_report = tokenize_records(tokenizer, val_records, t.max_seq_len,
                                                   "drop" if t.overlong == "error" else t.overlong, t.train_on)
        val_rows = batch_units(val_samples, t.batch_tokens)
        prompts = [_prompt_part(m) for _, m in val_records if any(x["role"] == "assistant" for x in m)][:2]
    if t.sample_prompts:
        prompts = [[{"role": "user", "content": p}] for p in t.sample_prompts]
    return TrainData(batch_units(samples, t.batch_tokens), val_rows, report, val_report, prompts)


def _prompt_part(messages: list[dict]) -> list[dict]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


# ---------------------------------------------------------------------------------------------
# Set-up


def setup(recipe, resume: bool = False) -> Run:
    from tuneloop.models.loading import load_tokenizer, resolve_model
    from tuneloop.train.loss import SupervisedCausalLM
    from tuneloop.train.methods import resolve_precision, setup_model

    if recipe.method not in ("full", "lora", "dora", "qlora"):
        raise UserError(f"method: {recipe.method} is not an SFT method; this trainer runs full, lora, dora, qlora")
    dist = init_distributed()
    # Refuse an incompatible checkpoint before spending time on data and model.
    resume_from = _checkpoint_to_resume(recipe) if resume else None
    _seed_everything(recipe.train.seed, recipe.train.deterministic)
    resolved = resolve_model(recipe.model)
    tokenizer = load_tokenizer(resolved, recipe.chat_template)
    data = prepare_data(recipe, tokenizer, show_progress=dist.is_main)
    precision = resolve_precision(recipe.train.precision, dist.device, recipe.method)
    prepared = setup_model(recipe, resolved.path, precision, dist.device)
    if recipe.quantization_aware is not None:
        from tuneloop.train import qat

        qat.prepare(prepared.model, recipe)
    _set_threads(dist, prepared.total_parameters)
    params = [p for p in prepared.model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(prepared.model, recipe.train)
    t = recipe.train
    # An optimizer step takes batch_size x accumulation x processes examples, as in TRL (packing or not).
    per_micro = examples_per_micro_batch(t.batch_size, t.batch_tokens)
    rows_per_step = per_micro * t.gradient_accumulation * dist.world_size
    steps = loop.total_steps(len(data.train_rows), rows_per_step, t.epochs, t.max_steps)
    run_dir = recipe.run_dir()
    state = ckpt.TrainState()
    if resume_from is not None:
        state = ckpt.restore_checkpoint(resume_from, prepared.model, optimizer)
    elif dist.is_main and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")  # a fresh run must not resume someone's old steps
    loss_model = SupervisedCausalLM(prepared.model, precision.autocast)
    return Run(recipe, dist, run_dir, tokenizer, prepared, loss_model, optimizer, params, data, steps,
               int(t.warmup_ratio * steps), rows_per_step, state, precision)


def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _set_threads(dist: DistInfo, model_parameters: int) -> None:
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


def _make_optimizer(model, t) -> torch.optim.Optimizer:
    return make_optimizer(decay_groups(model, t.weight_decay), t, next(model.parameters()).device)


def _checkpoint_to_resume(recipe) -> Path:
    found = ckpt.step_checkpoints(recipe.run_dir() / "checkpoints")
    if not found:
        raise UserError(f"--resume: no checkpoint in {recipe.run_dir() / 'checkpoints'}",
                        hint="run without --resume to start, or check name/output_dir")
    ckpt.check_compatible(found[-1], recipe)
    return found[-1]


# ---------------------------------------------------------------------------------------------
# The run


def run_training(recipe, resume: bool = False) -> Path:
    """Train per the recipe; returns the run directory."""
    run = setup(recipe, resume)
    tracker = None
    try:
        if run.dist.is_main:
            tracker = _start_run_dir(run, resume)
        barrier(run.dist)
        train(run, tracker)
        if run.dist.is_main:
            save_final(run)
            summary = write_summary(run)
            if tracker:
                tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))},
                                    run.state.step)
                tracker.log_artifacts([run.run_dir / n for n in
                                       ("summary.json", "recipe.resolved.yaml", "samples.jsonl")])
        barrier(run.dist)
    except BaseException:
        if tracker:
            tracker.close("FAILED")
        raise
    finally:
        shutdown(run.dist)
    if tracker:
        tracker.close()
    return run.run_dir


def _start_run_dir(run: Run, resume: bool):
    from tuneloop.train.tracking import MetricsLog, Tracker

    make_dir(run.run_dir, "run directory")
    write_text_atomic(run.run_dir / "recipe.resolved.yaml", recipe_yaml(run.recipe))
    run.metrics = MetricsLog(run.run_dir / "metrics.jsonl", run.state.step if resume else None)
    tracker = Tracker(run.recipe.tracking, run.run_dir, run.recipe.name, resume=resume)
    tracker.log_params(run.recipe.model_dump() | {"trainable_parameters": run.prepared.trainable_parameters})
    print(run.prepared.describe(), flush=True)
    r = run.data.report
    t = run.recipe.train
    per_step = (f"{run.rows_per_step} token-budget rows of up to {t.batch_tokens} tokens" if t.batch_tokens
                else f"{run.rows_per_step} examples")
    print(f"steps: {run.total_steps} of {per_step} each "
          f"({'padding-free packed' if t.packing else 'padded'} micro-batches)", flush=True)
    print(f"data: {r.kept} of {r.total} samples kept; "
          f"{r.dropped_overlong} dropped as longer than max_seq_len (overlong: {run.recipe.train.overlong}), "
          f"{r.truncated_prompt} prompt-truncated, {r.no_trainable_tokens} without trainable tokens; "
          f"precision {run.precision.name}", flush=True)
    return tracker


def recipe_yaml(recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def train(run: Run, tracker) -> None:
    from tqdm.auto import tqdm

    r, t, state = run.recipe, run.recipe.train, run.state
    bar = tqdm(total=run.total_steps, initial=state.step, desc=f"train {r.name}", unit="step",
               disable=not run.dist.is_main, dynamic_ncols=True)
    b_before = loop.lora_b_snapshot(run.prepared.model) if state.step == 0 else None
    if state.step == 0 and run.data.validation_rows:
        state.initial_validation_loss = loop.evaluate(
            run.loss_model, run.data.validation_rows, examples_per_micro_batch(t.batch_size, t.batch_tokens),
            run.tokenizer.pad_token_id, run.dist, t.packing)
    run.loss_model.train()
    while state.step < run.total_steps:
        step_rows = _next_step_rows(run)
        started = time.perf_counter()
        per_micro = examples_per_micro_batch(t.batch_size, t.batch_tokens)
        batches = [collate_micro_batch(rows, run.tokenizer.pad_token_id, t.packing)
                   for rows in loop.micro_batches(step_rows, run.dist.rank, run.dist.world_size, per_micro)]
        lr = loop.learning_rate(state.step, run.total_steps, t.learning_rate, run.warmup_steps, t.lr_scheduler)
        mine = loop.step_real_tokens(step_rows[run.dist.rank :: run.dist.world_size])
        result = loop.train_step(run.loss_model, batches, run.optimizer, run.params, lr,
                                 t.max_grad_norm, run.dist, mine)
        if b_before is not None:  # first optimizer step of a fresh run: did anything train?
            loop.check_gradients(run.prepared.model)
            loop.check_moved(run.prepared.model, b_before)
            b_before = None
        state.train_seconds += time.perf_counter() - started
        state.step += 1
        state.tokens_seen += result.tokens
        if run.data.validation_by_task or run.recipe.data.mixture:
            from tuneloop.train.mixture import task_token_counts

            for task, n in task_token_counts(step_rows).items():
                state.task_tokens[task] = state.task_tokens.get(task, 0) + n
        record = {"step": state.step, "loss": round(result.loss, 6), "learning_rate": lr,
                  "tokens_per_s": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1),
                  "grad_norm": result.grad_norm, "epoch": state.epoch}
        stop = _maybe_evaluate(run, record, tracker)
        _log(run, record, tracker, bar)
        if run.dist.is_main and (state.step % t.save_every == 0 and state.step < run.total_steps):
            _save_step_checkpoint(run)
        if stop:
            break
    bar.close()


def _next_step_rows(run: Run) -> list[list[Sample]]:
    """The rows of the next optimizer step; advances the data position (epoch, batch index)."""
    state, n = run.state, len(run.data.train_rows)
    per_epoch = loop.steps_per_epoch(n, run.rows_per_step)
    if state.batch_index >= per_epoch:
        state.epoch += 1
        state.batch_index = 0
    order = loop.epoch_order(n, run.recipe.train.seed, state.epoch)
    start = state.batch_index * run.rows_per_step
    state.batch_index += 1
    return [run.data.train_rows[i] for i in order[start : start + run.rows_per_step]]


def _log(run: Run, record: dict, tracker, bar) -> None:
    if not run.dist.is_main:
        return
    run.metrics.write({k: v for k, v in record.items() if v is not None})
    if tracker:
        tracker.log_metrics(record, record["step"])
    shown = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
    if "validation_loss" in record:
        shown["val"] = f"{record['validation_loss']:.4f}"
    bar.set_postfix(shown, refresh=False)
    bar.update(1)


def _maybe_evaluate(run: Run, record: dict, tracker) -> bool:
    """Validation loss (and sample generations) every eval_every steps and at the end; True = stop."""
    t, state = run.recipe.train, run.state
    last = state.step >= run.total_steps
    if not run.data.validation_rows or not (state.step % t.eval_every == 0 or last):
        return False
    value = loop.evaluate(run.loss_model, run.data.validation_rows,
                          examples_per_micro_batch(t.batch_size, t.batch_tokens), run.tokenizer.pad_token_id,
                          run.dist, t.packing)
    record["validation_loss"] = round(value, 6)
    if run.data.validation_by_task:
        from tuneloop.train.mixture import evaluate_tasks

        value = evaluate_tasks(run, record)
    if run.dist.is_main:
        _write_samples(run)
    min_delta = t.early_stopping.min_delta if t.early_stopping else 0.0
    if state.best_metric is None or value < state.best_metric - min_delta:
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        # Adapters are small enough to keep the best always; a full model's only for early stopping.
        if run.dist.is_main and (t.early_stopping or run.recipe.method != "full"):
            ckpt.save_checkpoint(run.run_dir / "checkpoints" / "best", run.prepared.model, None, state,
                                 run.recipe, recipe_yaml(run.recipe), weights_only=True)
        return False
    state.evals_without_improvement += 1
    if t.early_stopping and state.evals_without_improvement >= t.early_stopping.patience:
        if run.dist.is_main:
            print(f"\nearly stopping at step {state.step}: validation loss has not improved for "
                  f"{state.evals_without_improvement} evaluations (best {state.best_metric:.4f} at "
                  f"step {state.best_step})", flush=True)
        return True
    return False


def _write_samples(run: Run) -> None:
    from tuneloop.models.generation import generate_chat

    if not run.data.sample_prompts:
        return
    model = run.prepared.model
    model.eval()
    with torch.autocast(run.dist.device.type, dtype=run.precision.autocast or torch.float32,
                        enabled=run.precision.autocast is not None):
        generations = generate_chat(model, run.tokenizer, run.data.sample_prompts, max_new_tokens=48)
    model.train()
    path = run.run_dir / "samples.jsonl"
    from tuneloop.paths import read_jsonl

    previous = read_jsonl(path) if path.is_file() else []
    previous = [p for p in previous if p["step"] < run.state.step]
    new = [{"step": run.state.step, "prompt": p[-1]["content"] if p else "", "completion": g.text}
           for p, g in zip(run.data.sample_prompts, generations)]
    write_jsonl_atomic(path, previous + new)


def _save_step_checkpoint(run: Run) -> None:
    directory = run.run_dir / "checkpoints" / f"step-{run.state.step}"
    ckpt.save_checkpoint(directory, run.prepared.model, run.optimizer, run.state, run.recipe,
                         recipe_yaml(run.recipe))
    ckpt.prune_checkpoints(run.run_dir / "checkpoints", run.recipe.train.keep_checkpoints)


# ---------------------------------------------------------------------------------------------
# Outputs


def save_final(run: Run) -> None:
    """adapter/ (+ tuneloop_base.json) or model/, written to a temp dir and renamed into place.

    With early stopping, the best checkpoint's weights are the ones saved.
    """
    recipe, model = run.recipe, run.prepared.model
    best = run.run_dir / "checkpoints" / "best"
    if recipe.train.early_stopping and (best / "trainable.safetensors").is_file():
        ckpt.load_weights(best, model)
    name = "adapter" if recipe.method in ("lora", "dora", "qlora") else "model"
    target = run.run_dir / name
    tmp = run.run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if recipe.quantization_aware is not None and name == "model":
        from tuneloop.train import qat

        qat.strip_fake_quant(model)  # plain float weights; `export --format quantized` makes the ints
    model.save_pretrained(tmp)
    run.tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    if name == "adapter":
        base = recipe.model
        if Path(base).expanduser().exists():
            base = str(Path(base).expanduser().resolve())
        write_json_atomic(run.run_dir / "tuneloop_base.json", {"base_model": base})


def peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def write_summary(run: Run) -> dict:
    from tuneloop.paths import read_jsonl

    state, report = run.state, run.data.report
    metrics = read_jsonl(run.run_dir / "metrics.jsonl") if (run.run_dir / "metrics.jsonl").is_file() else []
    last_losses = [m["loss"] for m in metrics[-10:]]
    validation = [m["validation_loss"] for m in metrics if "validation_loss" in m]
    summary = {
        "name": run.recipe.name, "model": run.recipe.model, "method": run.recipe.method,
        "steps": state.step, "epochs_started": state.epoch + 1,
        "final_loss": sum(last_losses) / len(last_losses) if last_losses else None,
        "first_loss": metrics[0]["loss"] if metrics else None,
        "validation_loss": validation[-1] if validation else None,
        "initial_validation_loss": state.initial_validation_loss,
        "best_validation_loss": state.best_metric, "best_step": state.best_step,
        "trained_tokens": state.tokens_seen, "train_seconds": round(state.train_seconds, 2),
        "wall_seconds": round(time.time() - run.started, 2),
        "tokens_per_s": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1),
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "precision": run.precision.name, "world_size": run.dist.world_size,
        "trainable_parameters": run.prepared.trainable_parameters,
        "total_parameters": run.prepared.total_parameters,
        "targeted_modules": run.prepared.targeted_modules,
        "units_per_epoch": len(run.data.train_rows),
        "examples_per_step": round(report.kept / max(1, len(run.data.train_rows)) * run.rows_per_step, 2),
        "batching": "tokens" if run.recipe.train.batch_tokens else "examples",
        "data": report.as_dict(),
    }
    if state.task_tokens:
        total = sum(state.task_tokens.values())
        summary["task_token_share"] = {k: round(v / total, 4) for k, v in sorted(state.task_tokens.items())}
        summary["task_validation_loss"] = {k.split("/", 1)[1]: v for k, v in (metrics[-1] if metrics else {}).items()
                                           if k.startswith("validation_loss/")}
    write_json_atomic(run.run_dir / "summary.json", summary)
    return summary
