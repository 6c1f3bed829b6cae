"""TPE with pruning vs random search vs the default recipe, at equal wall-clock budget, on Banking77.

Banking77 (``../shared/data/banking77/train.csv``) goes through ``tuneloop data prepare --task
classification``; 2,000 of its training queries are trained on and a fixed slice of its validation
split ranks trials. Each side gets the same budget of ``--minutes``:

- default: one run of the default recipe (LoRA r16, learning rate 2e-4, batch 8, one epoch); its value
  is the best validation loss it reached (it ends early when its epoch takes less than the budget);
- random and tpe: what a user of ``tuneloop tune`` does with the same minutes: a study of
  ``--search-minutes`` (``--trial-steps`` optimizer steps a trial), then one epoch of the best
  trial's recipe in the rest of the budget (stopped when the budget is spent); its value is that
  run's best validation loss. random: a random sampler and no pruner; tpe: TPE and the median
  pruner (the default ``search:`` settings), so bad trials stop after a few evaluations.

The search sides share one space and seed: learning rate log-uniform, LoRA r, alpha, dropout and
target modules. Batch size stays at 8: trials are compared (and pruned) at equal steps, and a step
of batch 16 sees twice the data of a step of batch 8. Lower is better. Results:
``benchmarks/results/tune_banking77.json`` (+ ``tune_banking77.png``).

    python benchmarks/tune_banking77.py --minutes 4 --search-minutes 2 --trial-steps 10   # smoke run
    python benchmarks/tune_banking77.py     # the run README quotes (20 min a side, ~50 min)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, ensure_workdir, write_result  # noqa: E402

SPACE = {
    "train.learning_rate": {"distribution": "log_uniform", "low": 3.0e-5, "high": 3.0e-3},
    "lora.r": {"choices": [4, 8, 16, 32]},
    "lora.alpha": {"choices": [8, 16, 32, 64]},
    "lora.dropout": {"low": 0.0, "high": 0.1},
    "lora.target_modules": {"choices": ["all-linear", ["q_proj", "v_proj"]]},
}


def prepared_data(work: Path, n_train: int, n_validation: int, seed: int = 0) -> dict:
    from tuneloop.data.prepare import PrepareOptions, prepare

    prepared = work / "banking77-prepared"
    if not (prepared / "train.jsonl").is_file():
        prepare([SHARED_DATA / "banking77" / "train.csv"], prepared,
                PrepareOptions(task="classification", text_column="text", label_column="category"))
    out = work / f"banking77-{n_train}-{n_validation}"
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_validation)):
        lines = (prepared / f"{split}.jsonl").read_text().splitlines()
        random.Random(seed).shuffle(lines)
        (out / f"{split}.jsonl").write_text("\n".join(lines[:n]) + "\n")
    return {"train": str(out / "train.jsonl"), "validation": str(out / "validation.jsonl"),
            "test": str(prepared / "test.jsonl")}


def base_recipe(data: dict, out: Path, name: str, eval_every: int) -> dict:
    return {"name": name, "model": "smollm2-135m-instruct", "method": "lora", "output_dir": str(out),
            "data": {"train": data["train"], "validation": data["validation"]},
            "train": {"epochs": 1, "eval_every": eval_every, "save_every": 100_000, "max_seq_len": 256},
            "tracking": {"backend": "none"}}


def run_default(data: dict, out: Path, minutes: float, eval_every: int) -> dict:
    """The default recipe for one epoch, stopped at the budget: the best validation loss it reached."""
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.train import run_training

    recipe = recipe_from_dict(base_recipe(data, out, "default", eval_every))
    deadline = time.time() + minutes * 60
    curve = []

    def on_evaluate(step, metrics):
        curve.append((step, metrics["validation_loss"], round(time.time() - started, 1)))
        return time.time() >= deadline

    started = time.time()
    run_training(recipe, on_evaluate=on_evaluate)
    return {"best_validation_loss": min(v for _, v, _ in curve), "curve": curve,
            "seconds": round(time.time() - started, 1), "trials": 1}


def run_search(data: dict, out: Path, minutes: float, search_minutes: float, sampler: str, pruner: str,
               trial_steps: int, trial_eval_every: int, eval_every: int) -> dict:
    """A study of ``search_minutes``, then one epoch of its best recipe until ``minutes`` are spent."""
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.train import run_training
    from tuneloop.tune.launch import prepare_settings, run_study
    from tuneloop.tune.space import trial_recipe

    started = time.time()
    deadline = started + minutes * 60
    raw = base_recipe(data, out, sampler, trial_eval_every)
    raw["train"] |= {"max_steps": trial_steps, "warmup_ratio": 0.1}
    raw["search"] = {"params": SPACE, "sampler": sampler, "pruner": pruner, "startup_trials": 3, "seed": 0}
    recipe = recipe_from_dict(raw)
    settings = prepare_settings(recipe, f"{sampler} search", out / f"{sampler}-tune", None, None,
                                search_minutes, None)
    summary = run_study(recipe, settings, workers=1, worker_args=[], budget_minutes=search_minutes)
    best = summary["best"]
    search = {"best_trial_loss": None if best is None else best["value"],
              "best_params": None if best is None else best["params"], "counts": summary["counts"],
              "trials": summary["trials"], "seconds": round(time.time() - started, 1),
              "history": [(r["number"], r["state"], r["value"], r["steps"]) for r in summary["rows"]]}
    if best is None:
        return {"best_validation_loss": None, "search": search, "final": None}
    final_raw = base_recipe(data, out / "final", f"{sampler}-final", eval_every)
    final = trial_recipe(recipe_from_dict(final_raw), best["params"], source=f"{sampler} best trial")
    curve = []
    final_started = time.time()

    def on_evaluate(step, metrics):
        curve.append((step, metrics["validation_loss"], round(time.time() - started, 1)))
        return time.time() >= deadline

    run_training(final, on_evaluate=on_evaluate)
    return {"best_validation_loss": min(v for _, v, _ in curve) if curve else None, "search": search,
            "final": {"curve": curve, "seconds": round(time.time() - final_started, 1)},
            "seconds": round(time.time() - started, 1)}


def plot(result: dict, path: Path) -> None:
    """Left: each side's value. Right: validation loss against the side's wall clock (search sides:
    their final epoch, which starts when the study ends)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = result["sides"]
    names = [n for n in ("default", "random", "tpe") if n in sides and sides[n]["best_validation_loss"] is not None]
    colors = {"default": "C7", "random": "C0", "tpe": "C3"}
    values = [sides[n]["best_validation_loss"] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(names, values, color=[colors[n] for n in names])
    for i, v in enumerate(values):
        left.text(i, v, f"{v:.4f}", ha="center", va="bottom")
    left.set(ylabel="best validation loss (lower is better)",
             title=f"Banking77, {result['settings']['minutes']:g} min each")
    left.set_ylim(min(values) * 0.9, max(values) * 1.05)
    for n in names:
        curve = sides[n]["curve"] if n == "default" else sides[n]["final"]["curve"]
        right.plot([t / 60 for _, _, t in curve], [v for _, v, _ in curve], color=colors[n],
                   label=n if n == "default" else f"{n}: best trial's recipe, after the study")
    if "search_minutes" in result["settings"]:
        right.axvline(result["settings"]["search_minutes"], color="k", lw=0.8, ls=":", label="study ends")
    right.set(xlabel="minutes into the side's budget", ylabel="validation loss", yscale="log",
              title="validation loss of the full epoch")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="Wall-clock budget of each side.")
    parser.add_argument("--search-minutes", type=float, default=11.0,
                        help="Of --minutes, the study's share on the search sides (the rest trains its best).")
    parser.add_argument("--trial-steps", type=int, default=30, help="Optimizer steps per search trial.")
    parser.add_argument("--trial-eval-every", type=int, default=5,
                        help="Steps between a trial's evaluations (the pruner decides at each).")
    parser.add_argument("--eval-every", type=int, default=10, help="Steps between evaluations of a full epoch.")
    parser.add_argument("--train", type=int, default=2000, help="Training queries.")
    parser.add_argument("--validation", type=int, default=96, help="Validation queries that rank trials.")
    parser.add_argument("--sides", default="default,random,tpe")
    args = parser.parse_args()
    work = ensure_workdir() / "tune-banking77"
    data = prepared_data(work, args.train, args.validation)
    sides = {}
    for side in args.sides.split(","):
        out = work / f"{side}-{int(time.time())}"
        print(f"== {side}: {args.minutes:g} min", flush=True)
        if side == "default":
            sides[side] = run_default(data, out, args.minutes, args.eval_every)
        else:
            sides[side] = run_search(data, out, args.minutes, args.search_minutes, side,
                                     "median" if side == "tpe" else "none", args.trial_steps, args.trial_eval_every,
                                     args.eval_every)
        print(json.dumps({side: sides[side]["best_validation_loss"]}), flush=True)
    result = {"settings": vars(args), "sides": sides,
              "note": "each side ran alone, one after another; machine.load_average is the load at the end"}
    if all(s in sides for s in ("default", "random", "tpe")):
        values = {k: v["best_validation_loss"] for k, v in sides.items()}
        result["tpe_lowest"] = values["tpe"] is not None and all(
            values["tpe"] <= v for k, v in values.items() if k != "tpe" and v is not None)
    write_result("tune_banking77", result)
    plot(result, RESULTS / "tune_banking77.png")
    print(json.dumps({k: v["best_validation_loss"] for k, v in sides.items()}, indent=2))


if __name__ == "__main__":
    main()
