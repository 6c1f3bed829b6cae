"""Preference and RL methods on the tiny model: each trains, writes its run directory, and its own
metric moves the right way on a learnable synthetic set (chosen answers are short and start with
"Sure", rejected ones ramble)."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from fixtures_train.preference import make_recipe, pref_data  # noqa: F401  (pref_data: a fixture)
from tuneloop.errors import UserError
from tuneloop.paths import read_jsonl
from tuneloop.train import run_training


def first_and_last(run_dir):
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return rows[0], rows[-1], json.loads((run_dir / "summary.json").read_text())


def test_dpo_raises_the_held_out_margin_and_writes_the_run_dir(tmp_path, tiny_model_dir, pref_data):
    run_dir = run_training(make_recipe(tmp_path, tiny_model_dir, pref_data, "dpo"))
    for name in ("recipe.resolved.yaml", "metrics.jsonl", "summary.json", "tuneloop_base.json",
                 "adapter/adapter_config.json"):
        assert (run_dir / name).is_file(), name
    before, after, summary = first_and_last(run_dir)
    assert before["step"] == 0 and before["validation_reward_margin"] == pytest.approx(0, abs=1e-4)
    assert after["validation_reward_margin"] > 0.3 and after["validation_reward_accuracy"] == 1.0
    assert after["validation_logp_rejected"] < before["validation_logp_rejected"]
    assert after["validation_kl"] > 0 and after["tokens_per_s"] > 0
    assert summary["validation_reward_margin"] == after["validation_reward_margin"]
    assert summary["before"]["validation_reward_margin"] == before["validation_reward_margin"]
    # the run directory is a model reference like any other
    from tuneloop.models.loading import resolve_model

    assert resolve_model(run_dir).adapter == run_dir / "adapter"


def test_dpo_full_fine_tuning_writes_model_dir(tmp_path, tiny_model_dir, pref_data):
    recipe = make_recipe(tmp_path, tiny_model_dir, pref_data, "dpo", finetuning="full",
                         train={"max_steps": 3, "learning_rate": 1e-3})
    run_dir = run_training(recipe)
    before, after, _ = first_and_last(run_dir)
    assert (run_dir / "model" / "config.json").is_file() and not (run_dir / "adapter").exists()
    assert after["validation_reward_margin"] > before["validation_reward_margin"]


@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_orpo_and_kto_separate_chosen_from_rejected(tmp_path, tiny_model_dir, pref_data, method):
    run_dir = run_training(make_recipe(tmp_path, tiny_model_dir, pref_data, method))
    before, after, _ = first_and_last(run_dir)
    assert after["validation_reward_margin"] > before["validation_reward_margin"] + 0.1
    assert after["validation_loss"] < before["validation_loss"]


def test_reward_model_ranks_held_out_pairs(tmp_path, tiny_model_dir, pref_data):
    run_dir = run_training(make_recipe(tmp_path, tiny_model_dir, pref_data, "reward",
                                       train={"max_steps": 10}))
    before, after, summary = first_and_last(run_dir)
    assert after["validation_reward_accuracy"] >= 0.85
    assert after["validation_loss"] < before["validation_loss"]
    assert summary["method"] == "reward" and (run_dir / "adapter" / "adapter_config.json").is_file()
    # the run is a reward source for GRPO: the saved adapter and score head load back
    grpo = make_recipe(tmp_path, tiny_model_dir, pref_data, "grpo",
                       train={"max_steps": 1}, grpo={"reward_model": str(run_dir), "num_generations": 2,
                                                     "max_completion_length": 4})
    rows = read_jsonl(run_training(grpo) / "metrics.jsonl")
    assert math.isfinite(rows[-1]["reward_mean"]) and "validation_reward_mean" in rows[0]


def rollout_rows(rows, passes):
    """The metrics rows of the steps that sampled a new batch (each batch is optimised ``passes`` times)."""
    return [r for r in rows if "reward_mean" in r and (r["step"] - 1) % passes == 0]


def test_grpo_with_two_passes_per_batch_clips_and_raises_the_mean_reward(tmp_path, tiny_model_dir, pref_data):
    recipe = make_recipe(tmp_path, tiny_model_dir, pref_data, "grpo", finetuning="full",
                         train={"max_steps": 12, "learning_rate": 1e-2, "lr_scheduler": "constant", "eval_every": 6},
                         grpo={"reward_function": "tuneloop.train.preference.rewards:short",
                               "num_generations": 4, "max_completion_length": 8, "temperature": 0.1,
                               "beta": 0.04, "num_iterations": 2})
    rows = read_jsonl(run_training(recipe) / "metrics.jsonl")
    trained = [r for r in rows if "reward_mean" in r]
    sampled = rollout_rows(rows, 2)
    assert len(trained) == 12 and len(sampled) == 6
    rewards = [r["reward_mean"] for r in sampled]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.15, rewards
    # First pass: the policy that sampled, ratio 1, nothing clipped; the second pass's ratio moved.
    assert all(r["clip_fraction"] == 0.0 for r in sampled)
    assert max(r["clip_fraction"] for r in trained if r not in sampled) > 0.1
    held_out_kl = [r["validation_kl"] for r in rows if "validation_kl" in r]
    assert len(held_out_kl) == 3 and held_out_kl[0] == 0.0 and max(held_out_kl) < 0.5


def test_ppo_raises_the_mean_reward_clips_later_passes_keeps_kl_bounded_and_saves_no_value_head(
        tmp_path, tiny_model_dir, pref_data):
    """PPO on the tiny model with a learnable reward (shorter answers score higher): the rollouts'
    mean reward rises, later passes over a batch clip, the held-out KL stays bounded, and the saved
    model has no value head. Eight prompts per rollout: with four, one sample per prompt is too noisy
    for a rise in a test-sized run."""
    recipe = make_recipe(tmp_path, tiny_model_dir, pref_data, "ppo", finetuning="full",
                         train={"max_steps": 12, "learning_rate": 1e-2, "lr_scheduler": "constant", "eval_every": 6,
                                "batch_size": 8},
                         ppo={"reward_function": "tuneloop.train.preference.rewards:short",
                              "max_completion_length": 8, "temperature": 0.1, "kl_coef": 0.05, "num_ppo_epochs": 2})
    run_dir = run_training(recipe)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    sampled = rollout_rows(rows, 2)
    assert len(sampled) == 6
    rewards = [r["reward_mean"] for r in sampled]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.1, rewards
    trained = [r for r in rows if "reward_mean" in r]
    assert all(math.isfinite(r["value_loss"]) for r in trained) and sampled[0]["kl"] == 0.0
    assert all(r["clip_fraction"] == 0.0 for r in sampled)
    assert max(r["clip_fraction"] for r in trained if r not in sampled) > 0.0
    held_out_kl = [r["validation_kl"] for r in rows if "validation_kl" in r]
    assert held_out_kl[0] == 0.0 and max(held_out_kl) < 0.5
    # The value head only serves training: the saved model is a plain language model.
    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    assert saved and not any("value_head" in name for name in saved)


def test_resume_continues_exactly(tmp_path, tiny_model_dir, pref_data):
    recipe = make_recipe(tmp_path, tiny_model_dir, pref_data, "dpo", train={"max_steps": 4, "save_every": 2})
    run_dir = run_training(recipe)
    straight = read_jsonl(run_dir / "metrics.jsonl")
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-2"]
    run_training(recipe, resume=True)  # as if killed after the step-2 checkpoint: redo steps 3-4
    resumed = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in resumed[1:]] == pytest.approx([r["loss"] for r in straight[1:]], rel=1e-5)


def test_grpo_reward_errors_name_the_recipe_key(tmp_path, tiny_model_dir, pref_data):
    with pytest.raises(UserError, match="grpo.reward_function"):
        make_recipe(tmp_path, tiny_model_dir, pref_data, "grpo")
    recipe = make_recipe(tmp_path, tiny_model_dir, pref_data, "grpo",
                         grpo={"reward_function": str(tmp_path / "missing.py") + ":f"})
    with pytest.raises(UserError, match="grpo.reward_function.*reward file not found"):
        run_training(recipe)
    assert not recipe.run_dir().exists()  # nothing half-written


def test_cli_bad_pair_exits_1_with_file_line_and_writes_nothing(tmp_path, tiny_model_dir, pref_data, capsys):
    from tuneloop.cli.main import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}) + "\n"
                   + json.dumps({"prompt": "Q", "chosen": "A"}) + "\n")
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\nmethod: dpo\noutput_dir: {tmp_path / 'runs'}\n"
                      f"data: {{train: {bad}}}\ntracking: {{backend: none}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(recipe)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert f"{bad}:2: rejected: missing" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit):  # --dry-run reads the same data through the same checks
        main(["train", str(recipe), "--dry-run"])
    assert f"{bad}:2: rejected" in capsys.readouterr().err
