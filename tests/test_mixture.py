"""Multi-task data mixtures: sampling shares (exact), and a two-task run with per-task metrics."""

from __future__ import annotations

import json

import pytest

from tuneloop.config.recipe import recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.train.mixture import mix_rows, share_counts, task_probabilities


def test_probabilities_for_each_sampling_rule():
    sizes, weights = {"a": 300, "b": 100}, {"a": 1.0, "b": 3.0}
    assert task_probabilities(sizes, weights, "proportional") == {"a": 0.75, "b": 0.25}
    assert task_probabilities(sizes, weights, "weighted") == {"a": 0.25, "b": 0.75}
    flat = task_probabilities(sizes, weights, "temperature", temperature=2.0)
    assert flat["a"] == pytest.approx(300**0.5 / (300**0.5 + 100**0.5))
    assert task_probabilities(sizes, weights, "temperature", temperature=1e6)["a"] == pytest.approx(0.5, abs=1e-3)


def test_share_counts_sum_exactly():
    assert share_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10) == {"a": 4, "b": 3, "c": 3}
    assert sum(share_counts({"a": 0.123, "b": 0.877}, 997).values()) == 997


def test_mix_rows_upsamples_small_and_subsamples_large_tasks():
    rows = {"big": [[f"big{i}"] for i in range(90)], "small": [[f"small{i}"] for i in range(10)]}
    mixed = mix_rows(rows, {"big": 0.5, "small": 0.5}, seed=0)
    assert len(mixed) == 100
    smalls = [r[0] for r in mixed if r[0].startswith("small")]
    assert len(smalls) == 50 and len(set(smalls)) == 10  # every small row, each five times
    assert mixed == mix_rows(rows, {"big": 0.5, "small": 0.5}, seed=0)  # reproducible


def test_mixture_and_train_are_exclusive():
    with pytest.raises(UserError, match="data.train or data.mixture"):
        recipe_from_dict({"data": {"train": "x.jsonl", "mixture": [{"name": "a", "train": "a.jsonl"}]}})
    with pytest.raises(UserError, match="unique name"):
        recipe_from_dict({"data": {"mixture": [{"name": "a", "train": "a.jsonl"}, {"name": "a", "train": "b"}]}})


def _chats(path, question, answer, n):
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{question} {i}?"},
        {"role": "assistant", "content": f"{answer} {i % 3}."}]}) + "\n" for i in range(n)))
    return str(path)


def test_two_task_run_logs_per_task_loss_and_token_shares(tiny_model_dir, tmp_path):
    from tuneloop.paths import read_jsonl
    from tuneloop.train import run_training

    intents = {"name": "intents", "weight": 3.0,
               "train": _chats(tmp_path / "a.jsonl", "Which intent is message", "card_arrival", 40),
               "validation": _chats(tmp_path / "av.jsonl", "Which intent is text", "card_arrival", 8)}
    support = {"name": "support", "weight": 1.0,
               "train": _chats(tmp_path / "b.jsonl", "What is the return window for order", "It is 45 days", 40),
               "validation": _chats(tmp_path / "bv.jsonl", "Return window for item", "It is 45 days", 8)}
    recipe = recipe_from_dict({
        "name": "multi", "model": str(tiny_model_dir), "method": "lora", "output_dir": str(tmp_path),
        "data": {"mixture": [intents, support], "sampling": "weighted"},
        "lora": {"r": 4, "alpha": 8}, "tracking": {"backend": "none"},
        "train": {"epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "max_seq_len": 64, "packing": False,
                  "eval_every": 5, "save_every": 1000,
                  "early_stopping": {"patience": 50, "metric": "validation_loss/support"}},
    })
    run_dir = run_training(recipe)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evaluated = [m for m in metrics if "validation_loss/intents" in m]
    assert evaluated and all("validation_loss/support" in m for m in evaluated)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task_token_share"]["intents"] == pytest.approx(0.75 * 1.0, abs=0.08)  # rows are 3:1
    assert set(summary["task_validation_loss"]) == {"intents", "support"}
    assert len(evaluated) >= 3
    assert evaluated[-1]["validation_loss/support"] < evaluated[0]["validation_loss/support"]
