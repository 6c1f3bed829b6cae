"""Run every benchmark, then regenerate the README's benchmark section: ``make bench`` (= ``--quick``).

    python benchmarks/run_all.py --quick     # under ~15 minutes on 2 cores
    python benchmarks/run_all.py             # larger data, repeats, every TRL variant and lever
    python benchmarks/run_all.py --only train,levers

Each benchmark is its own script (run alone for one figure) and writes ``benchmarks/results/<name>.json``
with the machine (CPU model and flags, cores, RAM, load average), versions and exact settings. A
benchmark that fails is reported and the rest still run; the exit status is 1 if any failed.
Benchmarks are scripts, never timed tests: a slow machine gives slower figures, not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import BENCH_DIR, PYTHON, REPO, machine, write_result


def plan(quick: bool) -> dict[str, list[str]]:
    """name -> script and arguments; the headline comparison (train) early, so it is there first."""
    q = ["--quick"] if quick else []
    return {
        "startup": ["bench_startup.py", *q],
        "train": ["bench_train.py", *q],
        "learning_quality": ["learning_quality.py", *q],
        "levers": ["bench_levers.py", *q],
        "estimate_vs_measured": ["estimate_vs_measured.py", "--steps", "2" if quick else "3"],
        "eval": ["bench_eval.py", *q],
        "prepare": ["bench_prepare.py", "--records", "20000" if quick else "100000"],
        "serve": ["bench_serve.py", "--requests", "8" if quick else "16", "--max-tokens", "48" if quick else "64"],
    }


def run_one(name: str, command: list[str], timeout: float) -> dict:
    script = BENCH_DIR / command[0]
    if not script.is_file():
        print(f"[{name}] skipped: {command[0]} not found", flush=True)
        return {"status": "missing"}
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run([PYTHON, str(script), *command[1:]], cwd=REPO, timeout=timeout, env=env,
                              stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    except subprocess.TimeoutExpired:
        print(f"[{name}] timed out after {timeout:.0f}s", flush=True)
        return {"status": "timeout", "seconds": round(time.perf_counter() - start, 1)}
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        print(f"[{name}] FAILED (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
        return {"status": "failed", "exit": proc.returncode, "seconds": seconds, "stderr_tail": proc.stderr[-2000:]}
    print(f"[{name}] done in {seconds}s", flush=True)
    return {"status": "ok", "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    args = parser.parse_args(argv)
    steps = plan(args.quick)
    names = args.only.split(",") if args.only else list(steps)
    timeout = args.timeout or (900 if args.quick else 7200)
    at_start = machine()
    print(f"machine: {at_start['cpu_model']} ({', '.join(at_start['cpu_flags'])}), {at_start['cores']} cores, "
          f"{at_start['ram_gb']} GB; load average {at_start['load_average']}", flush=True)
    started = time.time()
    statuses = {name: run_one(name, steps[name], timeout) for name in names}
    write_result("run_all", {"mode": "quick" if args.quick else "full", "statuses": statuses,
                             "load_average_at_start": at_start["load_average"],
                             "wall_s": round(time.time() - started, 1)})
    subprocess.run([PYTHON, str(BENCH_DIR / "make_readme_table.py")], cwd=REPO, check=False)
    subprocess.run([PYTHON, str(BENCH_DIR / "make_readme_table.py"), "--print"], cwd=REPO, check=False)
    failed = [n for n, s in statuses.items() if s["status"] not in ("ok", "missing")]
    print(json.dumps({"failed": failed, "wall_s": round(time.time() - started, 1)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
