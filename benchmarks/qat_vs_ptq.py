"""Quantization-aware training vs post-training quantization, int4 weights (issue 10).

Two LoRA fine-tunes of the same model on the bundled store-support chats, identical but for
``quantization_aware``: (A) float training, then post-training int4 quantization; (B) QAT for int4.
Held-out loss (assistant tokens of the held-out store questions) of: A in float, A quantized (PTQ),
and B quantized. QAT pays when |B_int4 - A_float| < |A_int4 - A_float|. Also the sizes on disk.

    .venv/bin/python benchmarks/qat_vs_ptq.py [--model M] [--steps N]

Writes benchmarks/results/qat.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402


def prepare(work: Path, model: str) -> Path:
    from tuneloop.data.prepare import PrepareOptions, prepare as prepare_data
    from tuneloop.quickstart.make_dataset import DATA_DIR, TRAIN_FILE

    options = PrepareOptions(task="sft", split=(0.9, 0.1, 0.0), seed=0, model=model, max_seq_len=256)
    prepare_data([DATA_DIR / TRAIN_FILE], work / "data", options, progress=False)
    return work / "data"


def train(work: Path, data: Path, model: str, steps: int, qat: bool, batch_size: int) -> Path:
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.train import run_training

    recipe = recipe_from_dict({
        "name": "qat" if qat else "float", "model": model, "method": "lora", "output_dir": str(work / "runs"),
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl")},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "train": {"max_steps": steps, "batch_size": batch_size, "learning_rate": 1e-3, "max_seq_len": 256,
                  "eval_every": steps, "save_every": 10**6, "seed": 0},
        "tracking": {"backend": "none"},
        "quantization_aware": {"weights": "int4", "activations": "int8", "group_size": 32} if qat else None,
    })
    return run_training(recipe)


def heldout_loss(model_dir: Path) -> float:
    from tuneloop.evaluate.perplexity import reference_nll
    from tuneloop.models.loading import load_model_and_tokenizer
    from tuneloop.paths import read_jsonl
    from tuneloop.quickstart.make_dataset import DATA_DIR, HELDOUT_FILE

    conversations = [r["messages"] for r in read_jsonl(DATA_DIR / HELDOUT_FILE)]
    model, tokenizer = load_model_and_tokenizer(model_dir)
    import torch

    with torch.inference_mode():
        sums, counts = reference_nll(model, tokenizer, conversations, batch_size=16)
    return sum(sums) / sum(counts)


def size_mb(directory: Path) -> float:
    files = [p for p in directory.iterdir() if p.suffix in (".safetensors", ".pt")]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=4, help="packed rows of 256 tokens per step")
    args = parser.parse_args()
    from tuneloop.export import export_model

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = prepare(work, args.model)
        float_run = train(work, data, args.model, args.steps, False, args.batch_size)
        qat_run = train(work, data, args.model, args.steps, True, args.batch_size)
        export_model(float_run, "safetensors", work / "float")
        export_model(float_run, "quantized", work / "ptq", quantize="int4")
        export_model(qat_run, "quantized", work / "qat")
        losses = {name: round(heldout_loss(work / name), 4) for name in ("float", "ptq", "qat")}
        sizes = {name: size_mb(work / name) for name in ("float", "ptq", "qat")}
    gap_ptq = abs(losses["ptq"] - losses["float"])
    gap_qat = abs(losses["qat"] - losses["float"])
    result = {
        "model": args.model, "steps": args.steps, "batch_size": args.batch_size, "scheme": "int4 weights (group 32), int8 dynamic activations",
        "heldout_loss": {"float_finetune": losses["float"], "ptq_int4": losses["ptq"], "qat_int4": losses["qat"]},
        "gap_to_float": {"ptq_int4": round(gap_ptq, 4), "qat_int4": round(gap_qat, 4)},
        "qat_closer_than_ptq": gap_qat < gap_ptq,
        "size_mb": {"float_safetensors": sizes["float"], "ptq_int4": sizes["ptq"], "qat_int4": sizes["qat"]},
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = write_result("qat", result)
    print(f"held-out loss: float {losses['float']}, PTQ int4 {losses['ptq']} (gap {gap_ptq:.4f}), "
          f"QAT int4 {losses['qat']} (gap {gap_qat:.4f}); sizes MB {sizes}; -> {path}")


if __name__ == "__main__":
    main()
