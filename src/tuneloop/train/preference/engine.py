"""The loop every preference/RL method runs, and the model helpers they share.

A method is a :class:`Method` record (see the bottom of ``dpo.py``, ``orpo.py``, ...): how to prepare
its data, the loss of one micro-batch and its held-out evaluation. :func:`run` does the rest the same
way for all of them: run directory, model (LoRA or full), optimizer and schedule, gradient
accumulation, progress bar, metrics.jsonl, checkpoints with exact resume, final weights, summary.json.

Reference model: for LoRA it is the same network with the adapter switched off (no second copy in
memory); for full fine-tuning a frozen copy of the starting weights is kept.

The SFT engine's library does the generic parts: model set-up and precision (``train.methods``),
schedule and shuffling (``train.loop``), checkpoints (``train.checkpoint``), metrics.jsonl and
MLflow (``train.tracking``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneloop.chat.template import IGNORE_INDEX
from tuneloop.train import checkpoint as ckpt
from tuneloop.train import loop
from tuneloop.train.optimizers import decay_groups, make_optimizer
from tuneloop.train.preference import runtime


@dataclass(frozen=True)
class Method:
    name: str
    head: str  # "causal": a language model; "score": a scalar reward head
    prepare: Callable[["Session"], int]  # encode data (and reference log-probs); returns #items
    loss: Callable[["Session", list[int]], tuple[torch.Tensor, dict, int]]  # -> loss, metrics, tokens
    evaluate: Callable[["Session"], dict]  # held-out metrics, keys without the validation_ prefix
    keeps_reference: bool = True  # full fine-tuning keeps a frozen copy of the starting model
    check: Callable[[Any], None] | None = None  # cheap input checks, run before the model loads


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

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @contextlib.contextmanager
    def reference(self):
        """Yields the reference model: the frozen copy, or this model with its adapter off."""
        with torch.no_grad(), self.autocast():
            if self.reference_model is not None:
                yield self.reference_model
            else:
                with self.model.disable_adapter():
                    yield self.model


# ---------------------------------------------------------------- model helpers

def _backbone_and_head(model):
    """The transformer trunk and output layer of a (possibly PEFT-wrapped) causal LM."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model, inner.get_output_embeddings()


def answer_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at answer positions only: ``(logits [N, vocab], targets [N], row of each [N])``.

    Why not ``model(...).logits``: a [batch, seq, vocab] tensor is mostly prompt positions and a
    49k-wide vocabulary; projecting only the answer positions saves most of the head's time and memory.
    """
    config = getattr(model, "config", None)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)[keep]
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, :-1][keep].float(), targets[keep], rows
    trunk, head = _backbone_and_head(model)
    hidden = trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return head(hidden[:, :-1][keep]).float(), targets[keep], rows


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
        policy, _, _ = answer_logits(session.model, batch)
    with session.reference() as reference:
        ref, _, _ = answer_logits(reference, batch)
    logp, ref_logp = policy.log_softmax(-1), ref.log_softmax(-1)
    return float((logp.exp() * (logp - ref_logp)).sum(-1).mean()) if len(logp) else 0.0


def build_model(recipe, head: str, device: torch.device):
    """Tokenizer, trainable model and autocast dtype: LoRA (``lora:``) or all weights.

    A language-model head goes through the SFT engine's set-up, as method lora or full; the reward
    model's scalar head is a sequence-classification model with the same adapter settings.
    """
    from tuneloop.models.loading import load_tokenizer, resolve_model
    from tuneloop.train.methods import resolve_precision, setup_model

    resolved = resolve_model(recipe.model)
    tokenizer = load_tokenizer(resolved, recipe.chat_template)
    precision = resolve_precision(recipe.train.precision, device, recipe.finetuning)
    if head == "causal":
        as_sft = recipe.model_copy(update={"method": recipe.finetuning})
        return setup_model(as_sft, resolved.path, precision, device).model, tokenizer, precision.autocast
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(resolved.path, num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    if recipe.finetuning == "lora":
        from peft import LoraConfig, get_peft_model

        lora = recipe.lora
        torch.manual_seed(recipe.train.seed)
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="SEQ_CLS"))
    return model.to(device), tokenizer, precision.autocast


# ---------------------------------------------------------------- schedule and batches

def learning_rate(step: int, total: int, recipe) -> float:
    t = recipe.train
    return loop.learning_rate(step, total, t.learning_rate, int(t.warmup_ratio * total), t.lr_scheduler)


def micro_batch_indices(step: int, micro: int, n_items: int, recipe) -> list[int]:
    """Item indices of one micro-batch: a seeded shuffle per epoch, so step N is the same on resume."""
    size = recipe.train.batch_size
    start = (step * recipe.train.gradient_accumulation + micro) * size
    indices = []
    for position in range(start, start + size):
        epoch, offset = divmod(position, n_items)
        indices.append(_epoch_order(n_items, recipe.train.seed, epoch)[offset])
    return indices


@functools.lru_cache(maxsize=4)
def _epoch_order(n_items: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(loop.epoch_order(n_items, seed, epoch))


def total_steps(recipe, n_items: int) -> int:
    t = recipe.train
    return loop.total_steps(n_items, t.batch_size * t.gradient_accumulation, t.epochs, t.max_steps)


# ---------------------------------------------------------------- the loop

def run(recipe, method: Method, resume: bool = False):
    """Train ``recipe`` with ``method``; returns the run directory."""
    from tqdm.auto import tqdm

    from tuneloop.train.tracking import MetricsLog, Tracker

    started = time.time()
    torch.manual_seed(recipe.train.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = runtime.check_run_dir(recipe, resume)
    if method.check is not None:  # a typo in the data should not wait for a model to load
        method.check(recipe)
    model, tokenizer, autocast_dtype = build_model(recipe, method.head, device)
    session = Session(recipe, run_dir, model, tokenizer, device, autocast_dtype=autocast_dtype)
    if recipe.finetuning == "full" and method.keeps_reference:
        session.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
    _set_threads(sum(p.numel() for p in model.parameters()))
    n_items = method.prepare(session)  # bad data or reward settings stop here, before any file
    runtime.start_run_dir(recipe, resume)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(decay_groups(model, recipe.train.weight_decay), recipe.train, device)
    steps = total_steps(recipe, n_items)
    state = runtime.resume_state(run_dir, recipe, model, optimizer) if resume else ckpt.TrainState()
    metrics = MetricsLog(run_dir / "metrics.jsonl", state.step if resume else None)
    tracker = Tracker(recipe.tracking, run_dir, recipe.name, resume=resume)
    tracker.log_params(recipe.model_dump())
    initial = runtime.initial_metrics(run_dir) if resume else None
    if initial is None:
        initial = _evaluate(session, method)
        _log(metrics, tracker, {"step": 0, **initial})
    last = initial
    progress = tqdm(total=steps, initial=state.step, desc=f"{method.name} {recipe.name}", unit="step",
                    dynamic_ncols=True)
    try:
        while state.step < steps:
            row = _train_step(session, method, optimizer, trainable, state, steps, n_items)
            if state.step % recipe.train.eval_every == 0 or state.step == steps:
                last = _evaluate(session, method)
                row.update(last)
            _log(metrics, tracker, row)
            progress.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
            progress.update(1)
            if state.step % recipe.train.save_every == 0 and state.step < steps:
                runtime.save_step_checkpoint(session, optimizer, state)
    except BaseException:
        tracker.close("FAILED")
        raise
    progress.close()
    runtime.save_final(run_dir, model, tokenizer, recipe.finetuning)
    summary = _summary(recipe, method, state, initial, last, device)
    summary["wall_seconds"] = round(time.time() - started, 2)
    runtime.write_summary(run_dir, summary)
    tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))}, state.step)
    tracker.close()
    return run_dir


def _set_threads(model_parameters: int) -> None:
    """As the SFT engine does: tiny models (tests) on one thread, else one per physical core.

    On a busy machine, idle-spinning worker threads made tiny-model steps many times slower.
    """
    import os

    if os.environ.get("TUNELOOP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["TUNELOOP_NUM_THREADS"]))
    elif model_parameters < 20_000_000:
        torch.set_num_threads(1)


def _log(metrics, tracker, row: dict) -> None:
    metrics.write(row)
    tracker.log_metrics(row, row["step"])


def _train_step(session, method, optimizer, trainable, state, steps, n_items) -> dict:
    """One optimizer step over ``gradient_accumulation`` micro-batches; returns its metrics row."""
    recipe, began = session.recipe, time.perf_counter()
    session.model.train()
    lr = learning_rate(state.step, steps, recipe)
    for group in optimizer.param_groups:
        group["lr"] = lr
    sums, tokens = {}, 0
    accumulation = recipe.train.gradient_accumulation
    for micro in range(accumulation):
        indices = micro_batch_indices(state.step, micro, n_items, recipe)
        with session.autocast():
            loss, metrics, n_tokens = method.loss(session, indices)
        (loss / accumulation).backward()
        tokens += n_tokens
        for key, value in {"loss": float(loss.detach()), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value / accumulation
    grad_norm = None
    if recipe.train.max_grad_norm:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, recipe.train.max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
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


def _summary(recipe, method, state, initial: dict, final: dict, device) -> dict:
    """Final held-out metrics at the top level, and the same metrics before training beside them."""
    from tuneloop.train.run import peak_rss_gb

    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_gb()
    return {"name": recipe.name, "model": recipe.model, "method": method.name,
            "finetuning": recipe.finetuning, "steps": state.step, "trained_tokens": state.tokens_seen,
            "train_seconds": round(state.train_seconds, 2),
            "tokens_per_s": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1),
            "peak_memory_gb": round(peak, 3), **final,
            "before": initial, "after": final}
