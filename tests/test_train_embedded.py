"""Slow (~1-2 minutes on 2 idle cores): a LoRA run on the embedded SmolLM2-135M lowers validation loss and records speed and memory."""

from __future__ import annotations

import json

import pytest

from tuneloop.config.recipe import recipe_from_dict
from tuneloop.paths import read_jsonl, write_jsonl_atomic
from tuneloop.train import run_training


@pytest.mark.slow
def test_lora_on_embedded_model_lowers_validation_loss(tmp_path, banking77_csv):
    import csv

    with open(banking77_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[::104][:60]  # the file is sorted by label: 60 spread intents
    # Banking77 as chat: the customer's message in, the intent label out.
    chats = [{"messages": [{"role": "user", "content": r["text"]},
                           {"role": "assistant", "content": r["category"]}]} for r in rows]
    write_jsonl_atomic(tmp_path / "train.jsonl", [c for i, c in enumerate(chats) if i % 6])
    write_jsonl_atomic(tmp_path / "validation.jsonl", chats[::6])
    recipe = recipe_from_dict({
        "name": "embedded", "model": "smollm2-135m-instruct", "method": "lora", "output_dir": str(tmp_path),
        "data": {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "validation.jsonl")},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 2, "max_seq_len": 256, "learning_rate": 1e-3,
                  "warmup_ratio": 0.0, "eval_every": 1000, "save_every": 1000},
        "tracking": {"backend": "none"},
    })
    run_dir = run_training(recipe)
    summary = json.loads((run_dir / "summary.json").read_text())
    print("embedded LoRA run:", {k: summary[k] for k in (
        "steps", "trained_tokens", "tokens_per_s", "peak_rss_gb", "initial_validation_loss",
        "validation_loss", "precision")})
    assert summary["validation_loss"] < summary["initial_validation_loss"] - 0.2
    assert summary["tokens_per_s"] > 0 and 0.3 < summary["peak_rss_gb"] < 8
    assert summary["trained_tokens"] > 0
    assert [r["step"] for r in read_jsonl(run_dir / "samples.jsonl")]  # generations were written
