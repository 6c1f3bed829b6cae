"""Run-directory files of the preference methods, on the SFT engine's checkpoint format.

A run directory ``runs/<name>/`` looks the same for every method (SPEC "Recipe"):
``recipe.resolved.yaml``, ``tuneloop_base.json``, ``metrics.jsonl``, ``checkpoints/step-N/``,
``adapter/`` or ``model/``, ``summary.json``. Checkpoints are written and restored by
:mod:`tuneloop.train.checkpoint`, so ``--resume`` behaves exactly as it does for SFT.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.paths import make_dir, read_jsonl, write_json_atomic, write_text_atomic
from tuneloop.train import checkpoint as ckpt


def check_run_dir(recipe, resume: bool) -> Path:
    """The run directory, after checking that ``--resume`` has a checkpoint to continue from."""
    run_dir = recipe.run_dir()
    if resume and not ckpt.step_checkpoints(run_dir / "checkpoints"):
        raise UserError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}",
                        hint="run without --resume to start, or check name/output_dir")
    return run_dir


def start_run_dir(recipe, resume: bool) -> Path:
    """Create (or, resuming, reopen) the run directory; write the resolved recipe and base model."""
    from tuneloop.train.run import recipe_yaml

    run_dir = recipe.run_dir()
    if not resume and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")  # a fresh run must not resume someone's old steps
    make_dir(run_dir, "run directory")
    write_text_atomic(run_dir / "recipe.resolved.yaml", recipe_yaml(recipe))
    # What `serve`, `eval` and `export` read to find the base model under this run's adapter.
    base = recipe.model
    if Path(base).expanduser().exists():
        base = str(Path(base).expanduser().resolve())
    write_json_atomic(run_dir / "tuneloop_base.json",
                      {"base_model": base, "method": recipe.method, "finetuning": recipe.finetuning})
    return run_dir


def resume_state(run_dir: Path, recipe, model, optimizer) -> ckpt.TrainState:
    """Weights, optimizer, RNG and position of the newest compatible checkpoint."""
    latest = ckpt.step_checkpoints(run_dir / "checkpoints")[-1]
    ckpt.check_compatible(latest, recipe)
    return ckpt.restore_checkpoint(latest, model, optimizer)


def initial_metrics(run_dir: Path) -> dict | None:
    """The held-out metrics measured before training (metrics.jsonl's step-0 row), if logged."""
    path = run_dir / "metrics.jsonl"
    rows = read_jsonl(path) if path.is_file() else []
    first = next((r for r in rows if r.get("step") == 0), None)
    return {k: v for k, v in first.items() if k != "step"} if first else None


def save_step_checkpoint(session, optimizer, state: ckpt.TrainState) -> None:
    from tuneloop.train.run import recipe_yaml

    recipe = session.recipe
    directory = session.run_dir / "checkpoints" / f"step-{state.step}"
    ckpt.save_checkpoint(directory, session.model, optimizer, state, recipe, recipe_yaml(recipe))
    ckpt.prune_checkpoints(session.run_dir / "checkpoints", recipe.train.keep_checkpoints)


def save_final(run_dir: Path, model, tokenizer, finetuning: str) -> Path:
    """``adapter/`` (LoRA) or ``model/`` (full), with the tokenizer and its chat template."""
    out = run_dir / ("adapter" if finetuning == "lora" else "model")
    tmp = run_dir / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json_atomic(run_dir / "summary.json", summary)

