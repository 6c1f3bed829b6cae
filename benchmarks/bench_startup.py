"""Start-up costs a user feels: ``import tuneloop``, ``tuneloop --help``, and loading the embedded model.

Each is timed in a fresh process, best of a few (a busy machine only ever makes things slower):

- ``import tuneloop`` and ``tuneloop --help``: wall time of the whole process, and the same for a bare
  ``python -c pass`` so the interpreter's own start-up can be subtracted (STYLE.md: both < 1 s);
- model load in a fresh process, in parts: importing torch + transformers, resolving the embedded
  model in the local store (already converted to an HF directory), and the ``load_model`` call (which
  includes transformers' lazy import of its modeling code, ~2 s); then a second ``load_model`` in the
  same process, which is the weights alone.

``python benchmarks/bench_startup.py`` writes results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import PYTHON, REPO, write_result

LOAD_SNIPPET = """
import json, time
t0 = time.perf_counter()
import torch, transformers
from transformers import AutoModelForCausalLM
t1 = time.perf_counter()
from tuneloop.models.loading import load_model, resolve_model
resolved = resolve_model("smollm2-135m-instruct")
t2 = time.perf_counter()
model = load_model(resolved)
t3 = time.perf_counter()
del model
model = load_model(resolved)  # transformers' modeling code is imported now: the weights alone
t4 = time.perf_counter()
print(json.dumps({"import_torch_transformers_s": t1 - t0, "resolve_s": t2 - t1, "load_model_s": t3 - t2,
                  "load_model_again_s": t4 - t3}))
"""


def best_wall(cmd: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
        best = min(best, time.perf_counter() - start)
    return best


def model_load(repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run([PYTHON, "-c", LOAD_SNIPPET], check=True, capture_output=True, text=True, cwd=REPO)
        runs.append({**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - start})
    best = min(runs, key=lambda r: r["process_s"])
    return {k: round(v, 3) for k, v in best.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 5
    cli = shutil.which("tuneloop", path=str(Path(PYTHON).parent)) or "tuneloop"
    bare = best_wall([PYTHON, "-c", "pass"], repeats)
    result = {
        "python_bare_s": round(bare, 3),
        "import_tuneloop_s": round(best_wall([PYTHON, "-c", "import tuneloop"], repeats), 3),
        "help_s": round(best_wall([cli, "--help"], repeats), 3),
        "model_load": model_load(max(2, repeats - 2)),
        "repeats": repeats,
    }
    result["import_tuneloop_net_s"] = round(result["import_tuneloop_s"] - bare, 3)
    result["help_net_s"] = round(result["help_s"] - bare, 3)
    print(json.dumps(result, indent=2))
    write_result("startup", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
