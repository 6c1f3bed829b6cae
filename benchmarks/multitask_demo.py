"""One LoRA adapter trained on two tasks at once, evaluated on both (issue 10).

Tasks: Banking77 intents (``../shared/data/banking77/train.csv``, a subset) and the bundled store-support
chats. The run logs ``validation_loss/<task>`` per evaluation and each task's token share; afterwards
``tuneloop eval`` runs on each task's held-out data (intent accuracy/F1; store-fact accuracy), base vs
tuned.

    .venv/bin/python benchmarks/multitask_demo.py [--steps 120] [--intents 800]

Writes benchmarks/results/multitask.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"


def banking_subset(path: Path, n: int) -> Path:
    with open(BANKING77, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(0).shuffle(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows[:n])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--intents", type=int, default=800, help="Banking77 rows used")
    parser.add_argument("--eval-samples", type=int, default=100)
    args = parser.parse_args()
    if not BANKING77.is_file():
        sys.exit(f"Banking77 not found at {BANKING77}")
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.data.prepare import PrepareOptions, prepare
    from tuneloop.evaluate import run_eval
    from tuneloop.paths import read_jsonl
    from tuneloop.quickstart.make_dataset import DATA_DIR, HELDOUT_FILE, TRAIN_FILE
    from tuneloop.train import run_training

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv_path = banking_subset(work / "banking77.csv", args.intents)
        prepare([csv_path], work / "intents", PrepareOptions(task="classification", text_column="text",
                                                             label_column="category", model=args.model), progress=False)
        prepare([DATA_DIR / TRAIN_FILE], work / "support", PrepareOptions(task="sft", split=(0.9, 0.1, 0.0),
                                                                          model=args.model), progress=False)
        tasks = [{"name": name, "train": str(work / name / "train.jsonl"),
                  "validation": str(work / name / "validation.jsonl"), "weight": 0.5}
                 for name in ("intents", "support")]
        recipe = recipe_from_dict({
            "name": "multitask", "model": args.model, "method": "lora", "output_dir": str(work / "runs"),
            "data": {"mixture": tasks, "sampling": "weighted"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "train": {"max_steps": args.steps, "batch_size": 8, "learning_rate": 1e-3, "max_seq_len": 256,
                      "eval_every": max(1, args.steps // 4), "save_every": 10**6},
            "tracking": {"backend": "none"},
        })
        run_dir = run_training(recipe)
        summary = json.loads((run_dir / "summary.json").read_text())
        metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "validation_loss/intents" in m]
        evals = {
            "intents": run_eval(str(run_dir), work / "intents" / "test.jsonl", baseline=args.model,
                                max_samples=args.eval_samples, max_new_tokens=16, progress=False),
            "support": run_eval(str(run_dir), DATA_DIR / HELDOUT_FILE, baseline=args.model,
                                max_new_tokens=48, progress=False),
        }
    keys = {"intents": ("accuracy", "f1"), "support": ("fact_accuracy", "rougeL")}
    result = {
        "model": args.model, "steps": args.steps, "sampling": "weighted 0.5/0.5",
        "task_token_share": summary.get("task_token_share"),
        "validation_loss_per_task": {"first": {k: metrics[0][f"validation_loss/{k}"] for k in keys},
                                     "last": {k: metrics[-1][f"validation_loss/{k}"] for k in keys}},
        "eval": {task: {m: {"tuned": e["metrics"].get(m), "base": e["baseline"]["metrics"].get(m)}
                        for m in keys[task]} for task, e in evals.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = write_result("multitask", result)
    print(json.dumps(result, indent=2), f"\n-> {path}")


if __name__ == "__main__":
    main()
