"""``run_training(recipe)``: the SFT recipe (full / lora / dora / qlora) from data to a run directory.

SFT's part of a run, in the run shell (:mod:`tuneloop.train.shell`) that every method shares:
:func:`setup` (model, data, optimizer, resume), :func:`train` (one optimizer step and the held-out
evaluation, handed to the shell's step loop) and the summary. The library modules beside this one
(data, loss, loop, checkpoint, tracking, distributed) do the heavy parts.

    runs/<name>/recipe.resolved.yaml   tuneloop_base.json   metrics.jsonl   samples.jsonl   summary.json
               checkpoints/step-N/  checkpoints/best/   adapter/ or model/
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneloop.config.recipe import SFT_METHODS
from tuneloop.errors import UserError
from tuneloop.models.generation import generate_chat
from tuneloop.models.loading import load_tokenizer, resolve_model
from tuneloop.paths import read_jsonl, write_json_atomic, write_jsonl_atomic
from tuneloop.train import checkpoint as ckpt
from tuneloop.train import loop, qat, shell
from tuneloop.train.data import Sample, TrainData, collate_micro_batch, examples_per_micro_batch, prepare_data
from tuneloop.train.distributed import DistInfo, Engine, barrier, init_distributed, shutdown
from tuneloop.train.loss import SupervisedCausalLM
from tuneloop.train.methods import resolve_precision, setup_model
from tuneloop.train.mixture import task_token_counts

__all__ = ["Run", "setup", "train", "run_training", "prepare_data", "save_final", "write_summary"]


@dataclass
class Run:
    """Everything the loop needs, set up once (a job of :mod:`tuneloop.train.shell`)."""

    recipe: object
    dist: DistInfo
    run_dir: Path
    tokenizer: object
    prepared: object  # methods.PreparedModel
    loss_model: torch.nn.Module
    engine: Engine  # runs loss_model: plain, DDP, FSDP2 or DeepSpeed (train.distributed)
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
    tracker: object = None
    on_evaluate: shell.EvaluateCallback | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.prepared.model

    @property
    def keep_best(self) -> bool:
        # Adapters are small enough to keep the best always; a full model's only for early stopping.
        return bool(self.recipe.train.early_stopping) or self.recipe.method != "full"


# ---------------------------------------------------------------------------------------------
# Set-up


def setup(recipe, resume: bool = False) -> Run:
    if recipe.method not in SFT_METHODS:
        raise UserError(f"method: {recipe.method} is not an SFT method; this trainer runs {', '.join(SFT_METHODS)}")
    recipe = shell.with_launcher_settings(recipe)
    dist = init_distributed(recipe.distributed)
    shell.check_strategy(recipe, dist)
    # Refuse an incompatible checkpoint before spending time on data and model.
    resume_from = shell.checkpoint_to_resume(recipe) if resume else None
    shell.seed_everything(recipe.train.seed, recipe.train.deterministic)
    resolved = resolve_model(recipe.model)
    tokenizer = load_tokenizer(resolved, recipe.chat_template)
    data = prepare_data(recipe, tokenizer, show_progress=dist.is_main)
    precision = resolve_precision(recipe.train.precision, dist.device, recipe.method)
    prepared = setup_model(recipe, resolved.path, precision, dist.device)
    qat.prepare(prepared.model, recipe)  # no-op without quantization_aware
    shell.set_threads(dist, prepared.total_parameters)
    loss_model = SupervisedCausalLM(prepared.model, precision.autocast)
    engine, optimizer = shell.engine_and_optimizer(loss_model, prepared.model, dist, recipe)
    params = [p for p in prepared.model.parameters() if p.requires_grad]
    t = recipe.train
    # An optimizer step takes batch_size x accumulation x processes examples, as in TRL (packing or not).
    per_micro = examples_per_micro_batch(t.batch_size, t.batch_tokens)
    rows_per_step = per_micro * t.gradient_accumulation * dist.world_size
    steps = loop.total_steps(len(data.train_rows), rows_per_step, t.epochs, t.max_steps)
    run_dir = recipe.run_dir()
    state = ckpt.TrainState()
    if resume_from is not None:
        state = ckpt.restore_checkpoint(resume_from, prepared.model, optimizer, dist, engine)
    elif dist.is_main:
        shell.clear_stale_checkpoints(run_dir)
    return Run(recipe, dist, run_dir, tokenizer, prepared, loss_model, engine, optimizer, params, data, steps,
               int(t.warmup_ratio * steps), rows_per_step, state, precision)


# ---------------------------------------------------------------------------------------------
# The run


def run_training(recipe, resume: bool = False, on_evaluate: shell.EvaluateCallback | None = None) -> Path:
    """Train per the recipe; returns the run directory."""
    run = setup(recipe, resume)
    run.on_evaluate = on_evaluate
    tracker = None
    try:
        if run.dist.is_main:
            tracker = _start_run_dir(run, resume)
        barrier(run.dist)
        train(run, tracker)
        save_final(run)  # every rank: FSDP2 gathers the weights first
        if run.dist.is_main:
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
    run.metrics, tracker = shell.open_run_dir(run.recipe, resume, run.state.step,
                                              {"trainable_parameters": run.prepared.trainable_parameters})
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


def train(run: Run, tracker) -> None:
    """SFT's step and evaluation, run by the shell's step loop."""
    t, state = run.recipe.train, run.state
    run.tracker = tracker
    guard = {"lora_b": loop.lora_b_snapshot(run.prepared.model) if state.step == 0 else None}
    if state.step == 0 and run.data.validation_rows:
        state.initial_validation_loss = loop.evaluate(
            run.engine, run.data.validation_rows, examples_per_micro_batch(t.batch_size, t.batch_tokens),
            run.tokenizer.pad_token_id, run.dist, t.packing)
    run.loss_model.train()
    shell.run_steps(run, lambda: _train_step(run, guard), lambda: _evaluate(run), desc=f"train {run.recipe.name}")


def _train_step(run: Run, guard: dict) -> dict:
    t, state = run.recipe.train, run.state
    step_rows = _next_step_rows(run)
    started = time.perf_counter()
    per_micro = examples_per_micro_batch(t.batch_size, t.batch_tokens)
    batches = [collate_micro_batch(rows, run.tokenizer.pad_token_id, t.packing)
               for rows in loop.micro_batches(step_rows, run.dist.rank, run.dist.world_size, per_micro)]
    lr = loop.learning_rate(state.step, run.total_steps, t.learning_rate, run.warmup_steps, t.lr_scheduler)
    mine = loop.step_real_tokens(step_rows[run.dist.rank :: run.dist.world_size])
    filler = None if batches else collate_micro_batch(step_rows[:1], run.tokenizer.pad_token_id, t.packing)
    result = loop.train_step(run.engine, batches, run.optimizer, run.params, lr,
                             t.max_grad_norm, run.dist, mine, filler)
    if guard["lora_b"] is not None:  # first optimizer step of a fresh run: did anything train?
        if not run.engine.deepspeed:  # ZeRO keeps gradients in its own buffers and clears them in step()
            loop.check_gradients(run.prepared.model, run.dist)
        loop.check_moved(run.prepared.model, guard["lora_b"], run.dist)
        guard["lora_b"] = None
    state.train_seconds += time.perf_counter() - started
    state.step += 1
    state.tokens_seen += result.tokens
    if run.data.validation_by_task or run.recipe.data.mixture:
        for task, n in task_token_counts(step_rows).items():
            state.task_tokens[task] = state.task_tokens.get(task, 0) + n
    return {"step": state.step, "loss": round(result.loss, 6), "learning_rate": lr,
            "tokens_per_s": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1),
            "grad_norm": result.grad_norm, "epoch": state.epoch}


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


def _evaluate(run: Run) -> tuple[dict, float] | None:
    """Validation loss (per task for a mixture) and sample generations; None without validation."""
    if not run.data.validation_rows:
        return None
    t = run.recipe.train
    value = loop.evaluate(run.engine, run.data.validation_rows,
                          examples_per_micro_batch(t.batch_size, t.batch_tokens), run.tokenizer.pad_token_id,
                          run.dist, t.packing)
    metrics = {"validation_loss": round(value, 6)}
    if run.data.validation_by_task:
        value = evaluate_tasks(run, metrics)
    if run.dist.is_main or run.dist.sharded:
        _write_samples(run)
    return metrics, value


def evaluate_tasks(run, record: dict) -> float:
    """Per-task validation loss into ``record``; returns the value early stopping watches:
    ``validation_loss/<task>`` when the recipe names one, else the mean over tasks."""
    t, losses = run.recipe.train, {}
    for name, rows in sorted(run.data.validation_by_task.items()):
        losses[name] = loop.evaluate(run.engine, rows, examples_per_micro_batch(t.batch_size, t.batch_tokens),
                                     run.tokenizer.pad_token_id, run.dist, t.packing)
        record[f"validation_loss/{name}"] = round(losses[name], 6)
    mean = sum(losses.values()) / len(losses)
    record["validation_loss_task_mean"] = round(mean, 6)
    stopping = run.recipe.train.early_stopping
    if stopping and stopping.metric.startswith("validation_loss/"):
        task = stopping.metric.split("/", 1)[1]
        if task not in losses:
            raise UserError(f"train.early_stopping.metric: no task named {task!r}",
                            hint=f"tasks: {', '.join(losses)}")
        return losses[task]
    return mean


def _write_samples(run: Run) -> None:
    """Greedy answers to the sample prompts into samples.jsonl (rank 0). Under FSDP2 and ZeRO-3 every rank
    generates, inside the engine's forward: each forward gathers weights from all of them, and greedy
    decoding of the same prompts with the same weights takes the same number of steps everywhere."""
    if not run.data.sample_prompts:
        return
    model = run.prepared.model
    model.eval()
    with torch.autocast(run.dist.device.type, dtype=run.precision.autocast or torch.float32,
                        enabled=run.precision.autocast is not None):
        def answers(m):
            return generate_chat(m, run.tokenizer, run.data.sample_prompts, max_new_tokens=48)

        generations = run.engine(lambda loss_model: answers(loss_model.model)) if run.dist.sharded else answers(model)
    model.train()
    if not run.dist.is_main:
        return
    path = run.run_dir / "samples.jsonl"
    previous = read_jsonl(path) if path.is_file() else []
    previous = [p for p in previous if p["step"] < run.state.step]
    new = [{"step": run.state.step, "prompt": p[-1]["content"] if p else "", "completion": g.text}
           for p, g in zip(run.data.sample_prompts, generations)]
    write_jsonl_atomic(path, previous + new)


# ---------------------------------------------------------------------------------------------
# Outputs


def save_final(run: Run) -> None:
    """adapter/ or model/ (the shell's); a QAT model is saved as plain float weights."""
    # `export --format quantized` makes the integers from the float weights.
    strip = qat.strip_fake_quant if run.recipe.quantization_aware is not None and run.recipe.method == "full" else None
    shell.save_final(run, run.tokenizer, before_save=strip)  # every rank (see shell.save_final)


def write_summary(run: Run) -> dict:
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
        "peak_rss_gb": round(shell.peak_memory_gb(torch.device("cpu")), 3),
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
