"""`tuneloop tune`: search-space validation, sampling, pruning, memory skips, the report, workers, resume.

Trials run the real trainer on the tiny model for a few steps; the study is a real SQLite database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli_support import run_cli
from fixtures_train.helpers import tiny_recipe
from tuneloop.config.recipe import load_recipe, recipe_from_dict

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
SPACE = {"train.learning_rate": {"distribution": "log_uniform", "low": 1.0e-4, "high": 1.0e-2},
         "lora.r": {"choices": [2, 4]},
         "lora.target_modules": {"choices": ["all-linear", ["q_proj", "v_proj"]]}}


def _recipe_file(tmp_path, model_dir, params=None, **train) -> Path:
    raw = tiny_recipe(model_dir, tmp_path, validation=True, **({"max_steps": 4, "eval_every": 2} | train))
    raw["search"] = {"params": params or SPACE, "startup_trials": 1}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("params, expected", [
    ({"train.learnin_rate": {"low": 1e-5, "high": 1e-3}},
     ["search.params", "train.learnin_rate", "did you mean 'train.learning_rate'"]),
    ({"lora.r": {"low": 32, "high": 4}}, ["search.params.lora.r", "empty range", "swap them"]),
    ({"train.learning_rate": {"distribution": "log_uniform", "low": 0.0, "high": 1e-3}},
     ["search.params.train.learning_rate", "positive bounds", "low: 1.0e-5"]),
    ({"lora.r": {"low": 0, "high": 8}}, ["search.params.lora.r", "value 0 is not valid", "hint: narrow the range"]),
    ({"method": {"choices": ["lora", "sft"]}}, ["search.params.method", "'sft' is not valid", "hint: list only"]),
    ({"lora": {"low": 1, "high": 2}}, ["lora is a section", "lora.r"]),
    ({"lora.r": {"low": 2, "high": 8, "stpe": 2}}, ["search.params.lora.r.stpe", "did you mean 'step'"]),
])
def test_bad_search_space_fails_before_training(tmp_path, capsys, params, expected):
    path = _recipe_file(tmp_path, tmp_path / "no-model-needed", params)
    code, _, err = run_cli(["tune", str(path), "--trials", "2", "--out", str(tmp_path / "out")], capsys)
    assert code == 1, err
    for text in expected:
        assert text in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "trials").exists()


def test_suggest_and_trial_recipe_round_trip_list_choices(tmp_path):
    import optuna

    from tuneloop.tune.space import decode_params, suggest, trial_recipe

    recipe = recipe_from_dict(yaml.safe_load(_recipe_file(tmp_path, tmp_path).read_text()))
    fixed = optuna.trial.FixedTrial({"train.learning_rate": 5e-4, "lora.r": 4,
                                     "lora.target_modules": json.dumps(["q_proj", "v_proj"])})
    values = suggest(fixed, recipe.search)
    assert values == {"train.learning_rate": 5e-4, "lora.r": 4, "lora.target_modules": ["q_proj", "v_proj"]}
    trial = trial_recipe(recipe, values)
    assert (trial.train.learning_rate, trial.lora.r, trial.lora.target_modules) == (5e-4, 4, ["q_proj", "v_proj"])
    assert trial.search is None and recipe.train.learning_rate == 3e-3  # the base recipe is untouched
    assert decode_params(fixed.params, recipe.search)["lora.target_modules"] == ["q_proj", "v_proj"]


def test_trials_over_the_memory_limit_are_skipped_with_the_reason(tiny_model_dir, tmp_path, capsys):
    path = _recipe_file(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["tune", str(path), "--trials", "2", "--out", str(out), "--memory-gb", "0.2"], capsys)
    assert code == 0, err
    summary = json.loads((out / "trials.json").read_text())
    assert summary["counts"]["skipped"] == 2 and summary["best"] is None
    assert all(r["outcome"].startswith("skipped: estimated") and "> 0.2 GB memory" in r["outcome"]
               for r in summary["rows"])
    assert not any((out / "trials").glob("*/metrics.jsonl"))  # nothing trained
    assert "skipped: estimated" in (out / "report.html").read_text()


def test_study_trains_prunes_and_reports(tiny_model_dir, tmp_path):
    """Trial 0 learns; trial 1 (learning rate 1e-7) is worse than it at step 2 and gets pruned there."""
    from tuneloop.tune.launch import prepare_settings, run_study
    from tuneloop.tune.study import open_study

    path = _recipe_file(tmp_path, tiny_model_dir, {"train.learning_rate": {"choices": [3e-3, 1e-7]}},
                        max_steps=6)
    recipe = load_recipe(path)
    settings = prepare_settings(recipe, str(path), tmp_path / "out", None, 2, None, None)
    study = open_study(recipe.search, settings)
    study.enqueue_trial({"train.learning_rate": 3e-3})
    study.enqueue_trial({"train.learning_rate": 1e-7})
    summary = run_study(recipe, settings, workers=1, worker_args=[])

    first, second = summary["rows"]
    assert first["state"] == "COMPLETE" and first["steps"] == 6
    assert second["state"] == "PRUNED" and second["outcome"] == "pruned at step 2"
    assert second["intermediate"]["2"] > first["intermediate"]["2"]
    metrics = [json.loads(x) for x in (Path(second["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2  # the pruned run really stopped
    assert summary["best"]["number"] == 0 and summary["best"]["value"] == min(first["intermediate"].values())
    best = load_recipe(tmp_path / "out" / "best_recipe.yaml")
    assert best.train.learning_rate == 3e-3 and best.search is None
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count('class="plotly-graph-div"') == 4  # history, importance, parallel coords, curves
    assert "<script src=" not in report.replace('<script src="data:', "")  # plotly.js inline: opens offline
    assert "data:image/png;base64," in report and (tmp_path / "out" / "history.png").stat().st_size > 1000


def _env(**extra) -> dict:
    return os.environ | {"PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "TUNELOOP_NUM_THREADS": "1"} | extra


def _trials(storage: str, name: str = "t"):
    import optuna

    from tuneloop.tune.study import open_storage

    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials(deepcopy=False)
    except KeyError:  # the worker has not created the study yet
        return []


def test_workers_opening_a_new_study_at_once_all_get_it(tmp_path):
    """Issue 19: a process opening the database while another created its tables crashed that one
    (``UNIQUE constraint failed: alembic_version``, or ``table ... already exists``)."""
    import threading

    from tuneloop.config.recipe import SearchConfig
    from tuneloop.tune.study import TuneSettings, open_study

    for attempt in range(2):  # without the retry, 4 openers collide in most attempts
        settings = TuneSettings(tmp_path, f"sqlite:///{tmp_path / f'race-{attempt}.db'}", "t")
        start, errors, studies = threading.Barrier(4), [], []

        def open_once():
            start.wait()
            try:
                studies.append(open_study(SearchConfig(params={"lora.r": {"choices": [2]}}), settings))
            except Exception as e:  # noqa: BLE001 - the assertion below shows which
                errors.append(repr(e)[:300])

        threads = [threading.Thread(target=open_once) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len({s._study_id for s in studies}) == 1


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(tiny_model_dir, tmp_path):
    path = _recipe_file(tmp_path, tiny_model_dir, max_steps=2)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", "tune", str(path), "--trials", "3",
                           "--workers", "2", "--out", str(out)], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _trials(f"sqlite:///{out / 'study.db'}")
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 3  # exactly --trials, though two processes raced for them
    assert len({t.number for t in counted}) == 3
    assert len({t.user_attrs["run_dir"] for t in counted}) == 3
    assert len({t.user_attrs["worker"] for t in counted}) == 2  # both processes ran trials
    assert all((Path(t.user_attrs["run_dir"]) / "metrics.jsonl").is_file() for t in counted)
    assert json.loads((out / "trials.json").read_text())["trials"] == len(trials)


@pytest.mark.slow
def test_killed_worker_leaves_the_study_resumable(tiny_model_dir, tmp_path):
    """SIGKILL mid-trial; the rerun fails the stale trial (heartbeat), retries its parameters, finishes."""
    path = _recipe_file(tmp_path, tiny_model_dir, max_steps=10_000, eval_every=2)  # never ends by itself
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    env = _env(TUNELOOP_TUNE_HEARTBEAT_S="1", TUNELOOP_TUNE_GRACE_S="2")
    argv = [sys.executable, "-m", "tuneloop.cli.main", "tune", str(path), "--trials", "1", "--out", str(out)]
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        worker = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    metrics = out / "trials" / "trial-0000" / "metrics.jsonl"
    try:
        deadline = time.time() + 300
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):  # mid-trial: steps logged
            # A worker that died fails here with its log, not after the whole wait.
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no trial started:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    killed = next(t for t in _trials(storage) if t.state.name == "RUNNING")
    time.sleep(3)  # past the grace period: the dead worker's heartbeat is stale

    path.write_text(path.read_text().replace("max_steps: 10000", "max_steps: 2"))  # not searched
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = _trials(storage)
    assert trials[killed.number].state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert retried[0].state.name == "COMPLETE" and len(trials) == 2  # --trials 1: the retry is the trial
    assert (out / "best_recipe.yaml").is_file()
