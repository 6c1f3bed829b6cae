"""``tuneloop train RECIPE.yaml [--set key=value]... [--resume] [--dry-run] [--out DIR]``.

Thin: loads and validates the recipe (errors name the key path with a did-you-mean hint), then
calls :func:`tuneloop.train.run_training`, holding the run directory's lock (one writer at a time). Works the same under ``torchrun`` / ``accelerate launch``.
"""

from __future__ import annotations

import os
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
    from tuneloop.locks import hold_lock, nothing_held
    from tuneloop.paths import check_output_dir
    from tuneloop.train import run_training

    check_output_dir(recipe.run_dir(), "run directory")  # before loading the model and data
    # One writer per run directory (a second `train` of the same recipe would interleave checkpoints
    # and metrics). Under torchrun every rank runs this command; rank 0 is the writer and holds the lock.
    main_rank = os.environ.get("RANK", "0") == "0"
    with hold_lock(recipe.run_dir(), "run directory") if main_rank else nothing_held():
        try:
            run_dir = run_training(recipe, resume=resume)
        except RuntimeError as e:  # torch.save reports a failed write as a RuntimeError, without errno
            raise _write_failure(e, recipe.run_dir()) from None
        except Exception as e:  # an OSError, or safetensors' own error carrying "(os error 28)"
            from tuneloop.paths import disk_error

            where = getattr(e, "filename", None) or f"a file in {recipe.run_dir()}"
            explained = disk_error(e, where, "the checkpoints saved before are intact: "
                                   "run again with --resume once it is fixed")
            if explained is None:
                raise
            raise explained from None
    click.echo(f"run directory: {run_dir}")


def _write_failure(error: RuntimeError, run_dir: Path) -> Exception:
    import errno
    import shutil

    from tuneloop.paths import disk_error

    if "write failed" not in str(error) and "unexpected pos" not in str(error):
        return error
    full = shutil.disk_usage(run_dir).free < 16 * 1024**2
    reason = errno.ENOSPC if full else (errno.EROFS if not os.access(run_dir, os.W_OK) else None)
    if reason is None:
        return error
    return disk_error(OSError(reason, os.strerror(reason)), f"a checkpoint in {run_dir}",
                      "the checkpoints saved before are intact: run again with --resume once it is fixed")
