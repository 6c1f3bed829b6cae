"""`tuneloop train` at the command line: recipe errors, --dry-run, --out, and every shipped recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli_support import run_cli
from fixtures_train.helpers import tiny_recipe
from tuneloop.config.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_mistyped_key_exits_1_with_did_you_mean(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("data: {train: t.jsonl}\ntrain:\n  learning_rat: 1.0e-4\n")
    code, _, err = run_cli(["train", str(path)], capsys)
    assert code == 1
    assert "train.learning_rat" in err and "did you mean 'learning_rate'" in err
    assert "Traceback" not in err


def test_dry_run_previews_tokens_lengths_and_steps(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, tmp_path, epochs=2)))
    code, out, err = run_cli(["train", str(path), "--dry-run", "--set", "train.batch_size=2"], capsys)
    assert code == 0, err
    assert "[[" in out and "]]" in out  # trained tokens marked (no colour when not a terminal)
    assert "<|im_end|>]]" in out.replace("\n", "")  # the EOS is trained
    assert "length histogram" in out and "48 read, 48 kept" in out
    assert "steps: " in out and "memory" in out
    assert not (tmp_path / "t").exists()  # nothing trained, nothing written


def test_out_sets_the_run_directory(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, tmp_path, max_steps=1)))
    code, out, err = run_cli(["train", str(path), "--out", str(tmp_path / "elsewhere" / "mine")], capsys)
    assert code == 0, err
    assert (tmp_path / "elsewhere" / "mine" / "adapter" / "adapter_config.json").is_file()
    assert "run directory:" in out


def test_unknown_target_module_names_the_field(tiny_model_dir, tmp_path, capsys):
    raw = tiny_recipe(tiny_model_dir, tmp_path, max_steps=1)
    raw["lora"]["target_modules"] = ["q_prj"]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, _, err = run_cli(["train", str(path)], capsys)
    assert code == 1 and "lora.target_modules" in err and "did you mean 'q_proj'" in err


@pytest.mark.parametrize("recipe_path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_loads(recipe_path):
    recipe = load_recipe(recipe_path)
    assert recipe.name and (recipe.data.train or getattr(recipe.data, "mixture", None))


def test_sft_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    assert {"sft-lora.yaml", "sft-full.yaml", "sft-dora.yaml", "sft-qlora.yaml", "sft-banking77.yaml"} <= names
