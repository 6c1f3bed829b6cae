"""LoRA SFT throughput: tuneloop vs TRL ``SFTTrainer``, same model, data, LoRA, length and batch.

    python benchmarks/bench_train.py --quick      # ~256 training chats, one repeat
    python benchmarks/bench_train.py              # ~1,280 training chats, two interleaved repeats

Every side runs in its own subprocess (``worker_tuneloop.py`` / ``worker_trl.py``), one after the other
and interleaved across repeats (A B C, then B C A, ...) so a change in machine load hits all sides.
Shared: the embedded SmolLM2-135M-Instruct in fp32, LoRA r16/alpha 32/dropout 0.05 on all linear
layers, learning rate 2e-4 cosine with 3% warmup, max length 512, one epoch, loss on assistant tokens.

Effective batch = 8 examples per optimizer step on every side: 8 padded rows without packing; with
packing, rows of 512 tokens hold about 8 examples each, so a packed step takes
``round(8 x mean length / 512)`` rows (at least 1). Same number of steps and tokens per step, so the
validation losses compare like for like.

Tokens/s = every real (non-padding) token of the training chats, once per epoch, / ``train()`` wall
time; peak RSS is the worker's ``ru_maxrss``; validation loss is computed after training by one shared
function (fp32, assistant tokens of the held-out chats). Writes ``results/train.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import bench_data
from bench_peak import flops_per_token, measure_peaks, mfu, model_dimensions
from common import BENCH_DIR, ensure_workdir, run_worker, write_result
from train_common import HYPER, LORA, count_tokens

# name -> (worker script, extra args, whether it packs)
SIDES = {
    "tuneloop": ("worker_tuneloop.py", [], True),
    "trl_defaults": ("worker_trl.py", ["--variant", "defaults"], False),
    "trl_defaults_fp32": ("worker_trl.py", ["--variant", "defaults_fp32"], False),
    "trl_packing": ("worker_trl.py", ["--variant", "packing"], True),
    "trl_best": ("worker_trl.py", ["--variant", "best"], True),
}
QUICK_SIDES = ["tuneloop", "trl_defaults", "trl_best"]
BASELINES = {"a": "trl_defaults", "b": "trl_best"}
GOALS = {"a": 3.0, "b": 1.5}


def data_statistics(data: dict) -> dict:
    from tuneloop.models.loading import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    counted = count_tokens(tokenizer, bench_data.read_chats(data["train"]))
    counted["mean_len"] = counted["tokens"] / counted["examples"]
    return counted


def packed_rows_per_step(mean_len: float) -> int:
    return max(1, round(HYPER["batch_size"] * mean_len / HYPER["max_seq_len"]))


def run_side(name: str, data_dir: Path, epochs: float, packed_rows: int, timeout: float) -> dict:
    script, extra, packs = SIDES[name]
    out = ensure_workdir() / "runs" / name
    args = [str(BENCH_DIR / script), "--data", str(data_dir), "--out", str(out), "--epochs", str(epochs),
            *extra]
    if packs:
        args += ["--batch-size", str(packed_rows)]
    print(f"  running {name} ...", flush=True)
    result = run_worker(args, timeout)
    result["name"] = name
    if "error" not in result:
        print(f"  {name}: {result['tokens_per_s']:.1f} tokens/s, {result['peak_rss_gb']:.2f} GB, "
              f"validation loss {result['validation_loss']:.4f} ({result['train_s']:.0f}s)", flush=True)
    else:
        print(f"  {name}: FAILED {result['error']}", flush=True)
    return result


def interleaved_order(sides: list[str], repeat: int) -> list[str]:
    shift = repeat % len(sides)
    return sides[shift:] + sides[:shift]


def summarise(runs: list[dict], flops_token: float, peak_gflops: float) -> dict:
    """Median tokens/s per side, worst peak RSS, validation loss, MFU."""
    by_side: dict[str, list[dict]] = {}
    for r in runs:
        if "error" not in r:
            by_side.setdefault(r["name"], []).append(r)
    summary = {}
    for name, rs in by_side.items():
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        summary[name] = {
            "tokens_per_s": round(tps, 2), "tokens_per_s_all": [r["tokens_per_s"] for r in rs],
            "peak_rss_gb": max(r["peak_rss_gb"] for r in rs),
            "validation_loss": statistics.median(r["validation_loss"] for r in rs),
            "train_s": statistics.median(r["train_s"] for r in rs), "steps": rs[0]["steps"],
            "mfu": round(mfu(tps, flops_token, peak_gflops), 4), "settings": rs[0]["settings"],
        }
    return summary


def comparisons(summary: dict) -> dict:
    out = {}
    ours = summary.get("tuneloop")
    for key, name in BASELINES.items():
        theirs = summary.get(name)
        if not ours or not theirs:
            continue
        speedup = ours["tokens_per_s"] / theirs["tokens_per_s"]
        out[key] = {
            "baseline": name, "speedup": round(speedup, 2), "goal": GOALS[key],
            "memory_ratio": round(ours["peak_rss_gb"] / theirs["peak_rss_gb"], 2),
            "validation_loss_delta": round(ours["validation_loss"] - theirs["validation_loss"], 4),
            "met": bool(speedup >= GOALS[key] and ours["peak_rss_gb"] <= theirs["peak_rss_gb"]
                        and ours["validation_loss"] <= theirs["validation_loss"] + 0.01),
        }
    return out


def print_table(summary: dict, compare: dict) -> None:
    print(f"\n{'side':<20}{'tokens/s':>10}{'MFU':>8}{'peak RSS GB':>13}{'val loss':>10}{'steps':>7}")
    for name, s in summary.items():
        print(f"{name:<20}{s['tokens_per_s']:>10.1f}{100 * s['mfu']:>7.1f}%{s['peak_rss_gb']:>13.2f}"
              f"{s['validation_loss']:>10.4f}{s['steps']:>7}")
    for key, c in compare.items():
        print(f"tuneloop vs ({key}) {c['baseline']}: {c['speedup']:.2f}x (goal {c['goal']}x), memory "
              f"{c['memory_ratio']:.2f}x, validation loss {c['validation_loss_delta']:+.4f} -> "
              f"{'met' if c['met'] else 'not met'}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--sides", default=None, help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    sides = args.sides.split(",") if args.sides else (QUICK_SIDES if args.quick else list(SIDES))
    repeats = args.repeats or (1 if args.quick else 2)

    started = time.time()
    data = bench_data.build(mode)
    stats = data_statistics(data)
    rows = packed_rows_per_step(stats["mean_len"])
    peaks_before = measure_peaks()
    print(f"data: {stats['examples']} chats, {stats['tokens']} tokens (mean {stats['mean_len']:.1f}); "
          f"packed rows per step: {rows}; fp32 peak {peaks_before['fp32_gflops']} GFLOP/s", flush=True)
    runs = []
    for repeat in range(repeats):
        for name in interleaved_order(sides, repeat):
            runs.append(run_side(name, Path(data["train"]).parent, args.epochs, rows, args.timeout))
    peaks_after = measure_peaks()
    peak = max(peaks_before["training_dtype_peak_gflops"], peaks_after["training_dtype_peak_gflops"])
    dims = model_dimensions()
    flops_token = flops_per_token(dims, "lora", stats["mean_len"])
    summary = summarise(runs, flops_token, peak)
    compare = comparisons(summary)
    print_table(summary, compare)
    result = {
        "mode": mode, "repeats": repeats, "epochs": args.epochs, "data": {**data, **stats},
        "shared_settings": {"lora": LORA, **HYPER, "packed_rows_per_step": rows,
                            "model": "smollm2-135m-instruct (fp32 weights)"},
        "peaks": {"before": peaks_before, "after": peaks_after, "used_gflops": peak},
        "flops": {**dims, "method": "lora", "flops_per_token": flops_token},
        "summary": summary, "comparisons": compare, "runs": runs,
        "wall_s": round(time.time() - started, 1),
    }
    path = write_result("train", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
