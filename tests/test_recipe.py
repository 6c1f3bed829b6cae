"""Recipe validation: typed, unknown keys rejected with a did-you-mean hint and the key path."""

from __future__ import annotations

import pytest

from tuneloop.config.recipe import load_recipe, recipe_from_dict
from tuneloop.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_mistyped_key_names_path_and_suggestion(tmp_path):
    path = write(tmp_path, "data: {train: t.jsonl}\ntrain:\n  learning_rat: 0.001\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    text = str(err.value)
    assert "train.learning_rat" in text and "did you mean 'learning_rate'" in text and str(path) in text


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(UserError, match="zzz: unknown key .valid keys: name, model"):
        recipe_from_dict({"data": {"train": "t.jsonl"}, "zzz": 1})


def test_wrong_type_and_missing_train_are_reported():
    with pytest.raises(UserError, match="train.batch_size"):
        recipe_from_dict({"data": {"train": "t.jsonl"}, "train": {"batch_size": "eight"}})
    with pytest.raises(UserError, match="data.train is required"):
        recipe_from_dict({"data": {}})


def test_overrides_and_relative_data_paths(tmp_path):
    (tmp_path / "t.jsonl").write_text("{}\n")
    path = write(tmp_path, "method: lora\ndata: {train: t.jsonl}\n")
    recipe = load_recipe(path, ["train.epochs=1", "lora.r=4", "method=full"])
    assert (recipe.train.epochs, recipe.lora.r, recipe.method) == (1, 4, "full")
    assert recipe.data.train == str(tmp_path / "t.jsonl")


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "data:\n  train: [unclosed\n")
    with pytest.raises(UserError, match=r"recipe.yaml:\d+: not valid YAML"):
        load_recipe(path)


@pytest.mark.parametrize("section", ["train", "distributed"])
def test_readme_reference_tables_match_the_schema(section):
    from pathlib import Path

    from tuneloop.config import recipe

    reference = getattr(recipe, f"{section}_reference_markdown")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = f"<!-- {section}-reference -->\n", f"\n<!-- /{section}-reference -->"
    assert start in readme, f"README lost its {section} reference section"
    shown = readme.split(start, 1)[1].split(end, 1)[0]
    assert shown == reference(), (
        f"README's {section}: table is stale; regenerate it with tuneloop.config.recipe.{section}_reference_markdown()")
