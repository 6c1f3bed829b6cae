"""Every preference method runs in the same shell as SFT: it resumes exactly after a SIGKILL, honours
``train.early_stopping`` and ``on_evaluate``, writes the same base-model record, and trains
data-parallel under ``torchrun`` (two gloo processes match one process)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fixtures_train.helpers import KILLED_RUN, tiny_recipe
from fixtures_train.preference import make_recipe, pref_data  # noqa: F401  (pref_data: a fixture)
from tuneloop.config.recipe import recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.paths import read_jsonl
from tuneloop.train import run_training
from tuneloop.train.checkpoint import step_checkpoints

GRPO = {"reward_function": "tuneloop.train.preference.rewards:short", "num_generations": 2,
        "max_completion_length": 4, "temperature": 1.0}
KILL_AT = 5  # killed while evaluating step 5: steps 1-4 logged, checkpoints step-2 and step-4 on disk
STEPS = 6
# KILLED_RUN runs as its own process, so SIGKILL takes the whole run down mid-step.


def _resume_recipe(tmp_path, model, data, method, name):
    # Dropout on and accumulation: the RNG state, data position and optimizer state all matter.
    return make_recipe(tmp_path, model, data, method, name=name, lora={"dropout": 0.1},
                       grpo=GRPO if method == "grpo" else {},
                       train={"max_steps": STEPS, "batch_size": 2, "gradient_accumulation": 2,
                              "eval_every": KILL_AT, "save_every": 2, "warmup_ratio": 0.2})


def _weights(run_dir) -> dict:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "orpo", "kto", "reward", "grpo"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir, pref_data, method):
    straight = run_training(_resume_recipe(tmp_path, tiny_model_dir, pref_data, method, "straight"))

    recipe = _resume_recipe(tmp_path, tiny_model_dir, pref_data, method, "killed")
    recipe_file = tmp_path / "killed.json"
    recipe_file.write_text(json.dumps(recipe.model_dump(mode="json")))
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(recipe_file), str(KILL_AT)],
                            capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = recipe.run_dir()
    assert not (run_dir / "adapter").exists()
    assert [p.name for p in step_checkpoints(run_dir / "checkpoints")][-1] == "step-4"

    run_training(recipe, resume=True)
    expected, got = _weights(straight), _weights(run_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-6, rtol=0), name
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(0, STEPS + 1))  # no step logged twice after the resume
    losses = [r["loss"] for r in read_jsonl(straight / "metrics.jsonl")[1:]]
    assert [r["loss"] for r in rows[1:]] == pytest.approx(losses, rel=1e-5)


@pytest.mark.parametrize("method, metric", [("dpo", "validation_loss"), ("grpo", "validation_reward_mean")])
def test_early_stopping_stops_and_keeps_the_best_weights(tmp_path, tiny_model_dir, pref_data, method, metric):
    # min_delta this large: no evaluation after the first counts as an improvement.
    recipe = make_recipe(tmp_path, tiny_model_dir, pref_data, method, grpo=GRPO if method == "grpo" else {},
                         train={"max_steps": 20, "eval_every": 1, "early_stopping":
                                {"patience": 2, "metric": metric, "min_delta": 1000.0}})
    run_dir = run_training(recipe)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["best_step"] == 1
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1, 2, 3]
    best = load_file(str(run_dir / "checkpoints" / "best" / "trainable.safetensors"))
    best = {name.replace(".default", ""): value for name, value in best.items()}  # PEFT's saved names
    final = _weights(run_dir)
    lora_b = [name for name in final if "lora_B" in name]
    assert lora_b and all(best[name].abs().sum() > 0 for name in lora_b)  # step 1 trained
    for name in lora_b:  # the saved adapter is step 1's, not step 3's
        assert torch.equal(final[name], best[name]), name


def test_early_stopping_on_a_metric_the_method_lacks_names_the_ones_it_has(tmp_path, tiny_model_dir, pref_data):
    recipe = make_recipe(tmp_path, tiny_model_dir, pref_data, "grpo", grpo=GRPO,
                         train={"max_steps": 2, "eval_every": 1, "early_stopping": {"patience": 1}})
    with pytest.raises(UserError, match=r"(?s)reports no 'validation_loss'.*validation_reward_mean"):
        run_training(recipe)


@pytest.mark.parametrize("method", ["lora", "dpo"])
def test_on_evaluate_sees_held_out_metrics_and_can_stop_the_run(tmp_path, tiny_model_dir, pref_data, method):
    if method == "dpo":
        recipe = make_recipe(tmp_path, tiny_model_dir, pref_data, "dpo", train={"max_steps": 10, "eval_every": 2})
    else:
        recipe = recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, validation=True, max_steps=10,
                                              eval_every=2, batch_size=2))
    calls = []

    def prune(step, metrics):
        calls.append((step, metrics))
        return step >= 4

    run_dir = run_training(recipe, on_evaluate=prune)
    assert [step for step, _ in calls] == [2, 4]
    assert all("validation_loss" in metrics for _, metrics in calls)
    if method == "dpo":
        assert "validation_reward_accuracy" in calls[0][1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and (run_dir / "adapter" / "adapter_config.json").is_file()
    # One base-model record, the same keys whatever the method.
    base = json.loads((run_dir / "tuneloop_base.json").read_text())
    assert base == {"base_model": str(tiny_model_dir.resolve()), "method": method, "finetuning": "lora"}


NEEDS_DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (pip install 'tuneloop[deepspeed]')")


@pytest.mark.slow
@pytest.mark.parametrize("distributed", [
    {"strategy": "ddp"}, {"strategy": "fsdp"},
    pytest.param({"strategy": "deepspeed", "zero_stage": 3}, marks=[NEEDS_DEEPSPEED, pytest.mark.long],
                 id="deepspeed-zero3")])
def test_dpo_two_gloo_processes_match_one_process(tmp_path, tiny_model_dir, pref_data, distributed):
    # One process with micro-batches of 4 pairs = two processes with 1 pair per micro-batch,
    # accumulated twice (fp32: see test_train_distributed for why bf16 rounding would differ with the
    # split). DDP (DistributedDataParallel), FSDP2 (fully_shard) or DeepSpeed ZeRO-3 (weights
    # partitioned, the reference pass too), through the one training shell.
    single = run_training(make_recipe(tmp_path, tiny_model_dir, pref_data, "dpo", name="one",
                                      train={"max_steps": 3, "batch_size": 4, "precision": "fp32"}))
    raw = make_recipe(tmp_path, tiny_model_dir, pref_data, "dpo", name="two", distributed=distributed,
                      train={"max_steps": 3, "batch_size": 1, "gradient_accumulation": 2,
                             "precision": "fp32"}).model_dump(mode="json")
    recipe_path = tmp_path / "two.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tuneloop.cli.main", "train", str(recipe_path)],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", TUNELOOP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = read_jsonl(single / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in two] == [0, 1, 2, 3]  # only rank 0 wrote
    for a, b in zip(one, two):
        for key in ("loss", "validation_loss", "validation_reward_margin", "validation_kl"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-4, (key, a, b)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    expected, got = _weights(single), _weights(tmp_path / "two")  # fsdp, ZeRO-3: gathered from the shards
    for name in expected:
        assert (expected[name] - got[name]).abs().max() < 1e-4, name


def test_recipe_hash_does_not_depend_on_where_the_recipe_came_from(tmp_path, tiny_model_dir, pref_data):
    """A recipe built in memory and the same recipe read back from its JSON can continue each
    other's checkpoints (a default such as epochs: 3 used to stay an int, 3.0 once read back)."""
    from tuneloop.train.checkpoint import recipe_hash

    recipe = make_recipe(tmp_path, tiny_model_dir, pref_data, "dpo")
    again = recipe_from_dict(json.loads(json.dumps(recipe.model_dump(mode="json"))))
    assert recipe_hash(recipe) == recipe_hash(again)
