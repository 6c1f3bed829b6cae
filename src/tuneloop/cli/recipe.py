"""`tuneloop recipe schema` (JSON Schema of recipes) and `tuneloop recipe import FILE`.

The schema gives editors completion and checks: point the YAML language server at it with a first
line ``# yaml-language-server: $schema=recipe.schema.json``.
"""

from __future__ import annotations

import click


@click.group()
def recipe():
    """Recipe tools: the JSON Schema, and import from Axolotl, LLaMA-Factory or TRL configs."""


@recipe.command()
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write the schema here (default stdout).")
def schema(out_file):
    """Print the JSON Schema of recipe files (for editor completion and validation)."""
    import json

    from tuneloop.config.recipe import recipe_json_schema
    from tuneloop.paths import write_text_atomic

    text = json.dumps(recipe_json_schema(), indent=2)
    if out_file:
        write_text_atomic(out_file, text + "\n")
        click.echo(f"wrote {out_file}", err=True)
    else:
        click.echo(text)


@recipe.command(name="import")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--from", "tool", type=click.Choice(["axolotl", "llama-factory", "trl"]),
              help="The tool that wrote the config (default: detected from its keys).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write the recipe here (default stdout).")
def import_command(config_file, tool, out_file):
    """Convert an Axolotl, LLaMA-Factory or TRL YAML config into a tuneloop recipe.

    Keys that could not be mapped are listed on stderr with the reason; the recipe is validated.
    """
    from pathlib import Path

    import yaml

    from tuneloop.config.importers import import_config
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.errors import UserError
    from tuneloop.paths import write_text_atomic

    path = Path(config_file)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"not a readable YAML file: {getattr(e, 'problem', e)}", where=str(path)) from None
    if not isinstance(raw, dict):
        raise UserError("a config is a YAML mapping (key: value)", where=str(path))
    imported = import_config(raw, tool)
    recipe_from_dict(imported.recipe, source=f"{path} (imported)")  # the result must be a valid recipe
    text = f"# imported from {path.name} ({imported.tool}) by `tuneloop recipe import`\n"
    text += yaml.safe_dump(imported.recipe, sort_keys=False)
    if out_file:
        write_text_atomic(out_file, text)
        click.echo(f"wrote {out_file}", err=True)
    else:
        click.echo(text, nl=False)
    click.echo(f"{imported.tool}: mapped {len(raw) - sum(1 for k, _ in imported.unmapped if k in raw)} of "
               f"{len(raw)} keys", err=True)
    for key, why in imported.unmapped:
        click.echo(f"  not mapped: {key}: {why}", err=True)
