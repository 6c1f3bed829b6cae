"""Where ``data prepare`` (one worker, in this process) holds its own memory, stage by stage.

    .venv/bin/python benchmarks/prepare_memory_by_stage.py [--records 100000,400000]

For each size, in a fresh process, writes bench_prepare_scale's generated support chats, runs
``prepare`` in that process with a thread sampling RssAnon (memory that is not a mapped file) every 50 ms, and records
the peak of each stage (the stage names of ``report.stage_seconds``). Two sizes show which stages grow
with the input. Results: ``benchmarks/results/prepare_memory_by_stage.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare_scale import write_corpus  # noqa: E402
from common import write_result  # noqa: E402

STAGES = ("read", "validate_clean_pii", "exact_dedup", "tokens", "near_dedup", "split", "write")


def rss_anon_mib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) // 1024
    return 0


def measure(n: int, work: Path, model: str) -> dict:
    from tuneloop.data import prepare as prepare_module

    source = work / f"chats_{n}.jsonl"
    write_corpus(source, n)
    state = {"stage": STAGES[0], "peaks": {}, "done": False}
    original_lap = prepare_module._StageClock.lap

    def lap(clock, stage):  # the stage that just ended; the next one starts
        original_lap(clock, stage)
        if stage in STAGES and STAGES.index(stage) + 1 < len(STAGES):
            state["stage"] = STAGES[STAGES.index(stage) + 1]

    def sample():
        while not state["done"]:
            peak = state["peaks"]
            peak[state["stage"]] = max(peak.get(state["stage"], 0), rss_anon_mib())
            time.sleep(0.05)

    before = rss_anon_mib()
    prepare_module._StageClock.lap = lap
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        started = time.time()
        report = prepare_module.prepare([source], work / f"out_{n}", prepare_module.PrepareOptions(model=model))
    finally:
        state["done"] = True
        sampler.join()
        prepare_module._StageClock.lap = original_lap
    return {"records": n, "seconds": round(time.time() - started, 1), "rss_anon_before_mib": before,
            "peak_rss_anon_mib_by_stage": state["peaks"], "stage_seconds": report.stage_seconds,
            "counts": report.counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="100000,400000", help="comma-separated sizes")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: measure one size, print JSON
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, Path(args.work), args.model)))
        return
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-memory-") as folder:
        for n in (int(x) for x in args.records.split(",")):
            child = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", folder, "--model", args.model],
                                   check=True, capture_output=True, text=True)
            runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(runs[-1]["records"], runs[-1]["peak_rss_anon_mib_by_stage"], flush=True)
    growth = {}
    if len(runs) >= 2:
        small, big = runs[0], runs[-1]
        extra = big["records"] - small["records"]
        for stage, peak in big["peak_rss_anon_mib_by_stage"].items():
            base = small["peak_rss_anon_mib_by_stage"].get(stage)
            if base is not None:
                growth[stage] = round((peak - base) * 1024 * 1024 / extra, 1)
    write_result("prepare_memory_by_stage", {"runs": runs, "peak_growth_bytes_per_record": growth,
                                             "note": "one process a size, one after another"})


if __name__ == "__main__":
    main()
