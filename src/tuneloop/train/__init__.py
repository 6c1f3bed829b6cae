"""The training engine: SFT with full / LoRA / DoRA / QLoRA, and the library other methods build on.

``run_training(recipe, resume=False) -> run_dir`` is the entry point (``tuneloop train`` calls it).
The pieces: ``data`` (read, tokenise, check, pack, collate), ``loss`` (supervised-only chunked
cross-entropy), ``loop`` (schedule, step, evaluation, guards), ``methods`` (model set-up per method),
``checkpoint``, ``tracking``, ``distributed``, ``run`` (the orchestration) and ``preview``
(``--dry-run``). Importing this package is cheap; torch loads when training starts.
"""

from __future__ import annotations


def run_training(recipe, resume: bool = False, on_evaluate=None):
    """Train per ``recipe`` (a :class:`tuneloop.config.recipe.Recipe`); returns the run directory.

    ``on_evaluate(step, metrics) -> bool`` (SFT methods) is called on rank 0 after each validation
    evaluation (``metrics`` has ``validation_loss``); returning True stops the run, as early stopping
    does. ``tuneloop tune`` prunes trials with it.
    """
    from tuneloop.train.preference import METHODS, run_preference

    if recipe.method in METHODS:  # dpo, orpo, kto, reward, grpo: tuneloop.train.preference
        return run_preference(recipe, resume=resume)
    from tuneloop.train.run import run_training as _run_training

    return _run_training(recipe, resume=resume, on_evaluate=on_evaluate)


def dry_run(recipe) -> str:
    """The ``--dry-run`` report: sample preview, length histogram, memory estimate, steps and ETA."""
    from tuneloop.train.preference import METHODS

    if recipe.method in METHODS:
        from tuneloop.train.preference.preview import dry_run_report as preference_report

        return preference_report(recipe)
    from tuneloop.train.preview import dry_run_report

    return dry_run_report(recipe)


__all__ = ["run_training", "dry_run"]
