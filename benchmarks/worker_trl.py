"""One TRL ``SFTTrainer`` LoRA run in this process; prints its measurements as one JSON line.

Called by ``bench_train.py`` (one subprocess per run, so peak RSS is this run's own). Variants:

- ``defaults``: TRL 1.16's own performance defaults: bf16 autocast on (``SFTConfig.bf16`` defaults to
  True), gradient checkpointing on, no packing (each batch padded to its longest example).
- ``defaults_fp32``: the same with bf16 off (on CPUs without native bf16, autocast is emulated).
- ``packing``: the defaults plus ``packing=True`` (BFD packing, which TRL runs padding-free).
- ``best``: TRL's best CPU settings: packing, no gradient checkpointing, bf16 only if native.

Hyperparameters (learning rate, schedule, LoRA, batch, max length) are the shared ones in
``train_common`` so only the performance settings differ from the tuneloop side. The data is given in
conversational prompt/completion form (prompt = every turn before the last assistant turn), so TRL
puts loss on the assistant reply only, as tuneloop does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, peak_rss_gb  # noqa: E402
from train_common import HYPER, LORA, count_tokens, validation_loss  # noqa: E402

VARIANTS = ("defaults", "defaults_fp32", "packing", "best")


def variant_settings(variant: str, native_bf16: bool) -> dict:
    """The SFTConfig fields that differ between variants (everything else is shared)."""
    if variant == "defaults":
        return {"bf16": True}  # TRL's default; stated explicitly so the JSON shows it
    if variant == "defaults_fp32":
        return {"bf16": False}
    if variant == "packing":
        return {"bf16": True, "packing": True}
    if variant == "best":
        return {"bf16": native_bf16, "packing": True, "gradient_checkpointing": False}
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def prompt_completion(chats: list[list[dict]]) -> list[dict]:
    rows = []
    for messages in chats:
        if messages[-1]["role"] != "assistant":
            raise ValueError("benchmark chats must end with an assistant turn")
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return rows


def sft_config(variant: str, out_dir: str, epochs: float, max_steps: int | None, native_bf16: bool,
               batch_size: int | None = None, row_len: int | None = None):
    """``row_len``: packed sequence length for the packing variants (default: the max length)."""
    from trl import SFTConfig

    settings = {
        "output_dir": out_dir, "per_device_train_batch_size": batch_size or HYPER["batch_size"],
        "gradient_accumulation_steps": HYPER["gradient_accumulation"], "num_train_epochs": epochs,
        "max_steps": max_steps or -1, "learning_rate": HYPER["learning_rate"],
        "lr_scheduler_type": HYPER["lr_scheduler"], "warmup_steps": HYPER["warmup_ratio"],
        "weight_decay": HYPER["weight_decay"], "max_grad_norm": HYPER["max_grad_norm"],
        "max_length": row_len or HYPER["max_seq_len"], "seed": HYPER["seed"], "use_cpu": True,
        "save_strategy": "no", "eval_strategy": "no", "report_to": "none", "logging_steps": 5,
        "dataloader_num_workers": 0, "disable_tqdm": True,
        **variant_settings(variant, native_bf16),
    }
    return SFTConfig(**settings), settings


def step_timer(log: list):
    """A TrainerCallback recording each optimizer step's wall time (for steady-state speed)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            log.append(time.perf_counter() - self.start)

    return StepTimer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--data", required=True, help="folder with train.jsonl and validation.jsonl")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (packed rows if packing)")
    parser.add_argument("--row-len", type=int, default=None, help="packed row length (packing variants)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from tuneloop.models.estimate import bf16_supported
    from tuneloop.models.loading import load_tokenizer, resolve_model

    torch.manual_seed(HYPER["seed"])
    load_start = time.perf_counter()
    path = resolve_model("smollm2-135m-instruct").path
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    train = [json.loads(x)["messages"] for x in Path(args.data, "train.jsonl").read_text().splitlines()]
    val = [json.loads(x)["messages"] for x in Path(args.data, "validation.jsonl").read_text().splitlines()]
    config, settings = sft_config(args.variant, args.out, args.epochs, args.max_steps, bf16_supported(),
                                  args.batch_size, args.row_len)
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(prompt_completion(train)),
                         processing_class=tokenizer, peft_config=peft_config)
    step_log: list = []
    trainer.add_callback(step_timer(step_log))
    setup_s = time.perf_counter() - load_start

    start = time.perf_counter()
    output = trainer.train()
    train_s = time.perf_counter() - start
    rss_after_train = peak_rss_gb()

    steps = output.global_step
    trained = trainer.model
    trained.to(torch.float32)  # bf16 runs may hold the adapter in bf16; measure every side in fp32
    val_loss = validation_loss(trained, tokenizer, val)
    counted = count_tokens(tokenizer, train)
    epochs_done = steps / max(len(trainer.get_train_dataloader()), 1)
    # Steady state: steps after the first two, at the epoch's mean tokens per step.
    tokens_per_step = counted["tokens"] * epochs_done / max(steps, 1)
    steady = (round(tokens_per_step * len(step_log[2:]) / sum(step_log[2:]), 2) if len(step_log) > 2 else None)
    emit({
        "side": "trl", "variant": args.variant, "settings": settings, "steps": steps,
        "epochs_done": round(epochs_done, 3), "train_s": round(train_s, 2), "setup_s": round(setup_s, 2),
        "tokens_per_epoch": counted["tokens"], "supervised_tokens_per_epoch": counted["supervised_tokens"],
        "examples": counted["examples"],
        "tokens_per_s": round(counted["tokens"] * epochs_done / train_s, 2),
        "steady_tokens_per_s": steady, "first_step_s": round(step_log[0], 2) if step_log else None,
        "peak_rss_gb": round(rss_after_train, 3), "final_train_loss": round(output.training_loss, 4),
        "validation_loss": round(val_loss, 4), "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    })


if __name__ == "__main__":
    main()
