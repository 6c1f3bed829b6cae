"""Reproduce the hyper-parameter sweep behind :class:`QuickstartSettings`' defaults.

    python -m tuneloop.quickstart.sweep --out /tmp/sweep                # the configurations below
    python -m tuneloop.quickstart.sweep --out /tmp/sweep --config '{"epochs": 3, "batch_size": 4}'

Prepares the bundled data once, then for each configuration trains a LoRA run and scores the tuned
model on the held-out questions (the base model scores 0% fact accuracy, so it is not re-evaluated).
Prints one line per configuration: held-out fact accuracy, ROUGE-L, steps, trained tokens, final
loss and seconds. On a GPU machine each configuration takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from tuneloop.evaluate import run_eval
from tuneloop.paths import write_json_atomic
from tuneloop.quickstart.make_dataset import DATA_DIR, HELDOUT_FILE
from tuneloop.quickstart.pipeline import QuickstartSettings, prepare_data, training_recipe
from tuneloop.train import run_training

# The configurations quoted beside QuickstartSettings' fields (everything else at its default).
# batch_size counts examples per optimizer step (padding-free packed).
CONFIGS = (
    {"epochs": 2, "batch_size": 4, "learning_rate": 3e-3},
    {"epochs": 2, "batch_size": 4, "learning_rate": 3e-3, "lora_dropout": 0.1},
    {"epochs": 2, "batch_size": 2, "learning_rate": 3e-3},
    {"epochs": 2, "batch_size": 2, "learning_rate": 2e-3},
    {"epochs": 2, "batch_size": 2, "learning_rate": 2e-3, "seed": 1},
    {"epochs": 2, "batch_size": 2, "learning_rate": 2e-3, "seed": 2},
    {"epochs": 2, "batch_size": 2, "learning_rate": 1.5e-3},
    {"epochs": 2, "batch_size": 2, "learning_rate": 1.5e-3, "seed": 1},
    {"epochs": 2, "batch_size": 1, "learning_rate": 1.5e-3},
    {"epochs": 3, "batch_size": 2, "learning_rate": 1.5e-3},  # the default
    {"epochs": 3, "batch_size": 2, "learning_rate": 1.5e-3, "seed": 1},
    {"epochs": 3, "batch_size": 2, "learning_rate": 1.5e-3, "seed": 2},
)


def score(config: dict, out_dir: Path, prepared: Path) -> dict:
    started = time.perf_counter()
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(prepared, out_dir / "data")
    run_dir = Path(run_training(training_recipe(out_dir, QuickstartSettings(**config))))
    result = run_eval(str(run_dir), DATA_DIR / HELDOUT_FILE, out_dir=out_dir / "eval", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"config": config, "fact_accuracy": round(result["metrics"]["fact_accuracy"], 3),
            "rougeL": round(result["metrics"]["rougeL"], 3), "steps": summary.get("steps"),
            "trained_tokens": summary.get("trained_tokens"), "final_loss": summary.get("final_loss"),
            "seconds": round(time.perf_counter() - started)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="Working directory (one folder per config).")
    parser.add_argument("--config", action="append", type=json.loads,
                        help="A JSON object of QuickstartSettings fields; repeatable. Default: CONFIGS.")
    parser.add_argument("--results", type=Path, help="Also write the lines as one JSON file (a list).")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    prepare_data(args.out / "prepared", QuickstartSettings())
    lines = []
    for i, config in enumerate(args.config or CONFIGS):
        lines.append(score(config, args.out / f"config-{i}", args.out / "prepared" / "data"))
        print(json.dumps(lines[-1]), flush=True)
        if args.results:
            write_json_atomic(args.results, lines)


if __name__ == "__main__":
    main()
