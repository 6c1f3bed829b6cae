"""Where a tuneloop LoRA training step spends its time: torch.profiler over a few steps, grouped by kind.

    python benchmarks/profile_train.py [--steps 6] [--no-packing] [--head full] [--no-fused-lora]

Runs the engine's own ``setup``/``train`` (as ``worker_tuneloop.py`` does), skips the first two steps
(warm-up), profiles the rest on CPU, and writes results/profile.json: the top operators by self CPU
time, and the share per kind (matmul, attention, LoRA dropout/elementwise, norms, loss, optimizer,
other). This is for finding speed-ups in ``src/tuneloop/train/``, not a headline figure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data  # noqa: E402
from common import ensure_workdir, write_result  # noqa: E402

KINDS = {  # operator name fragments -> kind, first match wins
    "attention": ("scaled_dot_product", "_flash_attention", "_efficient_attention", "softmax"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_mkldnn"),
    "loss": ("cross_entropy", "log_softmax", "nll_loss"),
    "optimizer": ("adam", "_foreach", "optimizer", "clip_grad"),
    "norm_and_activation": ("rsqrt", "pow", "mean", "silu", "rms_norm"),
    "dropout_and_elementwise": ("dropout", "bernoulli", "aten::mul", "aten::add", "aten::div", "aten::copy_",
                                "aten::to", "aten::_to_copy", "aten::cat", "aten::index", "aten::fill_",
                                "aten::zero_", "aten::sum", "aten::neg", "aten::where", "aten::masked"),
}


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, fragments in KINDS.items():
        if any(f.lower() in low for f in fragments):
            return kind
    return "other"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--head", default="supervised", choices=("supervised", "full"))
    parser.add_argument("--fused-lora", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    import worker_tuneloop as worker
    from tuneloop.train import loop
    from tuneloop.train import run as engine

    data = bench_data.build("quick")
    rows = 8  # examples per step (packed padding-free, or padded rows with --no-packing)
    ns = argparse.Namespace(data=str(Path(data["train"]).parent), out=str(ensure_workdir() / "runs" / "profile"),
                            epochs=1.0, max_steps=args.steps + 2, batch_size=rows, packing=args.packing,
                            precision="auto", gradient_checkpointing=False, head=args.head, compile=False,
                            threads=None, stock_dropout=False, sdpa_attention=False,
                            fused_lora=args.fused_lora)
    run = engine.setup(worker.make_recipe(ns))
    worker.apply_levers(run, ns)
    from tuneloop.train.tracking import MetricsLog

    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.metrics = MetricsLog(run.run_dir / "metrics.jsonl", None)

    inner, calls = loop.train_step, {"n": 0}
    prof = profile(activities=[ProfilerActivity.CPU])

    def profiled_step(*a, **k):  # start profiling after two warm-up steps
        calls["n"] += 1
        if calls["n"] == 3:
            prof.__enter__()
        return inner(*a, **k)

    loop.train_step = profiled_step
    engine.train(run, None)
    prof.__exit__(None, None, None)

    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    by_kind: dict[str, float] = {}
    for e in events:
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0) + e.self_cpu_time_total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    result = {
        "steps_profiled": args.steps, "packing": args.packing, "head": args.head, "rows_per_step": rows,
        "threads": torch.get_num_threads(),
        "share_by_kind": {k: round(v / total, 4) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1), "calls": e.count,
                     "share": round(e.self_cpu_time_total / total, 4)} for e in top],
        "self_cpu_s_per_step": round(total / 1e6 / args.steps, 3),
        # The optimizer's whole step (its sqrt/div/add ops are counted as elementwise above).
        "optimizer_step_share": round(sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step"))
                                      / total, 4),
        "load_average_during": [round(x, 2) for x in os.getloadavg()],
    }
    for kind, share in result["share_by_kind"].items():
        print(f"{kind:<26}{100 * share:6.1f}%")
    print(f"{'(optimizer step, total)':<26}{100 * result['optimizer_step_share']:6.1f}%")
    print(events.table(sort_by="self_cpu_time_total", row_limit=20))
    write_result("profile", result)
    return result


if __name__ == "__main__":
    main()
