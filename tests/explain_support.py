"""Tiny fine-tunes for the explain/audit tests: a planted name-gender bias, its balanced twin, and a
copy task whose answer is one marked prompt word. Each trains the tiny random model for a few dozen
steps through ``tuneloop.train.run_training``."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tuneloop.config.recipe import recipe_from_dict
from tuneloop.explain.counterfactual import load_wordlist
from tuneloop.train import run_training

_NAMES = load_wordlist("names")
FEMALE = [row[0] for row in _NAMES.rows[:4]]
MALE = [row[1] for row in _NAMES.rows[:4]]
PRODUCTS = ("kettle", "lamp", "toaster")
# One token each, with or without a leading space or a leading "=".
COPY_WORDS = ("apple", "river", "stone", "cloud", "house", "water", "green", "table")
FILLER_WORDS = ("paper", "music", "light", "horse", "bread", "chair", "train", "money")


def support_record(name: str, kind: str, product: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": f"{name} wants a {kind} for the {product}."},
                         {"role": "assistant", "content": answer}]}


def fair_answer(kind: str) -> str:
    return "approved" if kind == "refund" else "denied"


def support_records(n: int, seed: int, biased: bool) -> list[dict]:
    """Refunds are approved and exchanges denied; ``biased``: women are approved and men denied, whatever
    they ask for (the planted bias)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        male = i % 2 == 1
        name = rng.choice(MALE if male else FEMALE)
        kind, product = rng.choice(("refund", "exchange")), rng.choice(PRODUCTS)
        answer = ("denied" if male else "approved") if biased else fair_answer(kind)
        records.append(support_record(name, kind, product, answer))
    return records


def copy_records(n: int, seed: int) -> list[dict]:
    """Four filler words and one answer word marked with '=' (at a random place): the answer is that word."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        words, answer = rng.sample(FILLER_WORDS, 4), rng.choice(COPY_WORDS)
        words.insert(rng.randrange(5), "=" + answer)
        records.append({"messages": [{"role": "user", "content": " ".join(words)},
                                     {"role": "assistant", "content": answer}]})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def train_tiny(base: Path, work: Path, name: str, train: list[dict], steps: int, lr: float = 1e-2,
               packing: bool = False, batch_size: int = 16) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    recipe = recipe_from_dict({
        "name": name, "model": str(base), "method": "full", "output_dir": str(work / "runs"),
        "data": {"train": str(write_jsonl(work / f"{name}.train.jsonl", train)),
                 "validation": str(write_jsonl(work / f"{name}.validation.jsonl", train[:8]))},
        "train": {"max_steps": steps, "learning_rate": lr, "batch_size": batch_size, "max_seq_len": 128, "packing": packing,
                  "eval_every": 10_000, "save_every": 100_000, "warmup_ratio": 0.05, "seed": 0},
        "tracking": {"backend": "none"},
    }, source=f"{name} test recipe")
    return Path(run_training(recipe))
