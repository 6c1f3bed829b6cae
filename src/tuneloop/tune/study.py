"""One tuning worker: an Optuna study on SQL storage, each trial a real ``run_training`` run.

A trial samples the ``search:`` space (:mod:`tuneloop.tune.space`), is skipped before it starts when
``models estimate`` puts it over the memory limit, then trains with ``on_evaluate`` reporting every
validation loss to Optuna so the pruner can stop it early. Its value is the run's best validation
loss. Every process that opens the same storage URL and study name joins the same study: Optuna
hands each ``ask()`` a new trial number inside a database transaction, so workers never run the
same trial. A heartbeat marks a killed worker's trial as failed after a grace period and re-queues
its parameters, so the study stays resumable.

    OUT/study.db   OUT/trials/trial-0003/ (a run directory)   OUT/logs/   OUT/report.html
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tuneloop.config.recipe import Recipe
from tuneloop.errors import UserError
from tuneloop.models.estimate import estimate
from tuneloop.models.loading import card_for, load_tokenizer
from tuneloop.paths import read_jsonl
from tuneloop.train import run_training
from tuneloop.train.data import read_chat_jsonl
from tuneloop.tune.space import suggest, trial_recipe

# Seconds between a running trial's heartbeats, and without one before the trial counts as dead.
HEARTBEAT_S = int(os.environ.get("TUNELOOP_TUNE_HEARTBEAT_S", "5"))
GRACE_S = int(os.environ.get("TUNELOOP_TUNE_GRACE_S", "60"))


@dataclass
class TuneSettings:
    out_dir: Path
    storage: str
    study_name: str
    n_trials: int | None = None  # the study's total of finished trials (complete + pruned + skipped)
    deadline: float | None = None  # epoch seconds: no trial starts after it, a running one stops
    memory_gb: float | None = None  # skip trials estimated above this (default: the machine's RAM)


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(Path(out_dir) / 'study.db').resolve()}"


def open_study(search, settings: TuneSettings):
    """Create or load the study (``load_if_exists``: a rerun continues it)."""
    import warnings

    import optuna

    # Heartbeats are "experimental" in Optuna since 2.8 and have been stable for years: quiet the warning.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = open_storage(
        settings.storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    if search.sampler == "tpe":
        # constant_liar: a worker's running trials count as bad guesses, so parallel workers spread out.
        sampler = optuna.samplers.TPESampler(n_startup_trials=search.startup_trials, seed=search.seed,
                                             constant_liar=True)
    else:
        sampler = optuna.samplers.RandomSampler(seed=search.seed)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=max(1, search.startup_trials),
                                          n_warmup_steps=search.warmup_steps)
              if search.pruner == "median" else optuna.pruners.NopPruner())
    return optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, direction="minimize",
                               study_name=settings.study_name, load_if_exists=True)


def open_storage(url: str, attempts: int = 5, **heartbeat):
    """Optuna's RDBStorage on ``url``, safe when several processes open a new database at once.

    Opening a storage creates its tables and stamps the schema version when they are missing; two
    processes doing that at the same moment (two workers started together, or a process watching the
    study as it is created) make one of them fail with a duplicate version row or table. The other
    one has then finished the schema, so opening again succeeds.
    """
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **heartbeat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.ProgrammingError) as e:
            raced = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
            if not raced or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _engine_kwargs(url: str) -> dict:
    # Several processes write one SQLite file: wait for the lock instead of failing at once.
    return {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}


def finished_count(study, below: int | None = None) -> int:
    """Trials that count towards --trials: done, pruned or skipped, plus those running now."""
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=counted)
               if below is None or t.number < below)


class SurplusTrial(Exception):
    """Another worker already started the last trial the study needs (recorded as a failed trial)."""


def run_worker(recipe: Recipe, settings: TuneSettings, progress=None) -> None:
    """Run trials until the study has n_trials or the deadline passes."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(recipe.search, settings)
    limit = MemoryLimit(recipe, settings.memory_gb)

    def objective(trial):
        return run_trial(trial, recipe, settings, limit)

    def after_trial(study, frozen):
        if progress is not None:
            progress(study, frozen)
        if _study_done(study, settings):
            study.stop()

    # A worker killed mid-trial left a RUNNING trial: fail it (and re-queue its parameters) once its
    # heartbeat is stale, before counting, or a rerun would count the dead trial as done.
    optuna.storages.fail_stale_trials(study)
    if _study_done(study, settings):
        return
    timeout = None if settings.deadline is None else max(1.0, settings.deadline - time.time())
    study.optimize(objective, timeout=timeout, callbacks=[after_trial], catch=(SurplusTrial,))


def _study_done(study, settings: TuneSettings) -> bool:
    if settings.deadline is not None and time.time() >= settings.deadline:
        return True
    return settings.n_trials is not None and finished_count(study) >= settings.n_trials


def run_trial(trial, recipe: Recipe, settings: TuneSettings, limit: MemoryLimit) -> float:
    """One trial: sample, check memory, train with pruning; the run's best validation loss."""
    import optuna

    if settings.n_trials is not None and finished_count(trial.study, below=trial.number) >= settings.n_trials:
        trial.set_user_attr("outcome", "surplus: the study already had its trials")
        raise SurplusTrial(f"trial {trial.number} is beyond --trials {settings.n_trials}")
    values = suggest(trial, recipe.search)
    candidate = trial_recipe(recipe, values, source=f"trial {trial.number}")
    candidate.output_dir = str(Path(settings.out_dir) / "trials")
    candidate.name = f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(candidate.run_dir()))
    trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
    too_big = limit.reason(candidate)
    if too_big:
        trial.set_user_attr("outcome", f"skipped: {too_big}")
        raise optuna.TrialPruned(too_big)
    watcher = TrialWatcher(trial, settings.deadline)
    run_dir = run_training(candidate, on_evaluate=watcher)
    best = _best_validation_loss(run_dir)
    trial.set_user_attr("steps", watcher.last_step)
    if watcher.pruned_at is not None:
        trial.set_user_attr("outcome", f"pruned at step {watcher.pruned_at}")
        raise optuna.TrialPruned(f"pruned at step {watcher.pruned_at}")
    if best is None:
        raise UserError(f"{run_dir}: the run logged no validation loss", hint="set data.validation")
    trial.set_user_attr("outcome", "stopped at the budget" if watcher.out_of_time else "complete")
    return best


class TrialWatcher:
    """``on_evaluate`` for a trial: reports each validation loss; True stops (pruned or out of time)."""

    def __init__(self, trial, deadline: float | None):
        self.trial, self.deadline = trial, deadline
        self.pruned_at: int | None = None
        self.out_of_time = False
        self.last_step = 0

    def __call__(self, step: int, metrics: dict) -> bool:
        self.last_step = step
        self.trial.report(float(metrics["validation_loss"]), step)
        if self.deadline is not None and time.time() >= self.deadline:
            self.out_of_time = True  # the best model so far stands: it is what the budget bought
            return True
        if self.trial.should_prune():
            self.pruned_at = step
            return True
        return False


def _best_validation_loss(run_dir: Path) -> float | None:
    losses = [m["validation_loss"] for m in read_jsonl(Path(run_dir) / "metrics.jsonl") if "validation_loss" in m]
    return min(losses) if losses else None


class MemoryLimit:
    """Skips trials whose ``models estimate`` exceeds the limit (the machine's RAM by default)."""

    def __init__(self, recipe: Recipe, memory_gb: float | None):
        self.limit_gb = memory_gb if memory_gb is not None else machine_memory_gb()
        self._longest: dict[tuple, int] = {}
        self.base = recipe

    def reason(self, recipe: Recipe) -> str | None:
        method = {"dora": "lora"}.get(recipe.method, recipe.method)
        if method not in ("full", "lora", "qlora"):
            method = "full" if recipe.finetuning == "full" else "lora"
        seq_len = self.effective_seq_len(recipe)
        est = estimate(card_for(recipe.model), method, seq_len, recipe.train.batch_size,
                       r=recipe.lora.r, measure_peak=False, device="cpu")
        if est.total_gb <= self.limit_gb:
            return None
        return (f"estimated {est.total_gb:.1f} GB ({recipe.method}, {seq_len} tokens x batch "
                f"{recipe.train.batch_size}) > {self.limit_gb:.1f} GB memory")

    def effective_seq_len(self, recipe: Recipe) -> int:
        """Packed rows fill max_seq_len; unpacked ones are as long as the longest sample."""
        if recipe.train.packing or not recipe.data.train:
            return recipe.train.max_seq_len
        key = (recipe.model, recipe.data.train)
        if key not in self._longest:
            self._longest[key] = longest_sample_tokens(recipe.model, recipe.data.train)
        return min(recipe.train.max_seq_len, self._longest[key])


def longest_sample_tokens(model: str, train_path: str, sample: int = 32) -> int:
    """Tokens of the longest training chat, from the longest few by characters."""
    records = read_chat_jsonl(train_path)
    longest = sorted(records, key=lambda r: -sum(len(m["content"]) for m in r[1]))[:sample]
    tokenizer = load_tokenizer(model)
    lengths = []
    for _, messages in longest:
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        lengths.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return max(lengths, default=1)


def machine_memory_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 1024**3
