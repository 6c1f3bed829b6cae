"""Long fuzzing run: every target of ``tests/fuzz_targets.py`` for a time budget each.

    .venv/bin/python benchmarks/fuzz.py [--seconds 120] [--targets ingest_jsonl,recipe_yaml] [--engine atheris]

``--engine atheris`` (the default when it is installed): coverage-guided libFuzzer mutating the bytes
that Hypothesis turns into structured inputs (``fuzz_one_input``), one process per target with
tuneloop's modules instrumented; it stops at a target's first crash and prints the input.
``--engine hypothesis``: batches of random examples with fresh seeds until the budget is spent, each
crash shrunk to a minimal input. A crash is any exception but a UserError.
Writes benchmarks/results/fuzz.json: per target, the inputs run, the seconds, and each crash.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import write_result  # noqa: E402

BATCH = 200


def tokenizer():
    from tuneloop.testing import build_tiny_model
    from transformers import AutoTokenizer

    directory = HERE / ".work" / "fuzz-tiny-model"
    if not (directory / "config.json").is_file():
        build_tiny_model(directory)
    return AutoTokenizer.from_pretrained(directory)


def fuzz_target(target, seconds: float, tok) -> dict:
    from fuzz_targets import check, workdir
    from hypothesis import HealthCheck, given, seed, settings

    directory = workdir()
    examples, crashes, started = 0, {}, time.monotonic()
    while time.monotonic() - started < seconds:
        @seed(random.randrange(2**32))
        @settings(max_examples=BATCH, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  print_blob=False)
        @given(target.strategy)
        def run(value):
            nonlocal examples
            examples += 1
            run.last_value = value
            check(target, value, directory, tok)

        try:
            run()
        except Exception as e:  # noqa: BLE001 - a crash is what we are looking for
            frame = traceback.extract_tb(e.__traceback__)[-1]
            key = f"{type(e).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            if key not in crashes:
                crashes[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}",
                                "minimal_input": repr(getattr(run, "last_value", None))[:500]}
                print(f"  CRASH {target.name}: {key}\n    {crashes[key]['error']}\n    input: "
                      f"{crashes[key]['minimal_input']}", flush=True)
    return {"target": target.name, "what": target.what, "examples": examples,
            "seconds": round(time.monotonic() - started, 1), "crashes": list(crashes.items())}


def atheris_worker(name: str) -> None:
    """Run inside its own process: libFuzzer drives one target until -max_total_time or a crash."""
    import atheris

    with atheris.instrument_imports(include=["tuneloop"]):
        from fuzz_targets import TARGETS, check, workdir
    from hypothesis import HealthCheck, given, settings

    target = next(t for t in TARGETS if t.name == name)
    directory, tok = workdir(), tokenizer() if name.startswith(("ingest", "chat")) else None

    @settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def run(value):
        check(target, value, directory, tok)

    atheris.Setup(sys.argv[:1] + [a for a in sys.argv[1:] if a.startswith("-") and "=" in a and not a.startswith("--")],
                  run.hypothesis.fuzz_one_input)
    atheris.Fuzz()


def atheris_target(target, seconds: float) -> dict:
    import re
    import subprocess

    started = time.monotonic()
    process = subprocess.run([sys.executable, __file__, "--worker", target.name, f"-max_total_time={int(seconds)}",
                              "-print_final_stats=1", "-rss_limit_mb=3000", f"-artifact_prefix={HERE / '.work'}/"],
                             capture_output=True, text=True, timeout=seconds + 600)
    output = process.stdout + process.stderr
    executed = re.findall(r"stat::number_of_executed_units:\s*(\d+)", output)
    crashes = []
    if process.returncode != 0:
        tail = output[-3000:]
        error = next((line for line in reversed(tail.splitlines()) if re.match(r"^\w+(Error|Exception)\b", line)),
                     tail.splitlines()[-1] if tail else f"exit {process.returncode}")
        crashes.append((error[:200], {"error": error[:300], "output_tail": tail[-1500:]}))
        print(f"  CRASH {target.name}: {error}\n{tail[-1500:]}", flush=True)
    return {"target": target.name, "what": target.what, "examples": int(executed[-1]) if executed else None,
            "seconds": round(time.monotonic() - started, 1), "crashes": crashes}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return atheris_worker(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="budget per target")
    parser.add_argument("--targets", default="", help="comma-separated names (default: all)")
    parser.add_argument("--engine", choices=["atheris", "hypothesis"], default=None)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    engine = args.engine or ("atheris" if _has_atheris() else "hypothesis")
    from fuzz_targets import TARGETS
    from tqdm import tqdm

    chosen = [t for t in TARGETS if not args.targets or t.name in args.targets.split(",")]
    tok = tokenizer() if engine == "hypothesis" else None
    results = []
    for target in tqdm(chosen, desc="fuzz targets", unit="target"):
        results.append(fuzz_target(target, args.seconds, tok) if engine == "hypothesis"
                       else atheris_target(target, args.seconds))
        print(f"{target.name}: {results[-1]['examples']} examples in {results[-1]['seconds']} s, "
              f"{len(results[-1]['crashes'])} crashes", flush=True)
    write_result("fuzz", {"label": args.label, "engine": engine, "seconds_per_target": args.seconds,
                          "targets": results, "total_examples": sum(r["examples"] for r in results),
                          "total_crashes": sum(len(r["crashes"]) for r in results)})


def _has_atheris() -> bool:
    import importlib.util

    return importlib.util.find_spec("atheris") is not None


if __name__ == "__main__":
    main()
