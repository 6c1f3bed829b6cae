"""Helpers for the preference-method tests: a learnable synthetic pair set and recipes on the tiny model.

Chosen answers are short and start with "Sure"; rejected ones ramble, so every method has something
to learn in a few steps.
"""

from __future__ import annotations

import json
import random

import pytest

from tuneloop.config.recipe import recipe_from_dict

TOPICS = ["refund", "shipping", "password", "invoice", "account", "delivery", "order", "card"]


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        rows.append({"prompt": f"Question {i}: how do I fix my {topic}?",
                     "chosen": f"Sure: check your {topic} page.",
                     "rejected": f"Well, {topic} questions depend on so many things that, honestly, "
                                 "it is hard to say anything at all before we discuss them at length."})
    return rows


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pref")
    for name, n, seed in (("train", 32, 0), ("validation", 8, 1)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(n, seed)))
    return folder


def make_recipe(tmp_path, model, data_dir, method, **sections):
    raw = {"name": f"{method}-tiny", "model": str(model), "method": method, "output_dir": str(tmp_path),
           "data": {"train": str(data_dir / "train.jsonl"), "validation": str(data_dir / "validation.jsonl")},
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
           "train": {"max_steps": 6, "learning_rate": 5e-3, "batch_size": 4, "max_seq_len": 96,
                     "eval_every": 100, "save_every": 100, "warmup_ratio": 0.0},
           "tracking": {"backend": "none"}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe_from_dict(raw)
