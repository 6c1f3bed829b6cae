"""Training: SFT (full / LoRA / DoRA / QLoRA) and the preference methods (DPO, ORPO, KTO, reward, GRPO).

``run_training(recipe, resume=False, on_evaluate=None) -> run_dir`` is the entry point (``tuneloop
train``, the quickstart and every loop that trains call it); ``dry_run(recipe)`` is ``--dry-run``.

Layout: ``registry`` (method -> trainer, one table), ``shell`` (what every run does alike: run
directory, resume, seeding, optimizer, step loop, checkpoints, early stopping, final weights),
``run`` (SFT's part) and ``preference/`` (each preference method's part), on the library: ``data``
(read, tokenise, check, pack, collate), ``loss``, ``loop`` (schedule, step, evaluation, guards),
``methods`` (model set-up), ``checkpoint``, ``tracking``, ``distributed``, ``mixture``, ``qat``,
``preview``. Importing this package is cheap; torch loads when training starts.
"""

from __future__ import annotations

from pathlib import Path


def run_training(recipe, resume: bool = False, on_evaluate=None) -> Path:
    """Train per ``recipe`` (a :class:`tuneloop.config.recipe.Recipe`); returns the run directory.

    ``on_evaluate(step, metrics) -> bool`` is called on rank 0 after each held-out evaluation
    (``metrics`` has ``validation_loss`` and, for preference methods, their other held-out metrics);
    returning True stops the run as early stopping does (its final outputs are still written).
    """
    # Lazy: the registry imports torch and the trainers, which `tuneloop --help` must not load.
    from tuneloop.train.registry import TRAINERS

    train, _ = TRAINERS[recipe.method]
    return train(recipe, resume=resume, on_evaluate=on_evaluate)


def dry_run(recipe) -> str:
    """The ``--dry-run`` report: sample preview, length histogram, memory estimate, steps and ETA."""
    from tuneloop.train.registry import TRAINERS

    _, report = TRAINERS[recipe.method]
    return report(recipe)


__all__ = ["run_training", "dry_run"]
