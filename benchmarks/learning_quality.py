"""Learning quality: the same recipe in tuneloop and TRL on Banking77, scored by exact label.

    python benchmarks/learning_quality.py                 # 2,000 training chats, 1 epoch (the issue's recipe)
    python benchmarks/learning_quality.py --quick         # 400 chats, 200 test queries (a smoke run)
    python benchmarks/learning_quality.py --precision fp32   # both sides in fp32, as on AVX2-only CPUs

Speed only counts at equal learning, so this sits beside the throughput benchmarks: a change that
makes tuneloop faster by taking fewer or worse optimizer steps shows up here as lost accuracy.

The recipe is the one a TRL user writes: LoRA r16 / alpha 32 / dropout 0.05 on all linear layers,
8 examples per optimizer step, learning rate 2e-4 with TRL's linear decay and no warmup, 1 epoch,
max length 256, loss on the answer only. Data: Banking77 from ``../shared`` through ``tuneloop data
prepare --task classification`` (user = the query, assistant = the intent label), a seeded random
sample of N training chats from the prepared train split (the splits keep the CSV's intent order, so
"the first N" would cover a fraction of the intents); accuracy on the whole prepared test split.

Each side trains in its own subprocess (peak RSS is its own): tuneloop through ``tuneloop.train.
run_training`` with the recipe's defaults (padding-free packing, precision auto); TRL through
``SFTTrainer`` with its defaults plus the recipe, conversational prompt/completion data (TRL then
puts the loss on the completion only, as tuneloop does), bf16 only where the CPU has it. Then one
scorer, the same code for both adapters and the untrained base: greedy answers, correct only when the
answer is exactly the label (after stripping whitespace): no nearest-label matching.
Per optimizer step: training loss (both sides log every step). Per epoch: validation loss and test
accuracy (epoch 0 = the base model). Writes ``results/learning_quality[_quick][_fp32].json`` and a plot.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_DIR, PYTHON, RESULTS, SHARED_DATA, emit, ensure_workdir, peak_rss_gb, run_worker, write_result  # noqa: E402,E501

BANKING77 = SHARED_DATA / "banking77" / "train.csv"
RECIPE = {"lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
          "batch_size": 8, "learning_rate": 2e-4, "lr_scheduler": "linear", "warmup_ratio": 0.0,
          "epochs": 1, "max_seq_len": 256, "seed": 0}
SIZES = {"full": {"train": 2000, "validation": 300, "test": None}, "quick": {"train": 400, "validation": 100, "test": 200}}


# ---------------------------------------------------------------------------------------------
# Data


def prepare(work: Path, sizes: dict) -> dict:
    """Banking77 through ``data prepare`` (cached), then the benchmark's subsets as chat JSONL."""
    from tuneloop.data.prepare import PrepareOptions, prepare as run_prepare

    prepared = work / "banking77-prepared"
    if not (prepared / "test.jsonl").is_file():
        run_prepare([BANKING77], prepared, PrepareOptions(task="classification", text_column="text",
                                                          label_column="category", seed=0))
    out = work / f"lq-{sizes['train']}"
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, limit in (("train", sizes["train"]), ("validation", sizes["validation"]), ("test", sizes["test"])):
        rows = [json.loads(x) for x in (prepared / f"{split}.jsonl").read_text().splitlines() if x.strip()]
        # The prepared splits keep Banking77's order (sorted by intent): a seeded sample, not the first N.
        rows = random.Random(0).sample(rows, limit) if limit and limit < len(rows) else rows
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"messages": r["messages"], "label": r.get("label")}) + "\n" for r in rows))
        files[split] = str(path)
        files[f"n_{split}"] = len(rows)
    return files


def read_chats(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


# ---------------------------------------------------------------------------------------------
# Workers (each in its own process)


def train_tuneloop(args) -> dict:
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.paths import read_jsonl
    from tuneloop.train import run_training

    r = RECIPE
    train = {k: r[k] for k in ("batch_size", "learning_rate", "lr_scheduler", "warmup_ratio", "epochs",
                               "max_seq_len", "seed")}
    train.update(eval_every=10**6, save_every=10**6)
    if args.precision != "auto":
        train["precision"] = args.precision
    recipe = recipe_from_dict({"name": "tuneloop", "model": "smollm2-135m-instruct", "method": "lora",
                               "output_dir": args.out, "data": {"train": args.train}, "lora": r["lora"],
                               "train": train, "tracking": {"backend": "none"}})
    run_dir = Path(run_training(recipe))
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = [m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl")]
    return {"side": "tuneloop", "adapter": str(run_dir / "adapter"), "steps": summary["steps"],
            "examples_per_step": summary["examples_per_step"], "train_s": summary["train_seconds"],
            "peak_rss_gb": round(peak_rss_gb(), 3), "precision": summary["precision"],
            "loss_per_step": losses, "final_train_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4)}


def train_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tuneloop.models.estimate import bf16_supported
    from tuneloop.models.loading import load_tokenizer, resolve_model

    r = RECIPE
    torch.manual_seed(r["seed"])
    path = resolve_model("smollm2-135m-instruct").path
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [{"prompt": c["messages"][:-1], "completion": c["messages"][-1:]} for c in read_chats(args.train)]
    bf16 = bf16_supported() if args.precision == "auto" else args.precision == "bf16"
    config = SFTConfig(output_dir=args.out, per_device_train_batch_size=r["batch_size"],
                       num_train_epochs=r["epochs"], learning_rate=r["learning_rate"],
                       lr_scheduler_type=r["lr_scheduler"], warmup_steps=0, max_length=r["max_seq_len"],
                       seed=r["seed"], use_cpu=True, bf16=bf16, save_strategy="no", eval_strategy="no",
                       report_to="none", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)
    lora = LoraConfig(r=r["lora"]["r"], lora_alpha=r["lora"]["alpha"], lora_dropout=r["lora"]["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=lora)
    start = time.perf_counter()
    output = trainer.train()
    train_s = time.perf_counter() - start
    rss = peak_rss_gb()
    trainer.model.save_pretrained(Path(args.out) / "adapter")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"side": "trl", "adapter": str(Path(args.out) / "adapter"), "steps": output.global_step,
            "examples_per_step": r["batch_size"], "train_s": round(train_s, 2), "peak_rss_gb": round(rss, 3),
            "precision": "bf16" if bf16 else "fp32", "loss_per_step": losses,
            "final_train_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "settings": {k: v for k, v in config.to_dict().items()
                         if k in ("gradient_checkpointing", "packing", "bf16", "lr_scheduler_type", "warmup_steps",
                                  "weight_decay", "max_grad_norm", "completion_only_loss", "assistant_only_loss")}}


def score(args) -> dict:
    """Exact-label accuracy (greedy) and validation loss of the base model or base + an adapter."""
    import torch

    from tuneloop.models.generation import generate_chat
    from tuneloop.models.loading import load_model, load_tokenizer, resolve_model
    from train_common import validation_loss

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = load_model(resolve_model("smollm2-135m-instruct"), dtype=torch.float32)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
    model.eval()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    test = read_chats(args.test)
    labels = sorted({c["label"] for c in read_chats(args.train)} | {c["label"] for c in test})
    longest = max(len(tokenizer(label)["input_ids"]) for label in labels)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision != "fp32" and _native_bf16()):
        answers = generate_chat(model, tokenizer, [c["messages"][:-1] for c in test],
                                max_new_tokens=longest + 2, batch_size=32)
    exact = [a.text.strip() == c["label"] for a, c in zip(answers, test)]
    is_label = [a.text.strip() in labels for a in answers]
    validation = read_chats(args.validation)
    val_loss = validation_loss(model, tokenizer, [c["messages"] for c in validation])
    return {"accuracy": round(sum(exact) / len(exact), 4), "n": len(exact),
            "no_label": sum(1 for x in is_label if not x), "validation_loss": round(val_loss, 4),
            "score_s": round(time.perf_counter() - start, 1),
            "examples": [{"query": c["messages"][-2]["content"], "label": c["label"], "answer": a.text}
                         for a, c in list(zip(answers, test))[:5]]}


def _native_bf16() -> bool:
    from tuneloop.models.estimate import bf16_supported

    return bf16_supported()


# ---------------------------------------------------------------------------------------------
# The comparison


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for side in ("tuneloop", "trl"):
        losses = result["sides"][side]["loss_per_step"]
        left.plot(range(1, len(losses) + 1), losses, label=side, alpha=0.8)
        acc = [result["base"]["accuracy"], result["sides"][side]["scored"]["accuracy"]]
        right.plot([0, RECIPE["epochs"]], acc, marker="o", label=side)
    left.set(xlabel="optimizer step", ylabel="training loss (answer tokens)", yscale="log",
             title="training loss per step")
    right.set(xlabel="epoch", ylabel="exact-label accuracy on the test split", title="accuracy per epoch")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cached(path: Path, compute, fresh: bool = False) -> dict:
    """The untrained base model scores the same every time: keep its result beside the data."""
    if path.is_file() and not fresh:
        return json.loads(path.read_text())
    result = compute()
    if "error" not in result:
        path.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32"))
    parser.add_argument("--fresh", action="store_true", help="re-score the base model (cached otherwise)")
    parser.add_argument("--worker", choices=("tuneloop", "trl", "score"), help=argparse.SUPPRESS)
    for name in ("train", "validation", "test", "out", "adapter"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        emit({"tuneloop": train_tuneloop, "trl": train_trl, "score": score}[args.worker](args))
        return
    if not BANKING77.is_file():
        sys.exit(f"Banking77 not found at {BANKING77} (../shared beside the checkout)")
    mode = "quick" if args.quick else "full"
    work = ensure_workdir()
    files = prepare(work, SIZES[mode])
    script = str(Path(__file__).resolve())
    data_args = ["--train", files["train"], "--validation", files["validation"], "--test", files["test"],
                 "--precision", args.precision]
    name = "learning_quality" + ("_quick" if args.quick else "") + ("_fp32" if args.precision == "fp32" else "")
    result = {"mode": mode, "recipe": RECIPE, "data": files, "sides": {}}
    print("scoring the base model", flush=True)
    result["base"] = cached(work / f"lq-base-{mode}-{args.precision}.json",
                            lambda: run_worker([script, "--worker", "score", *data_args], timeout=3600),
                            fresh=args.fresh)
    for side in ("tuneloop", "trl"):
        print(f"training {side}", flush=True)
        out = work / f"lq-run-{mode}-{args.precision}-{side}"
        trained = run_worker([script, "--worker", side, *data_args, "--out", str(out)], timeout=4 * 3600)
        if "error" not in trained:
            print(f"scoring {side}", flush=True)
            trained["scored"] = run_worker([script, "--worker", "score", *data_args, "--adapter",
                                            trained["adapter"]], timeout=3600)
        result["sides"][side] = trained
        write_result(name, result)  # keep what was measured if a later side fails
    t, b = result["sides"]["tuneloop"], result["sides"]["trl"]
    if "scored" in t and "scored" in b:
        result["verdict"] = {
            "same_optimizer_steps": t["steps"] == b["steps"],
            "accuracy_tuneloop_minus_trl": round(t["scored"]["accuracy"] - b["scored"]["accuracy"], 4),
            "accuracy_at_least_trl": t["scored"]["accuracy"] >= b["scored"]["accuracy"],
            "wall_time_ratio_trl_over_tuneloop": round(b["train_s"] / t["train_s"], 2),
            "peak_rss_ratio_tuneloop_over_trl": round(t["peak_rss_gb"] / b["peak_rss_gb"], 3),
        }
        plot(result, RESULTS / f"{name}.png")
    print(json.dumps({k: v for k, v in result.items() if k != "sides"} | {
        s: {k: v for k, v in r.items() if k != "loss_per_step"} for s, r in result["sides"].items()},
        indent=1, default=str)[:6000])
    write_result(name, result)


if __name__ == "__main__":
    main()
