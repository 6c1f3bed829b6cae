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
