"""Run directories as the dashboard sees them: a page of runs, one run's summary, its metrics as they grow.

A run is a directory under the runs root (``runs/`` by default) holding ``metrics.jsonl``,
``summary.json`` or ``recipe.resolved.yaml`` (SPEC "Recipe"). Listing stats the directories only and
reads ``summary.json`` for the runs on the shown page, so a page costs the same with 10 or 10,000 runs.
A run without ``summary.json`` is ``running`` while its metrics file changed in the last
:data:`LIVE_SECONDS`, else ``stopped``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tuneloop.errors import UserError

LIVE_SECONDS = 120
RUN_FILES = ("metrics.jsonl", "summary.json", "recipe.resolved.yaml")
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@+")


@dataclass
class RunEntry:
    name: str
    path: Path
    modified: float  # the newest of its run files' mtimes
    status: str = "stopped"  # finished | running | stopped
    summary: dict = field(default_factory=dict)


@dataclass
class RunPage:
    runs: list[RunEntry]
    total: int
    page: int
    pages: int


def _modified(run_dir: Path | str) -> float | None:
    """When the run last wrote: ``metrics.jsonl``'s mtime (written every step and before the summary),
    else that of the other run files. One stat per run in the usual case: the listing stats every run."""
    for name in RUN_FILES:
        try:
            return os.stat(os.path.join(run_dir, name)).st_mtime
        except OSError:
            continue
    return None


def _status(run_dir: Path, modified: float, now: float) -> str:
    if (run_dir / "summary.json").is_file():
        return "finished"
    return "running" if now - modified < LIVE_SECONDS else "stopped"


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} when it is missing or half-written (a run may be writing it)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def last_metrics(run_dir: Path, tail_bytes: int = 8192) -> dict:
    """The last complete line of ``metrics.jsonl`` (read from the end: the file may be long)."""
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            lines = f.read().split(b"\n")
    except OSError:
        return {}
    for line in reversed(lines[1:] if size > tail_bytes else lines):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def list_runs(root: Path, page: int = 1, per_page: int = 50, query: str = "") -> RunPage:
    """The ``page``-th page of runs under ``root``, newest first, names containing ``query``."""
    if page < 1:
        raise UserError("page must be 1 or more", where="page")
    now = time.time()
    found = []
    try:
        children = list(os.scandir(root))
    except OSError:
        children = []
    needle = query.strip().lower()
    for child in children:
        if not child.is_dir() or (needle and needle not in child.name.lower()):
            continue
        modified = _modified(child.path)
        if modified is not None:
            found.append((modified, child.name))
    found.sort(reverse=True)
    pages = max(1, -(-len(found) // per_page))
    shown = []
    for modified, name in found[(page - 1) * per_page: page * per_page]:
        run_dir = root / name
        entry = RunEntry(name, run_dir, modified, _status(run_dir, modified, now))
        entry.summary = read_json(run_dir / "summary.json") or _live_summary(run_dir)
        shown.append(entry)
    return RunPage(shown, len(found), page, pages)


def run_status(run_dir: Path) -> str:
    modified = _modified(run_dir)
    return _status(run_dir, modified if modified is not None else 0.0, time.time())


def _live_summary(run_dir: Path) -> dict:
    """What a run without summary.json shows: its last metrics line, model and method from its recipe."""
    last = last_metrics(run_dir)
    try:
        recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        recipe = None
    recipe = recipe if isinstance(recipe, dict) else {}
    return {"model": recipe.get("model"), "method": recipe.get("method"), "steps": last.get("step"),
            "final_loss": last.get("loss"), "validation_loss": last.get("validation_loss")}


def run_dir_of(root: Path, name: str) -> Path:
    """The directory of run ``name`` (a plain directory name under root: no path tricks)."""
    if not name or name in (".", "..") or not set(name) <= _NAME_OK:
        raise UserError(f"{name!r} is not a run name", where="run")
    run_dir = root / name
    if _modified(run_dir) is None:
        raise UserError(f"no run {name!r} under {root}", where="run",
                        hint="the runs page lists the runs; start the dashboard with --runs DIR for another folder")
    return run_dir


def read_metrics(run_dir: Path, offset: int = 0, max_bytes: int = 8 << 20) -> tuple[list[dict], int]:
    """Metrics lines from byte ``offset`` on, and the offset to ask from next time.

    Only complete lines count (the trainer may be half-way through writing the last one), so polling
    with the returned offset sees every line exactly once.
    """
    if offset < 0:
        raise UserError("offset must be 0 or more", where="offset")
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            f.seek(offset)
            chunk = f.read(max_bytes)
    except OSError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    points = []
    for line in chunk[:end].split(b"\n"):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "step" in value:
            points.append({k: value[k] for k in ("step", "loss", "validation_loss", "learning_rate") if k in value})
    return points, offset + end + 1


def checkpoints(run_dir: Path) -> list[str]:
    try:
        return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    except OSError:
        return []


def samples(run_dir: Path, limit: int = 5) -> list[dict]:
    """The last ``limit`` generations on the fixed prompts (``samples.jsonl``)."""
    try:
        lines = (run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()[-limit:]
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if isinstance(r, dict)]


def data_report(run_dir: Path) -> tuple[str | None, dict]:
    """The ``data prepare`` report beside the run's training data, if the resolved recipe names one."""
    try:
        recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None, {}
    train = (recipe.get("data") or {}).get("train") if isinstance(recipe, dict) else None
    if not isinstance(train, str):
        return None, {}
    report = Path(train).parent / "report.json"
    return str(report), read_json(report)
