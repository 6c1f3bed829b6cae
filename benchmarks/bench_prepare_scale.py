"""Benchmark: ``tuneloop data prepare`` on generated support chats at scale, for several engines.

    nice -n 19 .venv/bin/python benchmarks/bench_prepare_scale.py [--records 1000000] [--smaller 4]
        [--configs local:1,local:2,ray:2] [--model smollm2-135m-instruct|none]

Writes a JSONL file of ``--records`` records (bench_prepare's generator: ~3% exact and ~5% near
duplicates, ~10% with PII; duplicates drawn from the last 50,000 records so that generating needs
no memory), then runs the CLI once per config (``engine:workers``) as a subprocess, and also on a
file ``--smaller`` times smaller, to show whether peak memory grows with the input. For each run:
wall seconds, records/s, CPU seconds of the process tree, peak RSS of the whole process tree
(sampled every 0.2 s with psutil: the CLI, its forked workers, and Ray's raylet, GCS and workers)
and its peak anonymous part (RssAnon: memory that is not a mapped file), the load average, and the
sha256 of train/validation/test.jsonl from manifest.json, which must be equal across configs. Results go to ``benchmarks/results/prepare_scale.json`` with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_prepare import machine, synthetic_record  # noqa: E402

SPLIT_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl")


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng, recent = random.Random(seed), []
    with open(path, "w") as f:
        for i in range(n):
            roll = rng.random()
            if recent and roll < 0.03:  # exact duplicate up to case and punctuation
                record = json.loads(rng.choice(recent))
                record["messages"][-2]["content"] = record["messages"][-2]["content"].upper() + "!"
            elif recent and roll < 0.08:  # near duplicate: one word added
                record = json.loads(rng.choice(recent))
                record["messages"][-1]["content"] += " Thanks."
            else:
                record = synthetic_record(rng, i)
            line = json.dumps(record)
            f.write(line + "\n")
            recent.append(line)
            if len(recent) > 50_000:
                recent = recent[-25_000:]


def cpu_flags() -> dict:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "amx_tile": "amx_tile" in flags}


def anonymous_bytes(pid: int) -> int:
    """RssAnon of a process: its resident memory that is not a mapped file (heap, arrays). The rest
    of RSS is file pages mapped from the page cache (the spooled MinHash signatures are read through
    a memory map; the kernel maps neighbouring pages too), which the kernel can drop under pressure."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


class TreeMemory:
    """Peaks of the summed RSS and anonymous RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.root, self.interval, self.peak, self.peak_processes = psutil.Process(pid), interval, 0, 0
        self.peak_anonymous = 0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self.root] + self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            total = anonymous = 0
            for p in processes:
                try:
                    total += p.memory_info().rss
                    anonymous += anonymous_bytes(p.pid)
                    times = p.cpu_times()
                    self.cpu[p.pid] = times.user + times.system
                except (psutil.Error, OSError):
                    pass
            if total > self.peak:
                self.peak, self.peak_processes = total, len(processes)
            self.peak_anonymous = max(self.peak_anonymous, anonymous)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_config(source: Path, out: Path, engine: str, workers: int, model: str) -> dict:
    command = [sys.executable, "-m", "tuneloop.cli.main", "data", "prepare", str(source), "--out", str(out),
               "--quiet", "--model", model, "--workers", str(workers), "--engine", engine]
    # Ray starts its workers at niceness 15 (RAY_worker_niceness) so that its driver stays responsive;
    # here they get this benchmark's, as the local engine's forked workers do, so that on a machine
    # shared with other work the engines are compared at the same priority.
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), RAY_worker_niceness=str(os.nice(0)))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = TreeMemory(process.pid)
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    memory.stop()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    records = report["counts"]["input"]
    return {"engine": engine, "workers": workers, "records": records, "seconds": round(seconds, 1),
            "records_per_s": round(records / seconds), "cpu_seconds_tree": round(sum(memory.cpu.values()), 1),
            "peak_rss_tree_mib": round(memory.peak / 2**20), "processes_at_peak": memory.peak_processes,
            "peak_anonymous_rss_tree_mib": round(memory.peak_anonymous / 2**20),
            "load_average_1m_before": round(load_before, 2), "load_average_1m_after": round(os.getloadavg()[0], 2),
            "stage_seconds": report["stage_seconds"], "counts": report["counts"],
            "sha256": {e["path"]: e["sha256"] for e in manifest["outputs"] if e["path"] in SPLIT_FILES},
            "command": " ".join(["tuneloop"] + command[3:])}


def _write_results(args, runs: list[dict], info: dict) -> dict:
    identical = {size: len({json.dumps(r["sha256"], sort_keys=True) for r in runs if r["records"] == size}) == 1
                 for size in {r["records"] for r in runs}}
    result = {"benchmark": "data prepare at scale", "model": args.model, "runs": runs,
              "identical_outputs_per_size": identical, "machine": info,
              "load_average_1m_at_end": round(os.getloadavg()[0], 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--smaller", type=int, default=4, help="also run on records/SMALLER (0: no)")
    parser.add_argument("--configs", default="local:1,local:2,ray:2", help="engine:workers, comma-separated")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="tokenizer for lengths; 'none' = estimate")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare_scale.json"))
    args = parser.parse_args()
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    sizes = [args.records] + ([args.records // args.smaller] if args.smaller else [])
    info = {**machine(), **cpu_flags(), "niceness": os.nice(0)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-scale-") as tmp:
        for size in sizes:
            source = Path(tmp) / f"chats_{size}.jsonl"
            write_corpus(source, size)
            for engine, workers in configs:
                run = run_config(source, Path(tmp) / f"out_{size}_{engine}{workers}", engine, workers, args.model)
                run["input_mib"] = round(source.stat().st_size / 2**20, 1)
                runs.append(run)
                print(f"{size:,} records, {engine} x{workers}: {run['seconds']} s = {run['records_per_s']:,} rec/s, "
                      f"peak RSS (tree) {run['peak_rss_tree_mib']:,} MiB, anonymous {run['peak_anonymous_rss_tree_mib']:,} MiB, load {run['load_average_1m_before']}",
                      flush=True)
                identical = _write_results(args, runs, info)  # after every run: a long benchmark keeps what it did
    print("identical outputs across configs:", identical)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
