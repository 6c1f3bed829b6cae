"""Run-directory plumbing for the preference methods: files, metrics, tracking, checkpoints.

A run directory ``runs/<name>/`` looks the same for every method (SPEC "Recipe"):
``recipe.resolved.yaml``, ``tuneloop_base.json``, ``metrics.jsonl``, ``checkpoints/step-N/``,
``adapter/`` or ``model/``, ``summary.json``. These few calls are the only place the preference
trainers touch that layout, so they can follow the SFT engine's helpers wherever those differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.paths import atomic_path, write_json_atomic, write_text_atomic


def start_run_dir(recipe, resume: bool) -> Path:
    """Create (or, resuming, reopen) the run directory and write the resolved recipe into it."""
    import yaml

    run_dir = recipe.run_dir()
    if resume:
        if not latest_checkpoint(run_dir):
            raise UserError(f"nothing to resume: {run_dir} has no checkpoints",
                            hint="run without --resume to start this run")
    elif (run_dir / "metrics.jsonl").exists():
        raise UserError(f"run directory {run_dir} already holds a run",
                        hint="pass --resume to continue it, or set another name (--set name=...)")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "recipe.resolved.yaml",
                      yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    # What `tuneloop serve/eval/export` read to find the base model under this run's adapter.
    write_json_atomic(run_dir / "tuneloop_base.json", {"base_model": recipe.model,
                                                      "method": recipe.method,
                                                      "finetuning": recipe.finetuning})
    return run_dir


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors it to the tracker."""

    def __init__(self, run_dir: Path, recipe, resume: bool):
        self.path = run_dir / "metrics.jsonl"
        if not resume:
            self.path.write_text("")
        self.tracker = _start_tracking(run_dir, recipe)

    def log(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tracker is not None:
            numbers = {k.replace("/", "_"): v for k, v in row.items()
                       if k != "step" and isinstance(v, (int, float))}
            self.tracker.log_metrics(numbers, step=int(row["step"]))

    def truncate_after(self, step: int) -> None:
        """On resume, forget rows logged after the checkpoint (they will be logged again)."""
        rows = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        write_text_atomic(self.path, "".join(r + "\n" for r in rows))

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.end_run()


def _start_tracking(run_dir: Path, recipe):
    if recipe.tracking.backend == "none":
        return None
    try:
        import mlflow
    except ImportError:
        raise UserError("tracking.backend is mlflow but mlflow is not installed",
                        hint="pip install mlflow-skinny, or set tracking.backend: none") from None
    mlflow.set_tracking_uri(recipe.tracking.uri or (run_dir / "mlruns").resolve().as_uri())
    mlflow.set_experiment(recipe.tracking.experiment or recipe.name)
    mlflow.start_run(run_name=recipe.name)
    mlflow.log_params({"method": recipe.method, "model": recipe.model,
                       "finetuning": recipe.finetuning,
                       "learning_rate": recipe.train.learning_rate,
                       "beta": recipe.preference.beta})
    return mlflow


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``checkpoints/step-N/state.pt`` atomically, then drop all but the newest ``keep``."""
    import torch

    folder = run_dir / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "state.pt") as tmp:
        torch.save(state, tmp)
    for old in sorted((run_dir / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "state.pt").is_file())
    return found[-1] / "state.pt" if found else None


def save_final(run_dir: Path, model, tokenizer, finetuning: str) -> Path:
    """``adapter/`` (LoRA) or ``model/`` (full), with the tokenizer and its chat template."""
    out = run_dir / ("adapter" if finetuning == "lora" else "model")
    tmp = run_dir / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json_atomic(run_dir / "summary.json", summary)
