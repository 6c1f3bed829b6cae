"""Preference optimisation and RLHF: ``method: dpo | orpo | kto | reward | grpo`` in a recipe.

Layout (one module per method, all with the same shape: a docstring with its recipe keys, the
method's loss, and a ``METHOD`` record at the bottom):

* ``dpo.py``, ``orpo.py``, ``kto.py``: offline learning from preference pairs;
* ``reward.py``: a scalar reward model (Bradley-Terry) on the causal LM's trunk;
* ``grpo.py``: online RL, rewards from a reward run or a Python function named in the recipe.

Shared library: ``data.py`` (records -> token ids through the one chat-template module),
``losses.py`` (pure loss functions), ``pairs.py`` (scoring pairs), ``engine.py`` (the loop:
LoRA/full, accumulation, progress, metrics, checkpoints, resume), ``runtime.py`` (run-dir files).

Entry point: :func:`run_preference` (``tuneloop train`` dispatches here on these methods).
"""

from __future__ import annotations

import importlib
from pathlib import Path

METHODS = ("dpo", "orpo", "kto", "reward", "grpo")


def run_preference(recipe, resume: bool = False) -> Path:
    """Train ``recipe`` (method dpo/orpo/kto/reward/grpo) and return its run directory."""
    from tuneloop.train.preference.engine import run

    if recipe.method not in METHODS:
        raise ValueError(f"not a preference method: {recipe.method}")
    module = importlib.import_module(f"tuneloop.train.preference.{recipe.method}")
    return run(recipe, module.METHOD, resume=resume)
