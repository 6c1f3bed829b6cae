"""Fault injection: a full disk and a read-only output directory during ``data prepare``, ``train``
checkpoints and ``export``, each through the real CLI in its own process, on a tiny random model.

    sudo .venv/bin/python benchmarks/faults.py       # needs root: mounts small tmpfs filesystems

The disk is a real filesystem that really fills (a tmpfs of a few MB, then a filler file) or is
really remounted read-only, so the errors are the kernel's ENOSPC/EROFS, not simulations. For each
case: the exit code, whether a traceback was printed, the first line of the error, and whether the
outputs written before are intact (same bytes; the earlier checkpoint resumes to the end).
Writes benchmarks/results/faults.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import PYTHON, ensure_workdir, write_result  # noqa: E402


def tuneloop(*args, timeout: float = 1800) -> dict:
    started = time.monotonic()
    process = subprocess.run([PYTHON, "-m", "tuneloop.cli.main", *map(str, args)], capture_output=True, text=True,
                             timeout=timeout)
    output = process.stdout + process.stderr
    error_lines = re.findall(r"error: .*", output)  # also after a progress bar on the same line
    return {"exit": process.returncode, "traceback": "Traceback (most recent call last)" in output,
            "error": error_lines[0][:300] if error_lines else None, "seconds": round(time.monotonic() - started, 1),
            "tail": output[-600:] if process.returncode not in (0, 1) or "Traceback" in output else ""}


@contextmanager
def tmpfs(size: str):
    mount = Path(tempfile.mkdtemp(prefix="tuneloop-fault-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def fill(mount: Path, leave_bytes: int = 0) -> Path:
    """Fill the filesystem until at most ``leave_bytes`` are free."""
    filler = mount / "filler"
    with open(filler, "ab") as f:
        try:
            while os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize > leave_bytes:
                f.write(b"\0" * min(1 << 20, max(4096, os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize - leave_bytes)))
                f.flush()
        except OSError:
            pass
    return filler


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def digests(directory: Path) -> dict:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and "filler" not in p.name}


def chat_data(path: Path, n: int, seed: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Question {seed}-{i}: how do I {['reset', 'cancel', 'track'][i % 3]} "
                                            f"order {i * 7919 % 1000}?"},
                {"role": "assistant", "content": f"Answer {i}: open settings, choose orders, then item {i}."}]}) + "\n")
    return path


def prepare_faults(work: Path) -> list[dict]:
    first, second = chat_data(work / "a.jsonl", 60, 1), chat_data(work / "b.jsonl", 80, 2)
    cases = []
    with tmpfs("4m") as mount:
        out = mount / "prepared"
        ok = tuneloop("data", "prepare", first, "--out", out)
        before = digests(out)
        fill(mount, leave_bytes=2048)
        result = tuneloop("data", "prepare", second, "--out", out)
        cases.append({"command": "data prepare", "fault": "disk full (ENOSPC, tmpfs filled)", "first_run_exit": ok["exit"],
                      **result, "earlier_outputs_intact": digests(out) == before and "manifest.json" in before})
        (mount / "filler").unlink()
        remount(mount, "ro")
        result = tuneloop("data", "prepare", second, "--out", out)
        cases.append({"command": "data prepare", "fault": "read-only filesystem (EROFS)", **result,
                      "earlier_outputs_intact": digests(out) == before})
    return cases


def _recipe(work: Path, model: Path, out: Path, prepared: Path) -> Path:
    from fixtures_train.helpers import tiny_recipe

    raw = tiny_recipe(model, out, name="run", batch_size=1, max_steps=60, save_every=5)
    raw["data"]["train"] = str(prepared)
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _wait_for_checkpoint(process: subprocess.Popen, checkpoints: Path, timeout: float = 1200) -> bool:
    from tuneloop.train.checkpoint import step_checkpoints

    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if step_checkpoints(checkpoints):
            return True
        time.sleep(0.2)
    return False


def train_faults(work: Path, model: Path) -> list[dict]:
    from tuneloop.train.checkpoint import step_checkpoints

    data = chat_data(work / "train.jsonl", 40, 3)
    cases = []
    for fault in ("disk full (ENOSPC, tmpfs filled)", "read-only filesystem (EROFS)"):
        with tmpfs("64m") as mount:
            recipe = _recipe(work, model, mount, data)
            process = subprocess.Popen([PYTHON, "-m", "tuneloop.cli.main", "train", str(recipe)],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            started = time.monotonic()
            if not _wait_for_checkpoint(process, mount / "run" / "checkpoints"):
                process.kill()
                cases.append({"command": "train", "fault": fault, "error": "no checkpoint before the fault",
                              "tail": process.communicate()[0][-600:]})
                continue
            checkpoints = mount / "run" / "checkpoints"
            if fault.startswith("disk full"):
                fill(mount)
            else:
                # A running train holds files open for writing (its lock, metrics.jsonl), so the kernel
                # refuses to remount the whole filesystem read-only ("mount point is busy"); a read-only
                # filesystem mounted over the checkpoints folder makes the next checkpoint write fail
                # with EROFS instead, and unmounting it shows the earlier checkpoints again.
                subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(checkpoints)], check=True)
            output = process.communicate(timeout=1800)[0]
            if not fault.startswith("disk full"):
                subprocess.run(["umount", str(checkpoints)], check=True)
            saved = [p.name for p in step_checkpoints(checkpoints)]
            error_lines = re.findall(r"error: .*", output)  # also after a progress bar on the same line
            case = {"command": "train (checkpoints)", "fault": fault, "exit": process.returncode,
                    "traceback": "Traceback (most recent call last)" in output,
                    "error": error_lines[0][:300] if error_lines else None,
                    "seconds": round(time.monotonic() - started, 1), "checkpoints_left": saved,
                    "tail": output[-600:] if "Traceback" in output or process.returncode not in (0, 1)
                    or not error_lines else ""}
            if fault.startswith("disk full"):
                (mount / "filler").unlink()
            resumed = tuneloop("train", recipe, "--resume")
            case["resume_after_fix"] = {"exit": resumed["exit"], "seconds": resumed["seconds"],
                                        "adapter_written": (mount / "run" / "adapter").is_dir()}
            case["earlier_outputs_intact"] = resumed["exit"] == 0 and bool(saved)
            cases.append(case)
    return cases


def export_faults(work: Path, model: Path) -> list[dict]:
    from serve_support import make_adapter_run

    run = make_adapter_run(model, work / "adapter-run", seed=1)
    cases = []
    with tmpfs("64m") as mount:
        out = mount / "exported"
        ok = tuneloop("export", run, "--out", out)
        before = digests(out)
        fill(mount, leave_bytes=64 * 1024)
        result = tuneloop("export", run, "--out", out, "--overwrite")
        cases.append({"command": "export --overwrite", "fault": "disk full (ENOSPC, tmpfs filled)",
                      "first_run_exit": ok["exit"], **result,
                      "earlier_outputs_intact": digests(out) == before and bool(before),
                      "leftover_temp_dirs": [p.name for p in mount.iterdir() if p.name.startswith(".")]})
        (mount / "filler").unlink()
        remount(mount, "ro")
        result = tuneloop("export", run, "--out", mount / "exported-2")
        cases.append({"command": "export", "fault": "read-only filesystem (EROFS)", **result,
                      "earlier_outputs_intact": digests(out) == before})
    return cases


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="prepare,train,export")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (mounts tmpfs filesystems to fill and remount read-only)")
    from tuneloop.testing import build_tiny_model

    work = ensure_workdir() / "faults"
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny-llama"
    if not (model / "config.json").is_file():
        build_tiny_model(model)
    cases = []
    for name, run in (("prepare", lambda: prepare_faults(work)), ("train", lambda: train_faults(work, model)),
                      ("export", lambda: export_faults(work, model))):
        if name in args.only.split(","):
            cases += run()
            print(json.dumps(cases[-1], indent=1)[:1500], flush=True)
            write_faults(cases, args)  # after each group: a slow machine still leaves what it measured


def write_faults(cases: list[dict], args) -> None:
    for case in cases:
        case["clear_error"] = case.get("exit") == 1 and not case.get("traceback") and bool(case.get("error"))
    write_result("faults", {"label": args.label, "groups_run": args.only, "cases": cases,
                            "all_clear_and_intact": all(c["clear_error"] and c.get("earlier_outputs_intact")
                                                        for c in cases)})


if __name__ == "__main__":
    main()
