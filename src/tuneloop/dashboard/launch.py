"""The "new run" form's write: validate a recipe (a path or pasted YAML), then start ``tuneloop train``.

The recipe is validated here with the same loader ``tuneloop train`` uses (:func:`load_recipe` for a
path, :func:`recipe_from_dict` for pasted YAML), so a bad key or value is shown on the form, naming
the recipe field, before anything starts. A valid recipe trains in a detached process
(``python -m tuneloop.cli.main train RECIPE --out RUNS/NAME``: it outlives the dashboard, and its
output goes to ``RUNS/NAME/train.log``); the start is written to the store's audit log with who asked.
A pasted recipe is saved as ``RUNS/NAME/recipe.submitted.yaml`` and its relative paths are read from
that folder, as ``tuneloop train`` reads them from the recipe file's folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy.engine import Engine

from tuneloop.config.recipe import Recipe, load_recipe, recipe_from_dict
from tuneloop.dashboard.registry_actions import FormErrors
from tuneloop.dashboard.runs import _NAME_OK
from tuneloop.errors import UserError
from tuneloop.serve.access import audit

SUBMITTED = "recipe.submitted.yaml"
MAX_YAML_CHARS = 200_000


@dataclass
class Started:
    name: str
    run_dir: Path
    pid: int


def _validated(form: dict) -> tuple[Recipe, str, Path | None, str]:
    """(recipe, field, recipe file or None for pasted YAML, pasted text)."""
    path, text = form.get("recipe_path", "").strip(), form.get("recipe_yaml", "")
    if bool(path) == bool(text.strip()):
        raise FormErrors({"recipe_path": "give either a recipe path or a pasted recipe (one of the two)"})
    if path:
        try:
            return load_recipe(path), "recipe_path", Path(path).resolve(), ""
        except UserError as e:
            raise FormErrors({"recipe_path": str(e)}) from None
    if len(text) > MAX_YAML_CHARS:
        raise FormErrors({"recipe_yaml": f"at most {MAX_YAML_CHARS:,} characters"})
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FormErrors({"recipe_yaml": f"not valid YAML: {e}"}) from None
    if not isinstance(raw, dict):
        raise FormErrors({"recipe_yaml": "a recipe is a YAML mapping (name:, model:, method:, data:, ...)"})
    try:
        return recipe_from_dict(raw, "pasted recipe"), "recipe_yaml", None, text
    except UserError as e:
        raise FormErrors({"recipe_yaml": str(e)}) from None


def start_run(form: dict, runs_dir: Path, audit_engine: Engine, actor: str) -> Started:
    recipe, field, recipe_file, text = _validated(form)
    name = recipe.name
    if not name or name in (".", "..") or not set(name) <= _NAME_OK:
        raise FormErrors({field: f"name: {name!r} cannot be a run folder (letters, digits, . _ - @ +)"})
    run_dir = Path(runs_dir) / name
    if run_dir.exists():
        raise FormErrors({field: f"name: a run {name!r} exists already under {runs_dir}; "
                                 "give the recipe another name"})
    run_dir.mkdir(parents=True)
    if recipe_file is None:
        recipe_file = run_dir / SUBMITTED
        recipe_file.write_text(text, encoding="utf-8")
        try:  # what `tuneloop train` will read: relative paths from this folder
            load_recipe(recipe_file)
        except UserError as e:
            shutil.rmtree(run_dir)  # made just above: nothing started
            raise FormErrors({field: str(e)}) from None
    # An empty metrics.jsonl makes the run's page exist (status running) while the trainer starts;
    # the trainer replaces it with its own.
    (run_dir / "metrics.jsonl").touch()
    command = [sys.executable, "-m", "tuneloop.cli.main", "train", str(recipe_file), "--out", str(run_dir)]
    with open(run_dir / "train.log", "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # detached: a Ctrl-C of the dashboard spares it
    audit(actor, "run.start", {"name": name, "recipe": str(recipe_file), "run_dir": str(run_dir),
                               "pid": process.pid}, audit_engine)
    _STARTED.append(process)
    _reap()
    return Started(name, run_dir, process.pid)


_STARTED: list[subprocess.Popen] = []


def _reap() -> None:
    """Collect the exit status of finished trainers (so they do not linger as zombies)."""
    _STARTED[:] = [p for p in _STARTED if p.poll() is None]
