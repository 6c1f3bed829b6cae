"""Multi-task training: several datasets sampled into one stream of packed rows.

Each task is tokenised and packed on its own (a packed row never mixes tasks, so every row has one
task for per-task accounting). An epoch holds as many rows as all tasks together; each task's share
of them comes from ``data.sampling``:

- ``proportional``: by the task's size (rows), i.e. plain concatenation;
- ``weighted``: by the recipe's ``weight`` per task, whatever the sizes;
- ``temperature``: by size^(1/T), which flattens towards uniform as T grows (T5's mixing).

A task with fewer rows than its share is cycled (up-sampled) in a seeded order; one with more is
sub-sampled, a different subset each epoch. The training loop shuffles the epoch's rows as usual.
"""

from __future__ import annotations

import random


def task_probabilities(sizes: dict[str, int], weights: dict[str, float], sampling: str,
                       temperature: float = 1.0) -> dict[str, float]:
    if sampling == "proportional":
        raw = {name: float(size) for name, size in sizes.items()}
    elif sampling == "weighted":
        raw = dict(weights)
    elif sampling == "temperature":
        raw = {name: float(size) ** (1.0 / temperature) for name, size in sizes.items()}
    else:
        raise ValueError(f"unknown sampling {sampling!r}")
    total = sum(raw.values())
    return {name: value / total for name, value in raw.items()}


def share_counts(probabilities: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to ``total`` closest to ``p * total`` (largest remainder)."""
    exact = {name: p * total for name, p in probabilities.items()}
    counts = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def mix_rows(task_rows: dict[str, list], probabilities: dict[str, float], seed: int, epoch: int = 0) -> list:
    """One epoch's rows: each task contributes its share, cycling or sub-sampling its own rows."""
    total = sum(len(rows) for rows in task_rows.values())
    counts = share_counts(probabilities, total)
    mixed = []
    for name in sorted(task_rows):
        rows = task_rows[name]
        if not rows or not counts[name]:
            continue
        rng = random.Random(f"{seed}:{epoch}:{name}")
        order = []
        while len(order) < counts[name]:
            block = list(range(len(rows)))
            rng.shuffle(block)
            order.extend(block)
        mixed.extend(rows[i] for i in order[: counts[name]])
    return mixed


def row_task(row) -> str:
    return row[0].task if row else ""


def task_token_counts(rows) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        for sample in row:
            counts[sample.task] = counts.get(sample.task, 0) + len(sample.input_ids)
    return counts


def prepare_mixture_data(recipe, tokenizer, show_progress: bool = True):
    """Tokenise and pack each task, then mix the training rows by the recipe's sampling."""
    from tuneloop.errors import UserError
    from tuneloop.train.data import TokenizeReport, batch_units, read_chat_jsonl, tokenize_records
    from tuneloop.train.run import TrainData

    t, data = recipe.train, recipe.data
    task_rows, validation_by_task, sizes, report = {}, {}, {}, TokenizeReport()
    for task in data.mixture:
        samples, task_report = tokenize_records(tokenizer, read_chat_jsonl(task.train), t.max_seq_len,
                                                t.overlong, t.train_on, show_progress=show_progress)
        if not samples:
            raise UserError(f"data.mixture[{task.name}]: no sample in {task.train} has a trainable token")
        _merge_reports(report, task_report)
        for sample in samples:
            sample.task = task.name
        task_rows[task.name] = batch_units(samples, t.batch_tokens)
        sizes[task.name] = len(task_rows[task.name])
        if task.validation:
            val, _ = tokenize_records(tokenizer, read_chat_jsonl(task.validation), t.max_seq_len,
                                      "drop" if t.overlong == "error" else t.overlong, t.train_on)
            for sample in val:
                sample.task = task.name
            validation_by_task[task.name] = batch_units(val, t.batch_tokens)
    weights = {task.name: task.weight for task in data.mixture}
    probabilities = task_probabilities(sizes, weights, data.sampling, data.temperature)
    rows = mix_rows(task_rows, probabilities, t.seed)
    validation = [row for name in sorted(validation_by_task) for row in validation_by_task[name]]
    return TrainData(rows, validation, report, None, [], validation_by_task)


def _merge_reports(total, part) -> None:
    for name in ("total", "kept", "dropped_overlong", "truncated_prompt", "no_trainable_tokens"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.lengths.extend(part.lengths)
    total.problems.extend(part.problems[: max(0, 20 - len(total.problems))])


def evaluate_tasks(run, record: dict) -> float:
    """Per-task validation loss into ``record``; returns the value early stopping watches:
    ``validation_loss/<task>`` when the recipe names one, else the mean over tasks."""
    from tuneloop.train import loop
    from tuneloop.train.data import examples_per_micro_batch

    t, losses = run.recipe.train, {}
    for name, rows in sorted(run.data.validation_by_task.items()):
        losses[name] = loop.evaluate(run.loss_model, rows, examples_per_micro_batch(t.batch_size, t.batch_tokens),
                                     run.tokenizer.pad_token_id, run.dist, t.packing)
        record[f"validation_loss/{name}"] = round(losses[name], 6)
    mean = sum(losses.values()) / len(losses)
    record["validation_loss_task_mean"] = round(mean, 6)
    stopping = run.recipe.train.early_stopping
    if stopping and stopping.metric.startswith("validation_loss/"):
        task = stopping.metric.split("/", 1)[1]
        if task not in losses:
            from tuneloop.errors import UserError

            raise UserError(f"train.early_stopping.metric: no task named {task!r}",
                            hint=f"tasks: {', '.join(losses)}")
        return losses[task]
    return mean
