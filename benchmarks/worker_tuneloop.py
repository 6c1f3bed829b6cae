"""One tuneloop LoRA SFT run in this process; prints its measurements as one JSON line.

Called by ``bench_train.py`` and ``bench_levers.py`` (one subprocess per run, so peak RSS is this
run's own). It uses the engine's own ``setup`` and ``train`` (``tuneloop.train.run``) and times
``train`` alone, as ``Trainer.train()`` is timed on the TRL side. In-loop validation is off on both
sides; the validation loss is measured afterwards by the shared ``train_common.validation_loss``.

Levers the recipe exposes are set through it (packing, precision, gradient checkpointing,
``compile``: torch.compile per decoder layer, ``fused_lora``: fused LoRA linears). Levers it
does not expose are applied here around the engine, without editing it:

- ``--head full``: the usual full-sequence LM head + cross-entropy (logits for every position)
  instead of tuneloop's supervised-positions-only chunked loss;
- ``--threads N``: intra-op threads, set after the engine's own choice (one per physical core);
- ``--stock-dropout``: PEFT's ``nn.Dropout`` for LoRA dropout instead of ``train/dropout.py``;
- ``--sdpa-attention``: every packed bucket through PyTorch SDPA (its CPU flash kernel) instead of
  plain matmuls for short samples (``train/attention.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, peak_rss_gb  # noqa: E402
from train_common import HYPER, LORA, count_tokens, validation_loss  # noqa: E402


def make_recipe(args):
    from tuneloop.config.recipe import DataConfig, LoraConfig, Recipe, TrackingConfig, TrainConfig

    train = TrainConfig(
        epochs=args.epochs, max_steps=args.max_steps, learning_rate=HYPER["learning_rate"],
        lr_scheduler=HYPER["lr_scheduler"], warmup_ratio=HYPER["warmup_ratio"],
        weight_decay=HYPER["weight_decay"], max_grad_norm=HYPER["max_grad_norm"],
        batch_size=args.batch_size or HYPER["batch_size"], gradient_accumulation=HYPER["gradient_accumulation"],
        max_seq_len=args.row_len or HYPER["max_seq_len"], packing=args.packing, precision=args.precision,
        seed=HYPER["seed"], gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
        fused_lora=args.fused_lora,
        eval_every=10**6, save_every=10**6)
    return Recipe(name=f"bench-{os.getpid()}", model="smollm2-135m-instruct", method="lora",
                  output_dir=args.out, data=DataConfig(train=str(Path(args.data, "train.jsonl"))),
                  lora=LoraConfig(**LORA), train=train, tracking=TrackingConfig(backend="none"))


class FullLogitsLM(torch.nn.Module):
    """The conventional loss, as the lever's baseline: logits at every position, then masked CE."""

    def __init__(self, model, autocast_dtype=None):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype

    def forward(self, input_ids, position_ids, targets):
        from tuneloop.chat.template import IGNORE_INDEX

        with torch.autocast(input_ids.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                 targets.reshape(-1), ignore_index=IGNORE_INDEX,
                                                 reduction="sum")
        return loss, (targets != IGNORE_INDEX).sum()


def time_steps(log: list) -> None:
    """Record (seconds, real tokens) of every optimizer step, to report steady-state speed too."""
    from tuneloop.train import loop

    inner = loop.train_step

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        log.append((time.perf_counter() - start, result.tokens))
        return result

    loop.train_step = timed  # the engine calls loop.train_step through the module, so this is seen


def steady_tokens_per_s(log: list, skip: int = 2) -> float | None:
    """Tokens/s over the steps after the first ``skip`` (warm-up, and compilation with --compile)."""
    rest = log[skip:]
    return round(sum(t for _, t in rest) / sum(s for s, _ in rest), 2) if rest else None


def apply_levers(run, args) -> None:
    if args.head == "full":
        run.loss_model = FullLogitsLM(run.prepared.model, run.precision.autocast)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stock_dropout:
        from tuneloop.train.dropout import FastDropout

        for module in run.prepared.model.modules():
            holder = getattr(module, "lora_dropout", None)
            for name, dropout in (holder.items() if isinstance(holder, torch.nn.ModuleDict) else ()):
                if isinstance(dropout, FastDropout):
                    holder[name] = torch.nn.Dropout(dropout.p)
    if args.sdpa_attention:
        from tuneloop.train import attention

        attention.MATMUL_ATTENTION_MAX_LEN = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with train.jsonl and validation.jsonl")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="examples per optimizer step")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--row-len", type=int, default=None, help="packed row length (default: max length)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--head", default="supervised", choices=("supervised", "full"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fused-lora", action=argparse.BooleanOptionalAction, default=True,
                        help="train.fused_lora (--no-fused-lora: PEFT's own LoRA forward)")
    parser.add_argument("--stock-dropout", action="store_true")
    parser.add_argument("--sdpa-attention", action="store_true")
    parser.add_argument("--no-validation", action="store_true", help="skip the validation loss (speed only)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from tuneloop.train import run as engine

    step_log: list = []
    time_steps(step_log)
    setup_start = time.perf_counter()
    recipe = make_recipe(args)
    run = engine.setup(recipe)
    apply_levers(run, args)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    from tuneloop.train.tracking import MetricsLog

    run.metrics = MetricsLog(run.run_dir / "metrics.jsonl", None)
    setup_s = time.perf_counter() - setup_start
    import psutil

    rss_after_setup = psutil.Process().memory_info().rss / 1024**3

    start = time.perf_counter()
    engine.train(run, None)
    train_s = time.perf_counter() - start
    rss_after_train = peak_rss_gb()

    train = [json.loads(x)["messages"] for x in Path(args.data, "train.jsonl").read_text().splitlines()]
    val = [json.loads(x)["messages"] for x in Path(args.data, "validation.jsonl").read_text().splitlines()]
    model = run.prepared.model
    model.to(torch.float32)  # a bf16 base is measured in fp32, like every side
    val_loss = None if args.no_validation else validation_loss(model, run.tokenizer, val)
    counted = count_tokens(run.tokenizer, train)
    from tuneloop.train.loop import steps_per_epoch

    epochs_done = run.state.step / steps_per_epoch(len(run.data.train_rows), run.rows_per_step)
    settings = {**recipe.train.model_dump(mode="json"), "lora": recipe.lora.model_dump(mode="json"),
                "head": args.head, "compile": args.compile, "threads": torch.get_num_threads(),
                "resolved_precision": run.precision.name}
    emit({
        "side": "tuneloop", "settings": settings, "steps": run.state.step, "rows": len(run.data.train_rows),
        "epochs_done": round(epochs_done, 3), "train_s": round(train_s, 2), "setup_s": round(setup_s, 2),
        "tokens_per_epoch": counted["tokens"], "supervised_tokens_per_epoch": counted["supervised_tokens"],
        "examples": counted["examples"], "engine_tokens_seen": run.state.tokens_seen,
        "tokens_per_s": round(counted["tokens"] * epochs_done / train_s, 2),
        "steady_tokens_per_s": steady_tokens_per_s(step_log),
        "first_step_s": round(step_log[0][0], 2) if step_log else None,
        "peak_rss_gb": round(rss_after_train, 3), "rss_after_setup_gb": round(rss_after_setup, 3),
        "validation_loss": round(val_loss, 4) if val_loss is not None else None, "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    })


if __name__ == "__main__":
    main()
