"""``distributed.strategy: deepspeed``: DeepSpeed ZeRO under tuneloop's own loop.

The config tuneloop hands DeepSpeed (from ``distributed:`` or a user's JSON file, exact values), the
refusals, and ``accelerate launch --use_deepspeed``'s flags; then, with two CPU processes (DeepSpeed's
CPU accelerator, gloo): ZeRO-2, ZeRO-3 and ZeRO-3 with optimizer and weights offloaded SFT match one
process step by step and in the final adapter, a ZeRO-3 run killed after a DeepSpeed checkpoint
resumes exactly, DeepSpeed's own ``zero_to_fp32.py`` consolidates that checkpoint, and
``accelerate launch --use_deepspeed --zero_stage 3 --num_processes 2`` trains. The slow tests skip where deepspeed is not installed;
all but the ZeRO-3 comparison are in the long tier (``make test-long``), to keep ``make test`` short.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from fixtures_train.helpers import KILLED_RUN, tiny_recipe
from tuneloop.config.recipe import DistributedConfig, TrainConfig, recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.paths import read_jsonl
from tuneloop.train import run_training, shell, zero
from tuneloop.train.checkpoint import step_checkpoints
from tuneloop.train.distributed import DistInfo, init_distributed

NEEDS_DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (pip install 'tuneloop[deepspeed]')")
ENV = dict(os.environ, OMP_NUM_THREADS="1", TUNELOOP_NUM_THREADS="1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TRAIN = TrainConfig(batch_size=2, gradient_accumulation=3, max_grad_norm=1.0)


# ---------------------------------------------------------------------------------------------
# The DeepSpeed config (no deepspeed needed)


def test_recipe_keys_become_a_deepspeed_config():
    config = zero.recipe_config(DistributedConfig(strategy="deepspeed", zero_stage=3, offload_optimizer=True,
                                                  offload_params=True), TRAIN, world_size=4)
    # DeepSpeed sees the whole per-process step (2 x 3 examples) as one micro batch: tuneloop accumulates.
    assert config == {
        "train_batch_size": 24, "train_micro_batch_size_per_gpu": 6, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                              "offload_param": {"device": "cpu", "pin_memory": True}},
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10**9}
    assert zero.recipe_config(DistributedConfig(strategy="deepspeed"), TrainConfig(max_grad_norm=None),
                              1)["zero_optimization"] == {"stage": 2}


def test_a_users_file_is_used_as_is_with_auto_filled_from_train(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 2,
                                "gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"},
                                "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto",
                                                      "stage3_gather_16bit_weights_on_model_save": True}}))
    assert zero.file_config(str(path), TRAIN, world_size=4) == {
        "train_batch_size": 24, "train_micro_batch_size_per_gpu": 6, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0, "bf16": {},
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
        "steps_per_print": 10**9}
    assert zero.stage_of(DistributedConfig(strategy="deepspeed", deepspeed_config=str(path))) == 3


@pytest.mark.parametrize(("content", "message"), [
    ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps is 4, the recipe's train: section makes it 3"),
    ({"optimizer": {"type": "AdamW"}}, "a 'optimizer' section"),
    ([1, 2], "must hold a JSON object"),
])
def test_a_users_file_that_disagrees_with_the_recipe_is_refused(tmp_path, content, message):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UserError, match=message):
        zero.file_config(str(path), TRAIN, world_size=4)


def test_deepspeed_keys_are_checked_with_a_hint():
    with pytest.raises(ValueError, match="DeepSpeed settings: set strategy: deepspeed"):
        DistributedConfig(strategy="fsdp", zero_stage=3)
    with pytest.raises(ValueError, match="offload_params needs zero_stage: 3"):
        DistributedConfig(strategy="deepspeed", offload_params=True)
    with pytest.raises(ValueError, match="deepspeed_config is used as is"):
        DistributedConfig(strategy="deepspeed", zero_stage=2, deepspeed_config="ds.json")


def test_deepspeed_refuses_what_it_cannot_run_before_the_model_loads(tiny_model_dir, tmp_path):
    deepspeed = DistInfo(world_size=2, strategy="deepspeed", zero_stage=2)
    with pytest.raises(UserError, match="strategy deepspeed: method qlora keeps 4-bit weights"):
        shell.check_strategy(recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, method="qlora")), deepspeed)
    raw = tiny_recipe(tiny_model_dir, tmp_path, method="grpo")
    raw["grpo"] = {"reward_function": "tuneloop.train.preference.rewards:short"}
    with pytest.raises(UserError, match="method grpo samples answers during training; not supported under deepspeed"):
        shell.check_strategy(recipe_from_dict(raw), deepspeed)


def test_a_missing_deepspeed_is_a_clear_message(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed now raises ImportError
    with pytest.raises(UserError, match="strategy: deepspeed needs the deepspeed package") as caught:
        init_distributed(DistributedConfig(strategy="deepspeed"))
    assert "pip install 'tuneloop[deepspeed]'" in str(caught.value.hint)


def test_accelerate_launch_use_deepspeed_flags_fill_the_recipe():
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
           "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none"}
    filled = zero.from_accelerate(DistributedConfig(), env)
    assert (filled.strategy, filled.zero_stage, filled.offload_optimizer) == ("deepspeed", 3, False)
    unchanged = DistributedConfig(strategy="fsdp")
    assert zero.from_accelerate(unchanged, {}) is unchanged
    with pytest.raises(UserError, match="--use_deepspeed, but the recipe says distributed.strategy: fsdp"):
        zero.from_accelerate(unchanged, env)
    with pytest.raises(UserError, match="accelerate launch says zero_stage 3, the recipe says distributed.zero_stage"):
        zero.from_accelerate(DistributedConfig(strategy="deepspeed", zero_stage=2), env)


# ---------------------------------------------------------------------------------------------
# Two processes on DeepSpeed's CPU accelerator


def _recipe_file(tiny_model_dir, tmp_path, name, distributed, **train) -> str:
    raw = tiny_recipe(tiny_model_dir, tmp_path, name=name, precision="fp32", **train)
    raw["distributed"] = distributed
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _adapter(run_dir) -> dict:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
@NEEDS_DEEPSPEED
@pytest.mark.parametrize("case", [pytest.param("zero2-file", marks=pytest.mark.long, id="zero2-from-a-json-file"),
                                  pytest.param("zero3", id="zero3-from-the-recipe"),
                                  pytest.param("zero3-offload", marks=pytest.mark.long, id="zero3-offload")])
def test_two_processes_under_zero_match_one_process(tiny_model_dir, tmp_path, case):
    # As test_train_distributed: 4 examples in one micro-batch vs 1 per micro-batch x 2 accumulated x 2 processes.
    single = run_training(recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, name="one", batch_size=4,
                                                       max_steps=3, precision="fp32")))
    if case == "zero2-file":  # a user's DeepSpeed file, "auto" where tuneloop's train: decides
        (tmp_path / "ds.json").write_text(json.dumps({"train_batch_size": "auto", "gradient_clipping": "auto",
                                                      "zero_optimization": {"stage": 2}}))
        distributed = {"strategy": "deepspeed", "deepspeed_config": str(tmp_path / "ds.json")}
    else:  # ZeRO-Offload runs on the CPU accelerator too (saving nothing there): the path is exercised
        offload = case == "zero3-offload"
        distributed = {"strategy": "deepspeed", "zero_stage": 3, "offload_optimizer": offload,
                       "offload_params": offload}
    recipe = _recipe_file(tiny_model_dir, tmp_path, "two", distributed, batch_size=1, gradient_accumulation=2,
                          max_steps=3)
    result = subprocess.run(TORCHRUN + ["-m", "tuneloop.cli.main", "train", recipe],
                            capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = read_jsonl(single / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3]  # only rank 0 wrote
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-4)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], abs=1e-4)
    expected, got = _adapter(single), _adapter(tmp_path / "two")  # ZeRO-3: gathered from the partitions
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] - got[name]).abs().max() < 1e-4, name


@pytest.mark.slow
@pytest.mark.long  # ~7 min here: three 2-process runs, sample generations gathering ZeRO-3 weights per token
@NEEDS_DEEPSPEED
def test_zero3_killed_after_a_deepspeed_checkpoint_resumes_exactly(tiny_model_dir, tmp_path):
    # Dropout, accumulation and a validation set, as the fsdp resume test; killed evaluating step 3.
    def recipe(name):
        raw = tiny_recipe(tiny_model_dir, tmp_path, name=name, precision="fp32", batch_size=1,
                          gradient_accumulation=2, max_steps=4, save_every=2, eval_every=3, validation=True)
        raw["lora"]["dropout"] = 0.1
        raw["distributed"] = {"strategy": "deepspeed", "zero_stage": 3}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        (tmp_path / f"{name}.json").write_text(json.dumps(raw))
        return str(tmp_path / f"{name}.yaml")

    result = subprocess.run(TORCHRUN + ["-m", "tuneloop.cli.main", "train", recipe("straight")],
                            capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    killed = recipe("killed")
    (tmp_path / "killed.py").write_text(KILLED_RUN)
    result = subprocess.run(TORCHRUN + [str(tmp_path / "killed.py"), str(tmp_path / "killed.json"), "3"],
                            capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode != 0
    run_dir = tmp_path / "killed"
    [checkpoint] = step_checkpoints(run_dir / "checkpoints")
    assert checkpoint.name == "step-2" and not (run_dir / "adapter").exists()
    partitions = {p.name for p in (checkpoint / "deepspeed").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= partitions

    # DeepSpeed's own consolidation of the partitions: the trainable weights, named inside tuneloop's
    # wrapper (inner.model. + the PEFT name).
    out = tmp_path / "consolidated"
    result = subprocess.run([sys.executable, str(checkpoint / "zero_to_fp32.py"), str(checkpoint), str(out),
                             "--tag", "deepspeed", "--safe_serialization"], capture_output=True, text=True,
                            timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    consolidated = load_file(str(out / "model.safetensors"))
    assert len(consolidated) == 28 and all(k.startswith("inner.model.base_model.") for k in consolidated)

    result = subprocess.run(TORCHRUN + ["-m", "tuneloop.cli.main", "train", killed, "--resume"],
                            capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    rows, expected = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in expected], abs=1e-6)
    assert rows[-1]["validation_loss"] == pytest.approx(expected[-1]["validation_loss"], abs=1e-6)
    a, b = _adapter(tmp_path / "straight"), _adapter(run_dir)
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-6, name
    # The consolidated final adapter is an ordinary PEFT one.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "adapter")


@pytest.mark.slow
@pytest.mark.long
@NEEDS_DEEPSPEED
def test_accelerate_launch_use_deepspeed_trains_on_two_cpu_processes(tiny_model_dir, tmp_path):
    """accelerate's DeepSpeed launcher starts the processes through torchrun on one machine, also on
    a CPU one; its --zero_stage reaches the recipe (which names no stage)."""
    recipe = _recipe_file(tiny_model_dir, tmp_path, "accel", {"strategy": "deepspeed"}, batch_size=1, max_steps=2)
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--zero_stage", "3",
         "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "tuneloop.cli.main", "train", recipe],
        capture_output=True, text=True, timeout=600, env=dict(ENV, HF_HOME=str(tmp_path / "hf")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "accel" / "summary.json").read_text())["world_size"] == 2
    resolved = yaml.safe_load((tmp_path / "accel" / "recipe.resolved.yaml").read_text())
    assert resolved["distributed"]["zero_stage"] == 3
