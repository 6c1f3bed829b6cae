"""Every training method, registered explicitly in one table: recipe ``method:`` -> its trainer.

The recipe schema declares the names it accepts (:mod:`tuneloop.config.recipe`); this table maps
each to the function that trains it and its ``--dry-run`` report, and a test checks that the two
agree. A preference method's name is the one in its ``METHOD`` record. A new method adds its module
and one entry here.

Every trainer has the signature ``train(recipe, resume=False, on_evaluate=None) -> run_dir`` and runs
in the same shell (:mod:`tuneloop.train.shell`); each also has a ``--dry-run`` report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from tuneloop.config.recipe import SFT_METHODS
from tuneloop.train import preview as sft_preview
from tuneloop.train import run as sft
from tuneloop.train.preference import dpo, grpo, kto, orpo, ppo, reward
from tuneloop.train.preference import engine as preference
from tuneloop.train.preference import preview as preference_preview

Trainer = Callable[..., Path]
DryRun = Callable[[object], str]

# Each preference method names itself in its own METHOD record, beside its loss (as PEFT registers).
PREFERENCE = (dpo.METHOD, orpo.METHOD, kto.METHOD, reward.METHOD, grpo.METHOD, ppo.METHOD)

TRAINERS: dict[str, tuple[Trainer, DryRun]] = {
    **{name: (sft.run_training, sft_preview.dry_run_report) for name in SFT_METHODS},
    **{method.name: (functools.partial(preference.run, method=method), preference_preview.dry_run_report)
       for method in PREFERENCE},
}
