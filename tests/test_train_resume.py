"""A run killed with SIGKILL mid-training and resumed ends exactly where an uninterrupted run ends;
--resume refuses a checkpoint from a different recipe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from fixtures_train.helpers import tiny_recipe
from tuneloop.config.recipe import recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.train import run_training
from tuneloop.train.checkpoint import step_checkpoints

# Dropout on, several epochs, accumulation: the RNG, data position and optimizer state all matter.
SETTINGS = dict(batch_size=1, gradient_accumulation=2, max_steps=14, save_every=2, warmup_ratio=0.1)


def _recipe(model_dir, out_dir, name):
    raw = tiny_recipe(model_dir, out_dir, name=name, **SETTINGS)
    raw["lora"]["dropout"] = 0.1
    return raw


def _train_cli(recipe_path, *args):
    return subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", "train", str(recipe_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _adapter(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow  # a run in its own process, killed and resumed
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    reference = run_training(recipe_from_dict(_recipe(tiny_model_dir, tmp_path, "straight")))

    recipe_path = tmp_path / "killed.yaml"
    recipe_path.write_text(yaml.safe_dump(_recipe(tiny_model_dir, tmp_path, "killed")))
    checkpoints = tmp_path / "killed" / "checkpoints"
    process = _train_cli(recipe_path)
    deadline = time.time() + 120
    while not step_checkpoints(checkpoints) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "adapter").exists()
    killed_at = int(step_checkpoints(checkpoints)[-1].name.split("-")[1])
    assert killed_at < SETTINGS["max_steps"]

    resumed = _train_cli(recipe_path, "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    expected, got = _adapter(reference), _adapter(tmp_path / "killed")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-6, rtol=0), name
    steps = [r["step"] for r in map(yaml.safe_load, (tmp_path / "killed" / "metrics.jsonl").open())]
    assert steps == list(range(1, SETTINGS["max_steps"] + 1))  # no step logged twice after the resume


def test_resume_refuses_a_different_recipe(tiny_model_dir, tmp_path):
    raw = _recipe(tiny_model_dir, tmp_path, "changed")
    raw["train"]["max_steps"] = 2
    run_training(recipe_from_dict(raw))  # no step checkpoint at the last step: nothing to resume
    with pytest.raises(UserError, match="no checkpoint"):
        run_training(recipe_from_dict(raw), resume=True)
    raw["train"]["max_steps"] = 4
    run_training(recipe_from_dict(raw))
    raw["train"]["learning_rate"] = 0.5
    with pytest.raises(UserError, match="different recipe"):
        run_training(recipe_from_dict(raw), resume=True)
    raw["train"]["learning_rate"] = SETTINGS.get("learning_rate", 3e-3)
    raw["model"] = str(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(UserError, match="trained from model"):
        run_training(recipe_from_dict(raw), resume=True)
