"""Helpers for the training tests: recipes on the tiny model and the fixture data beside this file."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
TRAIN = HERE / "chat_train.jsonl"
VALIDATION = HERE / "chat_validation.jsonl"
NO_TRAINABLE = HERE / "no_trainable.jsonl"


def tiny_recipe(model_dir: Path, out_dir: Path, name: str = "t", method: str = "lora",
                validation: bool = False, **train) -> dict:
    """A recipe dict for a few quick steps on the tiny model; ``train`` overrides train.* keys."""
    settings = {"epochs": 1, "batch_size": 4, "max_seq_len": 256, "learning_rate": 3e-3,
                "warmup_ratio": 0.0, "eval_every": 1000, "save_every": 1000, "seed": 0}
    settings.update(train)
    return {
        "name": name, "model": str(model_dir), "method": method, "output_dir": str(out_dir),
        "data": {"train": str(TRAIN), "validation": str(VALIDATION) if validation else None},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": settings,
        "tracking": {"backend": "none"},
    }


# A training run that SIGKILLs itself while evaluating step argv[2] (argv[1]: the recipe as JSON),
# so that nothing is cleaned up: started as its own process, or as rank 0 under torchrun.
KILLED_RUN = """
import json, os, signal, sys
from tuneloop.config.recipe import recipe_from_dict
from tuneloop.train import run_training

def kill_at(step, metrics):
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return False

run_training(recipe_from_dict(json.loads(open(sys.argv[1]).read())), on_evaluate=kill_at)
"""
