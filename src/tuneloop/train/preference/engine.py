"""The loop every preference/RL method runs, and the model helpers they share.

A method is a :class:`Method` record (see the bottom of ``dpo.py``, ``orpo.py``, ...): how to prepare
its data, the loss of one micro-batch and its held-out evaluation. :func:`run` does the rest the same
way for all of them: run directory, model (LoRA or full), optimizer and schedule, gradient
accumulation, progress bar, metrics.jsonl, checkpoints with exact resume, final weights, summary.json.

Reference model: for LoRA it is the same network with the adapter switched off (no second copy in
memory); for full fine-tuning a frozen copy of the starting weights is kept.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneloop.chat.template import IGNORE_INDEX
from tuneloop.train.preference import runtime


@dataclass(frozen=True)
class Method:
    name: str
    head: str  # "causal": a language model; "score": a scalar reward head
    prepare: Callable[["Session"], int]  # encode data (and reference log-probs); returns #items
    loss: Callable[["Session", list[int]], tuple[torch.Tensor, dict, int]]  # -> loss, metrics, tokens
    evaluate: Callable[["Session"], dict]  # held-out metrics, keys without the validation_ prefix
    keeps_reference: bool = True  # full fine-tuning keeps a frozen copy of the starting model


@dataclass
class Session:
    recipe: Any
    run_dir: Any
    model: Any
    tokenizer: Any
    device: torch.device
    reference_model: Any = None  # full fine-tuning only; LoRA disables its adapter instead
    data: dict = field(default_factory=dict)  # whatever the method's prepare() encodes

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self):
        dtype = compute_dtype(self.recipe, self.device)
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @contextlib.contextmanager
    def reference(self):
        """Yields the reference model: the frozen copy, or this model with its adapter off."""
        with torch.no_grad(), self.autocast():
            if self.reference_model is not None:
                yield self.reference_model
            else:
                with self.model.disable_adapter():
                    yield self.model


def compute_dtype(recipe, device: torch.device) -> torch.dtype:
    precision = recipe.train.precision
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"
                               and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16 if precision == "fp16" else torch.float32


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
    """Tokenizer and trainable model: LoRA adapter (``lora:``) or all weights (``finetuning: full``)."""
    from tuneloop.models.loading import load_model, load_tokenizer, resolve_model

    resolved = resolve_model(recipe.model)
    tokenizer = load_tokenizer(resolved)
    if head == "score":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            resolved.path, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    else:
        model = load_model(resolved)
    if recipe.finetuning == "lora":
        from peft import LoraConfig, get_peft_model

        lora = recipe.lora
        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, task_type="SEQ_CLS" if head == "score" else "CAUSAL_LM"))
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if recipe.finetuning == "lora":
            model.enable_input_require_grads()
    return model.to(device), tokenizer


# ---------------------------------------------------------------- schedule and batches

def learning_rate(step: int, total: int, recipe) -> float:
    """Warm up linearly, then cosine / linear decay to 0, or stay constant."""
    peak, warmup = recipe.train.learning_rate, math.ceil(total * recipe.train.warmup_ratio)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if recipe.train.lr_scheduler == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    if recipe.train.lr_scheduler == "linear":
        return peak * (1 - progress)
    return peak


def micro_batch_indices(step: int, micro: int, n_items: int, recipe) -> list[int]:
    """Item indices of one micro-batch: a seeded shuffle per epoch, so step N is the same on resume."""
    size = recipe.train.batch_size
    start = (step * recipe.train.gradient_accumulation + micro) * size
    indices = []
    for position in range(start, start + size):
        epoch, offset = divmod(position, n_items)
        indices.append(_epoch_order(n_items, recipe.train.seed + epoch)[offset])
    return indices


@functools.lru_cache(maxsize=4)
def _epoch_order(n_items: int, seed: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n_items, generator=torch.Generator().manual_seed(seed)).tolist())


def total_steps(recipe, n_items: int) -> int:
    if recipe.train.max_steps:
        return recipe.train.max_steps
    per_step = recipe.train.batch_size * recipe.train.gradient_accumulation
    return max(1, math.ceil(recipe.train.epochs * n_items / per_step))


# ---------------------------------------------------------------- the loop

def run(recipe, method: Method, resume: bool = False):
    """Train ``recipe`` with ``method``; returns the run directory."""
    from tqdm.auto import tqdm

    torch.manual_seed(recipe.train.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = runtime.start_run_dir(recipe, resume)
    model, tokenizer = build_model(recipe, method.head, device)
    session = Session(recipe, run_dir, model, tokenizer, device)
    if recipe.finetuning == "full" and method.keeps_reference:
        session.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
    n_items = method.prepare(session)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.train.learning_rate,
                                  weight_decay=recipe.train.weight_decay)
    steps = total_steps(recipe, n_items)
    log = runtime.MetricsLog(run_dir, recipe, resume)
    start, initial, tokens_seen = _restore(session, optimizer, log) if resume else (0, None, 0)
    if initial is None:
        initial = _evaluate(session, method)
        log.log({"step": 0, **initial})
    started, last = time.perf_counter(), initial
    progress = tqdm(range(start, steps), initial=start, total=steps, desc=f"{method.name} {recipe.name}",
                    disable=None)
    for step in progress:
        row, tokens = _train_step(session, method, optimizer, trainable, step, steps, n_items)
        tokens_seen += tokens
        if (step + 1) % recipe.train.eval_every == 0 or step + 1 == steps:
            last = _evaluate(session, method)
            row.update(last)
        log.log(row)
        progress.set_postfix(loss=f"{row['loss']:.4f}")
        if (step + 1) % recipe.train.save_every == 0 and step + 1 < steps:
            _checkpoint(session, optimizer, step + 1, initial, tokens_seen)
    log.close()
    runtime.save_final(run_dir, model, tokenizer, recipe.finetuning)
    runtime.write_summary(run_dir, _summary(recipe, method, steps, initial, last, tokens_seen,
                                            time.perf_counter() - started, device))
    return run_dir


def _train_step(session, method, optimizer, trainable, step, steps, n_items) -> tuple[dict, int]:
    """One optimizer step over ``gradient_accumulation`` micro-batches; returns its metrics row."""
    recipe, began = session.recipe, time.perf_counter()
    session.model.train()
    lr = learning_rate(step, steps, recipe)
    for group in optimizer.param_groups:
        group["lr"] = lr
    sums, tokens = {}, 0
    accumulation = recipe.train.gradient_accumulation
    for micro in range(accumulation):
        indices = micro_batch_indices(step, micro, n_items, recipe)
        with session.autocast():
            loss, metrics, n_tokens = method.loss(session, indices)
        (loss / accumulation).backward()
        tokens += n_tokens
        for key, value in {"loss": float(loss.detach()), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value / accumulation
    if recipe.train.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(trainable, recipe.train.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - began
    return {"step": step + 1, **sums, "learning_rate": lr, "tokens_per_s": tokens / elapsed}, tokens


def _evaluate(session, method) -> dict:
    session.model.eval()
    with torch.no_grad():
        metrics = method.evaluate(session)
    return {f"validation_{k}": v for k, v in metrics.items()}


def _checkpoint(session, optimizer, step, initial, tokens_seen) -> None:
    trainable = {n: p.detach().cpu() for n, p in session.model.named_parameters() if p.requires_grad}
    state = {"step": step, "trainable": trainable, "optimizer": optimizer.state_dict(),
             "rng": torch.get_rng_state(), "initial": initial, "tokens_seen": tokens_seen}
    runtime.save_checkpoint(session.run_dir, step, state, session.recipe.train.keep_checkpoints)


def _restore(session, optimizer, log) -> tuple[int, dict, int]:
    """Load the newest checkpoint: weights, optimizer, RNG; metrics after it are dropped."""
    state = torch.load(runtime.latest_checkpoint(session.run_dir), weights_only=False)
    params = dict(session.model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor.to(params[name].device))
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    log.truncate_after(state["step"])
    return state["step"], state["initial"], state["tokens_seen"]


def _summary(recipe, method, steps, initial, final, tokens, wall_s, device) -> dict:
    import resource

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
    return {"method": method.name, "model": recipe.model, "finetuning": recipe.finetuning,
            "steps": steps, "trained_tokens": tokens, "wall_time_s": round(wall_s, 2),
            "tokens_per_s": round(tokens / wall_s, 1) if wall_s else None,
            "peak_memory_gb": round(peak_gb, 3), "before": initial, "after": final,
            "final": final}
