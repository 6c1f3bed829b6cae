"""`tuneloop recipe schema` and `tuneloop recipe import`: configs as Axolotl, LLaMA-Factory and TRL
users write them become valid recipes, with every key that could not be mapped named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tuneloop.cli.recipe import recipe
from tuneloop.config.recipe import load_recipe, recipe_from_dict

AXOLOTL = """\
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
datasets:
  - path: data/support.jsonl
    type: chat_template
adapter: lora
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
sequence_len: 512
sample_packing: true
micro_batch_size: 4
gradient_accumulation_steps: 2
num_epochs: 2
learning_rate: 0.0002
lr_scheduler: cosine
warmup_ratio: 0.1
neftune_noise_alpha: 5
optimizer: adamw_torch
bf16: auto
output_dir: ./outputs/lora-out
wandb_project: support
"""

LLAMA_FACTORY = """\
model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
stage: dpo
do_train: true
finetuning_type: lora
lora_rank: 16
lora_target: all
pref_beta: 0.2
dataset: dpo_en_demo
template: qwen
cutoff_len: 1024
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
learning_rate: 5.0e-6
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
neftune_alpha: 5
bf16: true
report_to: tensorboard
output_dir: saves/qwen/lora/dpo
"""

TRL = """\
model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct
dataset_name: trl-lib/Capybara
learning_rate: 2.0e-4
num_train_epochs: 1
packing: true
per_device_train_batch_size: 8
gradient_accumulation_steps: 1
gradient_checkpointing: true
eval_strategy: steps
eval_steps: 100
use_peft: true
lora_r: 32
lora_alpha: 16
lora_target_modules: [q_proj, v_proj]
max_length: 2048
lr_scheduler_type: cosine_with_min_lr
output_dir: SmolLM2-SFT
report_to: [wandb, trackio]
"""


def imported(tmp_path, text: str, name: str):
    config = tmp_path / name
    config.write_text(text)
    out = tmp_path / f"{name}.recipe.yaml"
    result = CliRunner().invoke(recipe, ["import", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return load_recipe(out), result.output


def test_axolotl_config(tmp_path):
    r, notes = imported(tmp_path, AXOLOTL, "axolotl.yaml")
    assert (r.model, r.method, r.data.train) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "lora", "data/support.jsonl")
    assert (r.lora.r, r.lora.alpha, r.lora.target_modules) == (8, 16, "all-linear")
    assert (r.train.max_seq_len, r.train.batch_size, r.train.gradient_accumulation, r.train.epochs) == (512, 4, 2, 2)
    assert r.train.precision == "bf16" and r.train.lr_scheduler == "cosine"
    assert r.train.neftune_alpha == 5.0
    assert "axolotl: mapped 18 of 20 keys" in notes
    assert "not mapped: optimizer" in notes and "not mapped: wandb_project" in notes


def test_llama_factory_config(tmp_path):
    r, notes = imported(tmp_path, LLAMA_FACTORY, "llamafactory.yaml")
    assert (r.model, r.method, r.finetuning, r.preference.beta) == ("Qwen/Qwen2.5-0.5B-Instruct", "dpo", "lora", 0.2)
    assert (r.chat_template, r.train.max_seq_len, r.tracking.backend) == ("chatml", 1024, "tensorboard")
    assert r.data.train == "dpo_en_demo" and r.train.neftune_alpha == 5.0
    assert "not mapped: do_train" in notes


def test_trl_config(tmp_path):
    r, notes = imported(tmp_path, TRL, "trl.yaml")
    assert (r.method, r.lora.r, r.lora.target_modules, r.train.max_seq_len) == ("lora", 32, ["q_proj", "v_proj"], 2048)
    assert r.train.gradient_checkpointing and r.train.eval_every == 100 and r.tracking.backend == "wandb"
    assert "not mapped: lr_scheduler_type: scheduler 'cosine_with_min_lr' has no tuneloop equivalent" in notes
    assert "not mapped: eval_strategy" in notes


def test_unknown_config_is_a_clear_error(tmp_path):
    from tuneloop.errors import UserError

    config = tmp_path / "other.yaml"
    config.write_text("foo: 1\n")
    result = CliRunner().invoke(recipe, ["import", str(config)])
    assert isinstance(result.exception, UserError) and "not an Axolotl, LLaMA-Factory or TRL" in str(result.exception)


def test_schema_validates_shipped_recipes_and_catches_a_typo(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    result = CliRunner().invoke(recipe, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    shipped = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert shipped
    for path in shipped:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = {"model": "x", "data": {"train": "t.jsonl"}, "train": {"learning_rat": 1e-4}}
    with pytest.raises(jsonschema.ValidationError, match="learning_rat"):
        jsonschema.validate(bad, schema)
    recipe_from_dict({"model": "x", "data": {"train": "t.jsonl"}})  # what the schema accepts, loads
