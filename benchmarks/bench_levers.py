"""What each speed lever contributes on the tuneloop side: one change at a time from tuneloop's default.

The default: packing on, loss and LM head only at supervised positions (chunked), no torch.compile,
one thread per physical core, no gradient checkpointing, precision ``auto`` (bf16 autocast only where
the CPU runs bf16 natively), LoRA dropout with a cheap mask, matmul attention for short packed
samples, fused LoRA linears. Each lever flips one of these (``worker_tuneloop.py`` flags), runs the
same optimizer steps on the same data, and is reported as tokens/s relative to the default run, both
over the whole ``train()`` and in steady state (steps after the first two: warm-up, compilation).

    python benchmarks/bench_levers.py [--quick] [--levers packing_off,compile] [--result levers_fused]

Writes results/levers.json (or results/<--result>.json, for a subset measured on its own).
"""

from __future__ import annotations

import argparse
import time

import bench_data
from bench_train import data_statistics
from common import BENCH_DIR, ensure_workdir, run_worker, write_result
from train_common import HYPER

# name -> (what changes, worker flags); "default" is the reference run
LEVERS = {
    "default": ("tuneloop defaults", []),
    "packing_off": ("no packing: 8 padded rows per step", ["--no-packing"]),
    "full_lm_head": ("LM head + cross-entropy at every position", ["--head", "full"]),
    "compile": ("torch.compile of each decoder layer (train.compile)", ["--compile"]),
    "threads_1": ("1 intra-op thread instead of one per core", ["--threads", "1"]),
    "gradient_checkpointing": ("gradient checkpointing on", ["--gradient-checkpointing"]),
    "bf16_autocast": ("bf16 autocast (emulated where the CPU has no native bf16)", ["--precision", "bf16"]),
    "fp32": ("fp32 matmuls (no bf16 autocast, where the default would use it)", ["--precision", "fp32"]),
    "stock_dropout": ("PEFT's nn.Dropout for LoRA dropout (one bernoulli draw per element)", ["--stock-dropout"]),
    "sdpa_attention": ("PyTorch SDPA (CPU flash kernel) for short packed samples", ["--sdpa-attention"]),
    "unfused_lora": ("PEFT's LoRA forward instead of fused LoRA linears (train.fused_lora off)",
                     ["--no-fused-lora"]),
}
QUICK_LEVERS = ["default", "unfused_lora", "packing_off", "full_lm_head", "stock_dropout", "sdpa_attention",
                "threads_1"]


def default_levers() -> list[str]:
    """Every lever; the precision one is whichever differs from ``auto`` on this machine."""
    from tuneloop.models.estimate import bf16_supported

    skip = "bf16_autocast" if bf16_supported() else "fp32"
    return [name for name in LEVERS if name != skip]


def lever_args(name: str, data_dir, steps: int) -> list[str]:
    flags = LEVERS[name][1]
    out = ensure_workdir() / "runs" / f"lever-{name}"
    return [str(BENCH_DIR / "worker_tuneloop.py"), "--data", str(data_dir), "--out", str(out),
            "--max-steps", str(steps), "--batch-size", str(HYPER["batch_size"]), "--no-validation", *flags]


def relative(runs: dict) -> dict:
    base = runs.get("default")
    table = {}
    for name, r in runs.items():
        row = {"change": LEVERS[name][0], "flags": LEVERS[name][1]}
        if "error" in r:
            table[name] = {**row, "error": r["error"]}
            continue
        row.update({k: r.get(k) for k in ("tokens_per_s", "steady_tokens_per_s", "peak_rss_gb", "first_step_s",
                                          "train_s", "steps")})
        if base and "error" not in base:
            row["speed_vs_default"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
            if r.get("steady_tokens_per_s") and base.get("steady_tokens_per_s"):
                row["steady_speed_vs_default"] = round(r["steady_tokens_per_s"] / base["steady_tokens_per_s"], 3)
            row["memory_vs_default"] = round(r["peak_rss_gb"] / base["peak_rss_gb"], 3)
        table[name] = row
    return table


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--levers", default=None, help=f"comma-separated, from {', '.join(LEVERS)}")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--result", default="levers", help="results/<name>.json to write")
    args = parser.parse_args(argv)
    names = args.levers.split(",") if args.levers else (QUICK_LEVERS if args.quick else default_levers())
    if "default" not in names:
        names = ["default", *names]
    steps = args.steps or (12 if args.quick else 16)
    started = time.time()
    data = bench_data.build("quick")
    stats = data_statistics(data)
    runs = {}
    for name in names:
        print(f"  lever {name} ...", flush=True)
        runs[name] = run_worker(lever_args(name, ensure_workdir() / "data-quick", steps), timeout=1800)
        r = runs[name]
        print(f"  {name}: " + (f"{r['tokens_per_s']:.1f} tokens/s (steady {r.get('steady_tokens_per_s')}), "
                               f"{r['peak_rss_gb']:.2f} GB" if "error" not in r else f"FAILED {r['error']}"),
              flush=True)
    table = relative(runs)
    result = {"steps": steps, "examples_per_step": HYPER["batch_size"], "data": {**data, **stats}, "levers": table,
              "runs": runs, "wall_s": round(time.time() - started, 1)}
    write_result(args.result, result)
    return result


if __name__ == "__main__":
    main()
