"""Shared helpers for the benchmark scripts: machine description, versions, results files, workers.

Every results JSON carries the same ``machine`` block (CPU model, the SIMD flags that decide CPU
training speed, cores, RAM, load average when the figure was taken) and the library versions, so a
figure can always be traced to the machine and software that produced it.

Scripts in this folder import it as ``from common import ...`` (they put their own folder on the path).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
WORK = BENCH_DIR / ".work"  # scratch data and run directories (self-ignoring: .work/.gitignore)
SHARED_DATA = REPO.parent / "shared" / "data"
PYTHON = sys.executable
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, [f for f in FLAGS_OF_INTEREST if f in flags]


def machine() -> dict:
    """What the figures were measured on, including how busy it was at that moment."""
    import psutil

    model, flags = cpu_model_and_flags()
    try:
        import torch

        bf16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        threads = torch.get_num_threads()
    except Exception:  # noqa: BLE001 - a description must not fail the benchmark
        bf16, threads = None, None
    return {
        "cpu_model": model,
        "cpu_flags": flags,
        "native_bf16": bf16,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tuneloop", "torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def write_result(name: str, payload: dict) -> Path:
    """``benchmarks/results/<name>.json`` with the machine and versions attached."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), "versions": versions(), **payload}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def ensure_workdir() -> Path:
    WORK.mkdir(exist_ok=True)
    ignore = WORK / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return WORK


def run_worker(args: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run a worker script in its own process (so its peak RSS is its own); it prints one JSON line last.

    Returns that JSON, or ``{"error": ...}`` if the worker failed or timed out.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})}
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    try:
        proc = subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=timeout,
                              env=full_env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s", "args": args}
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "args": args, "stderr_tail": proc.stderr[-3000:]}
    result = json.loads(lines[-1])
    result["process_wall_s"] = round(wall, 2)
    result["load_average_before"] = load_before  # how busy the machine was around this run
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def emit(result: dict) -> None:
    """A worker's last stdout line: its result as JSON."""
    print(json.dumps(result, default=str), flush=True)
