"""``tuneloop train RECIPE.yaml [--set key=value]... [--resume] [--dry-run] [--out DIR]``.

Thin: loads and validates the recipe (errors name the key path with a did-you-mean hint), then
calls :func:`tuneloop.train.run_training`. Works the same under ``torchrun`` / ``accelerate launch``.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.argument("recipe_path", metavar="RECIPE.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set train.epochs=1 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the run's latest checkpoint.")
@click.option("--dry-run", is_flag=True,
              help="Show a token-level sample preview, lengths, memory estimate, steps and ETA; train nothing.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Run directory (default runs/<name>/ under the current directory).")
def train(recipe_path, overrides, resume, dry_run, out_dir):
    """Fine-tune from a recipe; writes a run directory (metrics, checkpoints, adapter or model)."""
    from tuneloop.config.recipe import load_recipe

    recipe = load_recipe(recipe_path, list(overrides))
    if out_dir:
        out = Path(out_dir)
        recipe.output_dir, recipe.name = str(out.parent), out.name
    if dry_run:
        from tuneloop.train import dry_run as make_report

        click.echo(make_report(recipe))
        return
    from tuneloop.paths import check_output_dir
    from tuneloop.train import run_training

    check_output_dir(recipe.run_dir(), "run directory")  # before loading the model and data
    run_dir = run_training(recipe, resume=resume)
    click.echo(f"run directory: {run_dir}")
