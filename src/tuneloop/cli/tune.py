"""``tuneloop tune RECIPE.yaml (--trials N | --budget-minutes M) [--workers K] [--storage URL] [--out DIR]``.

Searches the recipe's ``search:`` section with Optuna (see :mod:`tuneloop.tune`). The study lives
in a SQLite file in ``--out`` unless ``--storage`` names another SQL URL; rerunning the same
command continues it, and processes on other machines with the same URL join it.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("tune")
@click.argument("recipe_path", metavar="RECIPE.yaml", type=click.Path(dir_okay=False))
@click.option("--trials", type=click.IntRange(min=1), help="Trials the study should have in total.")
@click.option("--budget-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Wall-clock budget: no trial starts after it; a running one stops at it.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine, sharing the study.")
@click.option("--storage", metavar="URL", help="SQL URL of the study (default sqlite:///OUT/study.db), "
              "e.g. postgresql://user@host/db to share it between machines.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output directory (default runs/<name>-tune).")
@click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True),
              help="Skip trials estimated above this (default: this machine's RAM).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value.")
@click.option("--worker", is_flag=True, hidden=True, help="Run trials only (started by --workers).")
@click.option("--deadline", type=float, hidden=True, help="Epoch seconds of the budget's end (workers).")
def tune(recipe_path, trials, budget_minutes, workers, storage, out_dir, memory_gb, overrides, worker, deadline):
    """Hyperparameter search over the recipe's search: section; best recipe + HTML report."""
    from tuneloop.config.recipe import load_recipe
    from tuneloop.tune.launch import prepare_settings, run_study
    from tuneloop.tune.study import run_worker

    recipe = load_recipe(recipe_path, list(overrides))
    out = Path(out_dir or Path(recipe.output_dir or "runs") / f"{recipe.name}-tune")
    settings = prepare_settings(recipe, recipe_path, out, storage, trials, budget_minutes, memory_gb)
    if worker:
        settings.deadline = deadline  # the launcher's clock, so all workers stop together
        run_worker(recipe, settings)
        return
    worker_args = [recipe_path, "--out", str(out), *(f"--set={o}" for o in overrides)]
    worker_args += ["--trials", str(trials)] if trials else []
    worker_args += ["--budget-minutes", str(budget_minutes)] if budget_minutes else []
    worker_args += ["--memory-gb", str(memory_gb)] if memory_gb else []
    summary = run_study(recipe, settings, workers, worker_args, budget_minutes)
    best = summary["best"]
    click.echo(f"trials: {summary['trials']} ({', '.join(f'{v} {k}' for k, v in summary['counts'].items() if v)})")
    if best:
        click.echo(f"best: trial #{best['number']} validation loss {best['value']:.4f} {best['params']}")
        click.echo(f"best recipe: {out / 'best_recipe.yaml'}")
    click.echo(f"report: {out / 'report.html'}")
