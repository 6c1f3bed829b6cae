"""Sample data for the dashboard's tests, load benchmark and screenshots: runs, an eval, stored
requests with feedback, registry versions. Written the way tuneloop's own commands write them
(SPEC file layouts, the serving store's and registry's real tables), never used by ``tuneloop ui`` itself.
"""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import insert

from tuneloop.paths import write_json_atomic
from tuneloop.registry.store import ModelVersion, Registry
from tuneloop.serve.store import Store, feedback_table, requests_table


def metrics_line(step: int, seed: int = 0, eval_every: int = 10) -> str:
    loss = 2.5 * math.exp(-step / 40) + 0.3 + 0.05 * math.sin(step + seed)
    row = {"step": step, "loss": round(loss, 5), "learning_rate": 2e-4, "tokens_per_s": 180.0}
    if step % eval_every == 0:
        row["validation_loss"] = round(loss + 0.1, 5)
    return json.dumps(row) + "\n"


def write_run(runs_dir: Path, name: str, steps: int, finished: bool = True, seed: int = 0,
              data_dir: Path | None = None) -> Path:
    run_dir = Path(runs_dir) / name
    (run_dir / "checkpoints" / f"step-{steps}").mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(metrics_line(s, seed) for s in range(1, steps + 1)))
    train = (data_dir / "train.jsonl") if data_dir else Path("prepared/train.jsonl")
    (run_dir / "recipe.resolved.yaml").write_text(
        f"name: {name}\nmodel: smollm2-135m-instruct\nmethod: lora\ndata:\n  train: {train}\n"
        f"train:\n  max_steps: {steps}\n  learning_rate: 0.0002\n  batch_size: 8\n")
    (run_dir / "samples.jsonl").write_text(json.dumps(
        {"step": steps, "prompt": "How do I reset my password?", "output": "Open Settings > Account."}) + "\n")
    if finished:
        write_json_atomic(run_dir / "summary.json", {
            "name": name, "model": "smollm2-135m-instruct", "method": "lora", "steps": steps,
            "final_loss": json.loads(metrics_line(steps, seed))["loss"], "validation_loss": 0.45,
            "trained_tokens": steps * 400, "wall_seconds": steps * 1.3, "tokens_per_s": 180.0, "peak_rss_gb": 2.1})
    return run_dir


def write_data_report(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data_dir / "report.json", {"counts": {
        "input": 120, "invalid": 2, "exact_duplicates": 5, "near_duplicates": 3, "filtered": 0, "pii_redacted": 4,
        "output": 110}})


def write_eval(out_dir: Path, model: str, baseline_model: str) -> Path:
    metrics = {"accuracy": 0.82, "f1": 0.79, "latency_ms_p50": 41.0}
    base = {"accuracy": 0.61, "f1": 0.55, "latency_ms_p50": 39.0}
    comparison = {k: {"model": v, "baseline": base[k], "delta": v - base[k],
                      "ci95": [v - base[k] - 0.08, v - base[k] + 0.08] if k != "latency_ms_p50" else None}
                  for k, v in metrics.items()}
    report = {"model": model, "data": "prepared/test.jsonl", "task": "classification", "n": 200, "metrics": metrics,
              "baseline": {"model": baseline_model, "metrics": base}, "comparison": comparison,
              "gate": {"passed": True, "rule": "accuracy >= baseline + 0.05"}, "slices": None,
              "confusion": {"labels": ["card", "refund"], "matrix": [[90, 10], [26, 74]],
                            "top_confused": [{"true": "refund", "predicted": "card", "count": 26}]}}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "eval.json", report)
    (out_dir / "report.html").write_text("<!DOCTYPE html><title>eval report</title><h1>eval report</h1>")
    return out_dir / "eval.json"


def fill_store(db_url: str, n_requests: int, models=("base", "support"), seed: int = 0, batch: int = 5000,
               span: timedelta = timedelta(hours=20)) -> None:
    """``n_requests`` stored requests over the last ``span`` (2% errors), a tenth of them rated."""
    rng = random.Random(seed)
    store = Store(db_url)
    now = datetime.now(timezone.utc)
    try:
        for start in range(0, n_requests, batch):
            requests, feedback = [], []
            for i in range(start, min(n_requests, start + batch)):
                status = 500 if rng.random() < 0.02 else 200
                model = models[i % len(models)]
                created = now - span * rng.random()
                requests.append({"id": f"chatcmpl-s{seed}-{i}", "model": model, "kind": "chat", "created": created,
                                 "latency_ms": rng.lognormvariate(4, 0.5), "prompt_tokens": 20,
                                 "completion_tokens": 30, "status": status, "error": None if status == 200 else "boom",
                                 "prompt": [{"role": "user", "content": f"question {i}"}],
                                 "response": None if status != 200 else f"answer {i}", "finish_reason": "stop",
                                 "stream": 0, "choices": None})
                if i % 10 in (0, 3) and status == 200:  # a fifth of each model's answers rated
                    feedback.append({"completion_id": f"chatcmpl-s{seed}-{i}", "model": model,
                                     "rating": 1 if rng.random() < 0.7 else -1, "comment": None, "correction": None,
                                     "created": created + timedelta(seconds=5), "score": None, "choice": None})
            with store.engine.begin() as conn:
                conn.execute(insert(requests_table), requests)
                if feedback:
                    conn.execute(insert(feedback_table), feedback)
    finally:
        store.close()


def fill_registry(db_url: str, name: str, paths: list[Path]) -> None:
    """One version per path; the first is production, the last candidate."""
    registry = Registry(db_url)
    try:
        for i, path in enumerate(paths):
            alias = "production" if i == 0 else ("candidate" if i == len(paths) - 1 else None)
            registry.register(ModelVersion(name, 0, str(path), base_model="smollm2-135m-instruct",
                                           parent_version=i or None, source=f"round {i}" if i else "by hand",
                                           eval={"metrics": {"accuracy": 0.6 + 0.05 * i}}),
                              alias=alias, actor="sample")
    finally:
        registry.close()


def write_study(out: Path, n_trials: int = 24, name: str = "support-tune") -> Path:
    """A real Optuna study where ``tuneloop tune`` keeps one (``OUT/study.db``): lr and rank vs a loss."""
    import math

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}",
                                direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: 1.2 + (math.log10(t.suggest_float("learning_rate", 1e-5, 1e-2, log=True)) + 3) ** 2 / 4
                   + 0.3 / t.suggest_int("lora_r", 4, 64, log=True), n_trials=n_trials)
    return out / "study.db"


def build_site(root: Path, n_runs: int = 3, n_requests: int = 200, n_evals: int = 1, steps: int = 60,
               progress=None) -> dict:
    """A folder the dashboard can show: ``runs/`` (the last one still training), evals, a store, a registry.

    Returns {"runs", "db", "eval_dir"}; ``progress(n)`` is called as runs are written (for a tqdm bar).
    """
    root = Path(root)
    runs, data = root / "runs", root / "prepared"
    write_data_report(data)
    for i in range(n_runs):
        finished = i < n_runs - 1
        write_run(runs, f"run-{i:04d}", steps if finished else 5, finished=finished, seed=i, data_dir=data)
        if progress:
            progress(1)
    for i in range(n_evals):
        write_eval(root / "evals" / f"eval-{i:04d}", str(runs / f"run-{i % max(n_runs, 1):04d}"),
                   "smollm2-135m-instruct")
    db = f"sqlite:///{root}/serve.db"
    fill_store(db, n_requests)
    fill_registry(db, "support", [runs / f"run-{i:04d}" for i in range(min(n_runs, 3))])
    return {"runs": runs, "db": db, "eval_dir": root}
