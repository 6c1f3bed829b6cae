"""A whole study: check the space, run one worker here or K worker processes, show progress, report.

With ``--workers K`` this process starts K copies of ``tuneloop tune ... --worker`` on the same
storage (each logs to ``OUT/logs/worker-K.log``), watches the study in the database and writes the
report when they finish. Workers on other machines join by running ``tuneloop tune`` with the same
``--storage`` URL and recipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tuneloop.config.recipe import Recipe
from tuneloop.errors import UserError
from tuneloop.paths import make_dir
from tuneloop.tune.report import best_trial, write_outputs
from tuneloop.tune.space import check_space
from tuneloop.tune.study import TuneSettings, default_storage, finished_count, open_study, run_worker


def prepare_settings(recipe: Recipe, source: str, out_dir: Path, storage: str | None, trials: int | None,
                     budget_minutes: float | None, memory_gb: float | None) -> TuneSettings:
    """Validate everything a study needs before any training starts."""
    if trials is None and budget_minutes is None:
        raise UserError("give --trials N or --budget-minutes M (or both)",
                        hint="e.g. tuneloop tune recipe.yaml --trials 20")
    check_space(recipe, source)
    make_dir(out_dir, "--out")
    deadline = None if budget_minutes is None else time.time() + budget_minutes * 60
    return TuneSettings(Path(out_dir), storage or default_storage(out_dir), recipe.name, trials, deadline,
                        memory_gb)


def run_study(recipe: Recipe, settings: TuneSettings, workers: int, worker_args: list[str],
              budget_minutes: float | None = None) -> dict:
    started = time.time()
    progress = StudyProgress(settings, started, budget_minutes)
    if workers <= 1:
        run_worker(recipe, settings, progress=lambda study, _: progress.update(study))
    else:
        _run_worker_processes(recipe, settings, workers, worker_args, progress)
    progress.close()
    study = open_study(recipe.search, settings)
    return write_outputs(study, recipe, settings.out_dir, budget_minutes)


def _run_worker_processes(recipe, settings, workers: int, worker_args: list[str], progress) -> None:
    logs = make_dir(settings.out_dir / "logs", "--out")
    # Create the study (and its tables) once, before K processes race to do it.
    study = open_study(recipe.search, settings)
    procs = []
    env = dict(os.environ)
    try:
        for k in range(workers):
            log = open(logs / f"worker-{k}.log", "w")
            args = [sys.executable, "-m", "tuneloop.cli.main", "tune", *worker_args, "--worker",
                    "--storage", settings.storage]
            if settings.deadline is not None:
                args += ["--deadline", str(settings.deadline)]
            procs.append((subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        while any(p.poll() is None for p, _ in procs):
            progress.update(study)
            time.sleep(2)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
            log.close()
    failed = [k for k, (p, _) in enumerate(procs) if p.returncode != 0]
    if failed:
        tails = "\n".join(f"--- worker {k}: " + _tail(logs / f"worker-{k}.log") for k in failed)
        raise UserError(f"{len(failed)} of {workers} tune workers failed:\n{tails}",
                        hint=f"full logs in {logs}")


def _tail(path: Path, lines: int = 6) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class StudyProgress:
    """A tqdm bar over the study: trials done, best so far, ETA (and time left of the budget)."""

    def __init__(self, settings: TuneSettings, started: float, budget_minutes: float | None):
        from tqdm.auto import tqdm

        self.settings, self.started, self.budget = settings, started, budget_minutes
        self.bar = tqdm(total=settings.n_trials, desc=f"tune {settings.study_name}", unit="trial",
                        dynamic_ncols=True, position=0)
        self.first_count: int | None = None

    def update(self, study) -> None:
        done = finished_count(study)
        if self.first_count is None:
            self.first_count = done  # trials from an earlier session of a resumed study
        best = best_trial(study)
        postfix = {"best": "-" if best is None else f"{best.value:.4f} (#{best.number})",
                   "eta": self.eta(done)}
        self.bar.n = done
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def eta(self, done: int) -> str:
        elapsed = time.time() - self.started
        new = done - (self.first_count or 0)
        left = []
        if self.settings.n_trials is not None and new > 0:
            left.append(elapsed / new * max(0, self.settings.n_trials - done))
        if self.settings.deadline is not None:
            left.append(max(0.0, self.settings.deadline - time.time()))
        if not left:
            return "?"
        text = _minutes(min(left))
        return text + (f" of {self.budget:g} min budget" if self.budget else "")

    def close(self) -> None:
        self.bar.close()


def _minutes(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"
