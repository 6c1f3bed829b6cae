"""Every training method, registered explicitly in one table: recipe ``method:`` -> its trainer.

The names themselves are declared once, in :mod:`tuneloop.config.recipe` (``SFT_METHODS``,
``PREFERENCE_METHODS``), because the recipe schema validates them; this table maps each to the
function that trains it, and a test checks that the two agree. A new method adds its module and
one row here.

Every trainer has the signature ``train(recipe, resume=False, on_evaluate=None) -> run_dir`` and runs
in the same shell (:mod:`tuneloop.train.shell`); each also has a ``--dry-run`` report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from tuneloop.train import preview as sft_preview
from tuneloop.train import run as sft
from tuneloop.train.preference import dpo, grpo, kto, orpo, reward
from tuneloop.train.preference import engine as preference
from tuneloop.train.preference import preview as preference_preview

Trainer = Callable[..., Path]


def _preference(method: preference.Method) -> Trainer:
    return functools.partial(preference.run, method=method)


TRAINERS: dict[str, tuple[Trainer, Callable[[object], str]]] = {
    # SFT: tuneloop.train.run
    "full": (sft.run_training, sft_preview.dry_run_report),
    "lora": (sft.run_training, sft_preview.dry_run_report),
    "dora": (sft.run_training, sft_preview.dry_run_report),
    "qlora": (sft.run_training, sft_preview.dry_run_report),
    # preference and RL: tuneloop.train.preference
    "dpo": (_preference(dpo.METHOD), preference_preview.dry_run_report),
    "orpo": (_preference(orpo.METHOD), preference_preview.dry_run_report),
    "kto": (_preference(kto.METHOD), preference_preview.dry_run_report),
    "reward": (_preference(reward.METHOD), preference_preview.dry_run_report),
    "grpo": (_preference(grpo.METHOD), preference_preview.dry_run_report),
}
