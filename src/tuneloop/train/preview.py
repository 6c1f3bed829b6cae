"""``tuneloop train RECIPE --dry-run``: what a run would train on, without training.

Shows one sample token by token (trained tokens highlighted, masked ones dim), the length histogram,
what the overlong policy did, the memory estimate, the number of steps and an ETA.
"""

from __future__ import annotations

import sys

from tuneloop.chat.template import EncodedChat, preview
from tuneloop.models import catalog
from tuneloop.models.estimate import estimate
from tuneloop.models.loading import load_tokenizer, resolve_model
from tuneloop.train import loop
from tuneloop.train.data import examples_per_micro_batch, length_histogram, prepare_data


def dry_run_report(recipe, color: bool | None = None) -> str:
    color = sys.stdout.isatty() if color is None else color
    t = recipe.train
    tokenizer = load_tokenizer(resolve_model(recipe.model), recipe.chat_template)
    data = prepare_data(recipe, tokenizer, show_progress=False)
    report = data.report
    first = data.train_rows[0][0]
    sample = EncodedChat(first.input_ids, first.labels)
    rows_per_step = examples_per_micro_batch(t.batch_size, t.batch_tokens) * t.gradient_accumulation
    steps = loop.total_steps(len(data.train_rows), rows_per_step, t.epochs, t.max_steps)
    tokens = sum(report.lengths)
    tokens_total = tokens * (t.epochs if t.max_steps is None else
                             min(t.epochs, steps / loop.steps_per_epoch(len(data.train_rows), rows_per_step)))
    legend = ("trained tokens in green, masked dim" if color else "trained tokens in [[double brackets]]")
    lines = [
        f"recipe {recipe.name}: model {recipe.model}, method {recipe.method}",
        f"sample {first.source} ({len(first)} tokens, {first.n_trainable} trained; {legend}):",
        preview(tokenizer, sample, color=color),
        "",
        f"samples: {report.total} read, {report.kept} kept, {report.dropped_overlong} dropped as longer than "
        f"max_seq_len {t.max_seq_len} (policy {t.overlong}), {report.truncated_prompt} prompt-truncated, "
        f"{report.no_trainable_tokens} without trainable tokens",
        *[f"  {p}" for p in report.problems[:5]],
        f"tokens: {tokens:,} in {report.kept:,} examples ("
        f"{'padding-free packed micro-batches' if t.packing else 'padded micro-batches, one example per row'})",
        "length histogram (tokens per sample):",
        length_histogram(report.lengths),
        _steps_line(t, steps, rows_per_step, report.kept, len(data.train_rows)),
        _estimate_lines(recipe, tokens_total, _micro_batch_shape(t, report.lengths)),
    ]
    return "\n".join(lines)


def _steps_line(t, steps: int, units_per_step: int, examples: int, units: int) -> str:
    if t.batch_tokens:
        per_step = examples / max(1, units) * units_per_step
        return (f"steps: {steps} of ~{per_step:.1f} examples each ({units_per_step} token-budget rows of up "
                f"to {t.batch_tokens} tokens x accumulation {t.gradient_accumulation}; batch_tokens is set)")
    return (f"steps: {steps} of {units_per_step} examples each (batch_size {t.batch_size} x accumulation "
            f"{t.gradient_accumulation})")


def _micro_batch_shape(t, lengths: list[int]) -> tuple[int, int]:
    """(sequence length, rows) of a typical micro-batch, for the memory estimate."""
    if t.batch_tokens:
        return t.batch_tokens, 1
    mean = sum(lengths) / max(1, len(lengths))
    if t.packing:  # one row holding batch_size examples end to end
        return max(8, round(mean * t.batch_size)), 1
    return max(lengths, default=t.max_seq_len), t.batch_size


def _estimate_lines(recipe, tokens_total: float, shape: tuple[int, int] | None = None) -> str:
    card = catalog.find_card(recipe.model)
    if card is None:
        return "memory and ETA: no estimate (model not in the catalog); run a few steps to measure"
    method = "lora" if recipe.method == "dora" else recipe.method
    seq_len, rows = shape or (recipe.train.max_seq_len, recipe.train.batch_size)
    est = estimate(card, method, seq_len, rows, r=recipe.lora.r)
    eta_s = tokens_total / 1000 * est.seconds_per_1k_tokens
    return (f"memory estimate: {est.total_gb:.2f} GB (weights {est.weights_gb:.2f}, optimizer "
            f"{est.optimizer_gb:.2f}, activations {est.activations_gb:.2f}) on {est.device}\n"
            f"ETA: ~{_duration(eta_s)} for {tokens_total:,.0f} tokens "
            f"({est.seconds_per_1k_tokens:.1f} s per 1k tokens estimated)")


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "unknown"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"
