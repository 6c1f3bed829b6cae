"""``tuneloop eval`` throughput on the embedded model: samples/s on a small Banking77 classification set.

The set is Banking77 rows written as ``{"text", "label"}`` (first N rows of a fixed shuffle). The
command runs as a user would run it (``tuneloop eval --model smollm2-135m-instruct --data ...``) in a
fresh process. ``samples_per_s`` is N / the model work eval.json reports (generation + perplexity
pass, no start-up or model load); ``samples_per_s_process`` is N / the whole command's wall time.

``python benchmarks/bench_eval.py [--quick]`` writes results/eval.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import time
from pathlib import Path

import bench_data
from common import PYTHON, REPO, ensure_workdir, write_result


def eval_set(n: int) -> Path:
    rows = bench_data.banking77_chats()
    random.Random(1).shuffle(rows)
    path = ensure_workdir() / f"eval-banking77-{n}.jsonl"
    path.write_text("".join(json.dumps({"text": r["messages"][0]["content"], "label": r["messages"][1]["content"]})
                            + "\n" for r in rows[:n]))
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n = 32 if args.quick else 128
    data = eval_set(n)
    out = ensure_workdir() / "eval-out"
    shutil.rmtree(out, ignore_errors=True)
    cli = str(Path(PYTHON).parent / "tuneloop")
    cmd = [cli, "eval", "--model", "smollm2-135m-instruct", "--data", str(data), "--out", str(out), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):
        result = {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:], "command": cmd}
        write_result("eval", result)
        return result
    report = json.loads((out / "eval.json").read_text())
    metrics = report.get("metrics", {})
    timing = report.get("timing") or {}
    # generation plus the perplexity pass: the model work, without process start-up and model load
    eval_seconds = (timing.get("generation_s") or 0) + (timing.get("perplexity_s") or 0) or None
    result = {
        "command": " ".join(cmd[1:]), "n": report.get("n", n), "process_wall_s": round(wall, 2),
        "samples_per_s_process": round(report.get("n", n) / wall, 2),
        "samples_per_s": round(report.get("n", n) / eval_seconds, 2) if eval_seconds else None,
        "tokens_per_s": metrics.get("tokens_per_s"), "latency_ms_p50": metrics.get("latency_ms_p50"),
        "latency_ms_p95": metrics.get("latency_ms_p95"), "accuracy": metrics.get("accuracy"),
        "timing": timing,
    }
    print(json.dumps(result, indent=2))
    write_result("eval", result)
    return result


if __name__ == "__main__":
    main()
