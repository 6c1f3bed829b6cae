"""The preference/RL methods' part of a run, and the model helpers they share.

A method is a :class:`Method` record (see the bottom of ``dpo.py``, ``orpo.py``, ...): how to prepare
its data, the loss of one micro-batch and its held-out evaluation. :func:`run` sets up the model
(LoRA or full) and the session, and hands one optimizer step and the evaluation to the run shell
(:mod:`tuneloop.train.shell`), which does the rest exactly as it does for SFT: run directory,
resume, optimizer and schedule, checkpoints, early stopping, tracking, progress, final weights.

Data parallelism: each of a step's ``gradient_accumulation x world_size`` micro-batches goes to one
process; the model runs through the engine (DDP, FSDP2 or DeepSpeed, ``train.distributed``), which synchronises
gradients on a step's last micro-batch, and every process evaluates the same held-out set, so all
agree on metrics and on when to stop. A method computes with its model through
:meth:`Session.forward` and :meth:`Session.reference_forward`, so that this happens inside the
engine's forward whatever parts of the model it calls.

Reference model: for LoRA it is the same network with the adapter switched off (no second copy in
memory); for full fine-tuning a frozen copy of the starting weights is kept.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

from tuneloop.chat.template import IGNORE_INDEX
from tuneloop.errors import UserError
from tuneloop.models.loading import load_tokenizer, resolve_model
from tuneloop.paths import read_jsonl, write_json_atomic
from tuneloop.train import checkpoint as ckpt
from tuneloop.train import loop, shell
from tuneloop.train.distributed import DistInfo, Engine, all_reduce_sum, barrier, init_distributed, shutdown
from tuneloop.train.methods import resolve_precision, setup_model


@dataclass(frozen=True)
class Method:
    name: str
    head: str  # "causal": a language model; "score": a scalar reward head
    prepare: Callable[["Session"], int]  # encode data (and reference log-probs); returns #items
    loss: Callable[["Session", list[int]], tuple[torch.Tensor, dict, int]]  # -> loss, metrics, tokens
    evaluate: Callable[["Session"], dict]  # held-out metrics, keys without the validation_ prefix
    keeps_reference: bool = True  # full fine-tuning keeps a frozen copy of the starting model
    check: Callable[[Any], None] | None = None  # cheap input checks, run before the model loads
    # Optimizer steps per batch of items (RL: passes over one batch of sampled answers, GRPO's
    # num_iterations, PPO's num_ppo_epochs); the same batch's indices come back that many steps.
    passes: Callable[[Any], int] | None = None
    before_save: Callable[[Any], None] | None = None  # e.g. drop a training-only value head


@dataclass
class Session:
    recipe: Any
    run_dir: Any
    model: Any
    tokenizer: Any
    device: torch.device
    reference_model: Any = None  # full fine-tuning only; LoRA disables its adapter instead
    autocast_dtype: Any = None  # None = fp32 (train.methods.resolve_precision decides)
    data: dict = field(default_factory=dict)  # whatever the method's prepare() encodes
    dist: DistInfo = field(default_factory=DistInfo)
    # Where the current loss() call is: the micro-batch slot within its step, and which pass over its
    # batch this step is (0 = the step that first sees the batch; see Method.passes).
    micro: int = 0
    pass_index: int = 0
    engine: Engine | None = None  # set once the method's data is prepared; None: call the model as is

    def forward(self, fn: Callable, *args):
        """``fn(model, *args)`` through the data-parallel engine, so that its gradients synchronise."""
        return self.engine(fn, *args) if self.engine is not None else fn(self.model, *args)

    def reference_forward(self, fn: Callable, *args):
        """``fn(reference model, *args)`` without gradients: the frozen copy, or this model with its
        adapter off (through the engine: under FSDP2 its weights are sharded)."""
        with torch.no_grad(), self.autocast():
            if self.reference_model is not None:
                return fn(self.reference_model, *args)
            with self.model.disable_adapter():
                return self.forward(fn, *args)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


# ---------------------------------------------------------------- model helpers

def _backbone_and_head(model):
    """The transformer trunk and output layer of a (possibly PEFT-wrapped) causal LM."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model, inner.get_output_embeddings()


def answer_states(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Last hidden states and logits at answer positions only: ``(hidden [N, H], logits [N, vocab],
    targets [N], row of each [N])`` (the positions that predict an answer token, row by row in order).

    Why not ``model(...).logits``: a [batch, seq, vocab] tensor is mostly prompt positions and a
    49k-wide vocabulary; projecting only the answer positions saves most of the head's time and memory.
    """
    config = getattr(model, "config", None)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)[keep]
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        return out.hidden_states[-1][:, :-1][keep], out.logits[:, :-1][keep].float(), targets[keep], rows
    trunk, head = _backbone_and_head(model)
    hidden = trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden = hidden[:, :-1][keep]
    return hidden, head(hidden).float(), targets[keep], rows


def answer_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at answer positions only: ``(logits [N, vocab], targets [N], row of each [N])``."""
    _, logits, targets, rows = answer_states(model, batch)
    return logits, targets, rows


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each row's answer tokens, and each row's answer length in tokens."""
    logits, targets, rows = answer_logits(model, batch)
    token_logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    n_rows = batch["labels"].shape[0]
    sums = torch.zeros(n_rows, device=logits.device).index_add(0, rows, token_logp)
    counts = torch.zeros(n_rows, device=logits.device).index_add(0, rows, torch.ones_like(token_logp))
    return sums, counts.clamp(min=1)


def answer_kl(session: Session, batch: dict) -> float:
    """Mean per-token KL(policy || reference) over the answer tokens of ``batch`` (full vocabulary)."""
    with torch.no_grad(), session.autocast():
        policy, _, _ = session.forward(answer_logits, batch)
    ref, _, _ = session.reference_forward(answer_logits, batch)
    logp, ref_logp = policy.log_softmax(-1), ref.log_softmax(-1)
    return float((logp.exp() * (logp - ref_logp)).sum(-1).mean()) if len(logp) else 0.0


def build_model(recipe, head: str, device: torch.device):
    """Tokenizer, trainable model and autocast dtype: LoRA (``lora:``) or all weights.

    A language-model head goes through the SFT engine's set-up, as method lora or full; the reward
    model's scalar head is a sequence-classification model with the same adapter settings.
    """
    resolved = resolve_model(recipe.model)
    tokenizer = load_tokenizer(resolved, recipe.chat_template)
    precision = resolve_precision(recipe.train.precision, device, recipe.finetuning)
    if head == "causal":
        as_sft = recipe.model_copy(update={"method": recipe.finetuning})
        return setup_model(as_sft, resolved.path, precision, device).model, tokenizer, precision.autocast
    model = AutoModelForSequenceClassification.from_pretrained(resolved.path, num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    if recipe.finetuning == "lora":
        lora = recipe.lora
        torch.manual_seed(recipe.train.seed)
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="SEQ_CLS"))
    return model.to(device), tokenizer, precision.autocast


# ---------------------------------------------------------------- schedule and batches

def learning_rate(step: int, total: int, recipe) -> float:
    t = recipe.train
    return loop.learning_rate(step, total, t.learning_rate, int(t.warmup_ratio * total), t.lr_scheduler)


def micro_batch_indices(step: int, micro: int, n_items: int, recipe, world_size: int = 1) -> list[int]:
    """Item indices of one micro-batch: a seeded shuffle per epoch, so step N is the same on resume.

    ``step`` counts batches: it is the optimizer step divided by the method's passes per batch. A step has ``gradient_accumulation x world_size`` micro-batches; process r takes micro-batches
    ``r x gradient_accumulation ...`` of them.
    """
    size = recipe.train.batch_size
    start = (step * recipe.train.gradient_accumulation * world_size + micro) * size
    indices = []
    for position in range(start, start + size):
        epoch, offset = divmod(position, n_items)
        indices.append(_epoch_order(n_items, recipe.train.seed, epoch)[offset])
    return indices


@functools.lru_cache(maxsize=4)
def _epoch_order(n_items: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(loop.epoch_order(n_items, seed, epoch))


def passes_per_batch(method: "Method", recipe) -> int:
    return method.passes(recipe) if method.passes is not None else 1


def total_steps(recipe, n_items: int, world_size: int = 1, passes: int = 1) -> int:
    """Optimizer steps: ``train.max_steps``, else epochs over the data x passes per batch."""
    t = recipe.train
    if t.max_steps is not None:
        return t.max_steps
    return passes * loop.total_steps(n_items, t.batch_size * t.gradient_accumulation * world_size, t.epochs, None)


# ---------------------------------------------------------------- the run

@dataclass
class PreferenceRun:
    """A job of :mod:`tuneloop.train.shell`: the session plus what the shell's loop needs."""

    recipe: Any
    dist: DistInfo
    run_dir: Path
    session: Session
    method: Method
    optimizer: torch.optim.Optimizer
    params: list
    state: ckpt.TrainState
    total_steps: int
    n_items: int
    on_evaluate: shell.EvaluateCallback | None = None
    metrics: Any = None  # tracking.MetricsLog on rank 0
    tracker: Any = None
    started: float = field(default_factory=time.time)

    @property
    def model(self):
        return self.session.model

    @property
    def engine(self) -> Engine:
        return self.session.engine

    @property
    def keep_best(self) -> bool:
        return bool(self.recipe.train.early_stopping)


def run(recipe, method: Method, resume: bool = False, on_evaluate: shell.EvaluateCallback | None = None) -> Path:
    """Train ``recipe`` with ``method``; returns the run directory."""
    job = setup(recipe, method, resume)
    recipe = job.recipe  # with the launcher's settings (shell.with_launcher_settings)
    job.on_evaluate = on_evaluate
    try:
        if job.dist.is_main:
            if not resume:
                shell.clear_stale_checkpoints(job.run_dir)
            job.metrics, job.tracker = shell.open_run_dir(recipe, resume, job.state.step, {})
        barrier(job.dist)
        initial = _initial_metrics(job.run_dir) if resume else None
        if initial is None:
            initial = _evaluate(job.session, method)
            shell.log_record(job, {"step": 0, **initial})
        if initial:
            _watched(recipe, initial)  # an early-stopping metric the method lacks fails before training
        last = {"metrics": initial}

        def evaluate():
            metrics = _evaluate(job.session, method)
            if not metrics:  # no held-out data
                return None
            last["metrics"] = metrics
            return metrics, _watched(recipe, metrics)

        shell.run_steps(job, lambda: _train_step(job), evaluate, desc=f"{method.name} {recipe.name}")
        shell.save_final(job, job.session.tokenizer, method.before_save)  # every rank (FSDP2 gathers)
        if job.dist.is_main:
            summary = _summary(job, initial, last["metrics"])
            write_json_atomic(job.run_dir / "summary.json", summary)
            job.tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))},
                                    job.state.step)
        barrier(job.dist)
    except BaseException:
        if job.tracker:
            job.tracker.close("FAILED")
        raise
    finally:
        shutdown(job.dist)
    if job.tracker:
        job.tracker.close()
    return job.run_dir


def setup(recipe, method: Method, resume: bool = False) -> PreferenceRun:
    """Model, session (with the method's encoded data), optimizer and, resuming, the restored state."""
    recipe = shell.with_launcher_settings(recipe)
    dist = init_distributed(recipe.distributed)
    shell.check_strategy(recipe, dist)
    # Refuse an incompatible checkpoint, and a typo in the data, before a model loads.
    resume_from = shell.checkpoint_to_resume(recipe) if resume else None
    if method.check is not None:
        method.check(recipe)
    shell.seed_everything(recipe.train.seed, recipe.train.deterministic)
    model, tokenizer, autocast_dtype = build_model(recipe, method.head, dist.device)
    session = Session(recipe, recipe.run_dir(), model, tokenizer, dist.device, autocast_dtype=autocast_dtype,
                      dist=dist)
    if recipe.finetuning == "full" and method.keeps_reference:
        session.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
    shell.set_threads(dist, sum(p.numel() for p in model.parameters()))
    n_items = method.prepare(session)  # bad data or reward settings stop here, before any file
    # After prepare (PPO adds its value head there).
    session.engine, optimizer = shell.engine_and_optimizer(model, model, dist, recipe)
    state = (ckpt.restore_checkpoint(resume_from, model, optimizer, dist, session.engine) if resume_from
             else ckpt.TrainState())
    params = [p for p in model.parameters() if p.requires_grad]
    return PreferenceRun(recipe, dist, recipe.run_dir(), session, method, optimizer, params, state,
                         total_steps(recipe, n_items, dist.world_size, passes_per_batch(method, recipe)), n_items)


def _initial_metrics(run_dir: Path) -> dict | None:
    """The held-out metrics measured before training (metrics.jsonl's step-0 row), if logged."""
    path = run_dir / "metrics.jsonl"
    rows = read_jsonl(path) if path.is_file() else []
    first = next((r for r in rows if r.get("step") == 0), None)
    return {k: v for k, v in first.items() if k != "step"} if first else None


def _train_step(job: PreferenceRun) -> dict:
    """One optimizer step: this process's ``gradient_accumulation`` micro-batches, gradients summed
    across processes; returns the step's metrics row (averaged over all micro-batches)."""
    session, recipe, dist, state = job.session, job.recipe, job.dist, job.state
    began = time.perf_counter()
    session.model.train()
    lr = learning_rate(state.step, job.total_steps, recipe)
    for group in job.optimizer.param_groups:
        group["lr"] = lr
    sums, tokens = {}, 0
    accumulation = recipe.train.gradient_accumulation
    share = accumulation * dist.world_size  # micro-batches in the whole step
    batch, session.pass_index = divmod(state.step, passes_per_batch(job.method, recipe))
    engine = session.engine
    for micro in range(accumulation):
        session.micro = dist.rank * accumulation + micro
        indices = micro_batch_indices(batch, session.micro, job.n_items, recipe, dist.world_size)
        with engine.synchronising(last=micro == accumulation - 1):  # DDP: forward and backward inside
            with session.autocast():
                loss, metrics, n_tokens = job.method.loss(session, indices)
            engine.backward(loss * (engine.gradient_scale / share))
        tokens += n_tokens
        for key, value in {"loss": float(loss.detach()), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value / share
    if dist.enabled:
        keys = sorted(sums)
        totals = all_reduce_sum(torch.tensor([sums[k] for k in keys] + [tokens], dtype=torch.float64), dist)
        sums, tokens = dict(zip(keys, totals[:-1].tolist())), int(totals[-1])
    grad_norm = engine.step(job.optimizer, job.params, recipe.train.max_grad_norm or None)
    engine.zero_grad(job.optimizer)
    state.step += 1
    state.tokens_seen += tokens
    state.train_seconds += time.perf_counter() - began
    return {"step": state.step, **sums, "learning_rate": lr,
            "tokens_per_s": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1),
            "grad_norm": grad_norm}


def _evaluate(session, method) -> dict:
    session.model.eval()
    with torch.no_grad():
        metrics = method.evaluate(session)
    return {f"validation_{k}": v for k, v in metrics.items()}


def _watched(recipe, metrics: dict) -> float | None:
    """The held-out value early stopping watches: ``train.early_stopping.metric`` (validation_loss)."""
    stopping = recipe.train.early_stopping
    metric = stopping.metric if stopping else "validation_loss"
    if metric in metrics:
        return metrics[metric]
    if stopping:
        raise UserError(f"train.early_stopping.metric: method {recipe.method} reports no {metric!r}",
                        hint=f"watch one of: {', '.join(sorted(metrics)) or '(none: add held-out data)'}")
    return None


def _summary(job: PreferenceRun, initial: dict, final: dict) -> dict:
    """Final held-out metrics at the top level, and the same metrics before training beside them."""
    recipe, state = job.recipe, job.state
    return {"name": recipe.name, "model": recipe.model, "method": job.method.name,
            "finetuning": recipe.finetuning, "steps": state.step, "trained_tokens": state.tokens_seen,
            "train_seconds": round(state.train_seconds, 2),
            "wall_seconds": round(time.time() - job.started, 2),
            "tokens_per_s": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1),
            "peak_memory_gb": round(shell.peak_memory_gb(job.dist.device), 3),
            "world_size": job.dist.world_size, "best_step": state.best_step, **final,
            "before": initial, "after": final}
