"""lm-evaluation-harness tasks on the evaluated model and its baseline: a forgetting check in one flag.

``tuneloop eval ... --tasks arc_easy,hellaswag,my_task.yaml`` runs each task through the harness's
Python API (``lm_eval.simple_evaluate`` on an ``HFLM`` wrapping the model tuneloop already loaded, so
an adapter run is scored as it is served). A ``.yaml`` entry is a custom task file; its folder joins the
task search path, so a task over local JSONL runs offline::

    task: support_facts
    dataset_path: json
    dataset_kwargs: {data_files: {test: /abs/path/support_facts.jsonl}}
    test_split: test
    output_type: multiple_choice
    doc_to_text: "Question: {{question}}\\nAnswer:"
    doc_to_choice: "{{choices}}"
    doc_to_target: "{{answer}}"
    metric_list: [{metric: acc}]

Built-in tasks download their data from the Hugging Face Hub on first use; with no network they
work only when the Hub cache already holds them (``HF_DATASETS_OFFLINE=1`` is set when
``TUNELOOP_OFFLINE`` is, so a missing dataset fails fast). eval.json's ``harness`` holds, per task
and metric, the model's and baseline's value, the harness's standard error and the delta.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tuneloop.errors import UserError

HARNESS_BOOTSTRAP_ITERS = 1000


def parse_tasks(spec: str | list[str]) -> tuple[list[str], list[str]]:
    """(task names, extra include paths) from ``"arc_easy,custom.yaml"``; YAML files are checked now."""
    items = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    names, include = [], []
    for item in items:
        if item.endswith((".yaml", ".yml")):
            path = Path(item)
            if not path.is_file():
                raise UserError(f"{path}: no such task file", where="--tasks", hint="give a path to a task YAML")
            try:
                config = yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise UserError(f"{path}: not valid YAML ({e})", where="--tasks") from None
            if not isinstance(config, dict) or not isinstance(config.get("task"), str):
                raise UserError(f"{path}: no `task:` name", where="--tasks",
                                hint="a harness task YAML starts with `task: NAME`")
            names.append(config["task"])
            include.append(str(path.resolve().parent))
        else:
            names.append(item)
    if not names:
        raise UserError("no task given", where="--tasks", hint="e.g. --tasks arc_easy,hellaswag or --tasks my.yaml")
    return names, sorted(set(include))


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("lm-evaluation-harness is not installed", where="--tasks",
                        hint="pip install 'tuneloop[harness]' (or pip install lm_eval)") from None


def run_tasks(model, tokenizer, tasks: list[str], include: list[str], batch_size: int = 8,
              limit: int | None = None) -> dict[str, dict[str, dict]]:
    """``{task: {metric: {"value", "stderr"}}}`` for one loaded model (a PEFT model too)."""
    _require_lm_eval()
    if os.environ.get("TUNELOOP_OFFLINE"):
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown harness task(s): {', '.join(unknown)}", where="--tasks",
                        hint="see `lm_eval ls tasks`, or pass a task YAML file")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False,
                          bootstrap_iters=HARNESS_BOOTSTRAP_ITERS)
    return {task: _metrics(values) for task, values in out["results"].items()}


def _metrics(values: dict) -> dict[str, dict]:
    """The harness's ``"acc,none": 0.5, "acc_stderr,none": 0.1`` as ``{"acc": {"value", "stderr"}}``."""
    metrics = {}
    for key, value in values.items():
        name, _, _filter = key.partition(",")
        if name.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        stderr = values.get(f"{name}_stderr,{_filter}") if _filter else values.get(f"{name}_stderr")
        metrics[name] = {"value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    return metrics


def compare_tasks(model: dict, baseline: dict | None) -> dict:
    """eval.json's ``harness``: per task and metric the model, baseline, delta and both stderrs."""
    table = {}
    for task, metrics in model.items():
        table[task] = {}
        for name, row in metrics.items():
            base = (baseline or {}).get(task, {}).get(name)
            table[task][name] = {"model": row["value"], "model_stderr": row["stderr"],
                                 "baseline": base["value"] if base else None,
                                 "baseline_stderr": base["stderr"] if base else None,
                                 "delta": row["value"] - base["value"] if base else None}
    return table
