"""Evaluation reports (``eval.json``, SPEC "Evaluation output") found under the dashboard's folders.

The folders are walked a few levels deep (``eval/eval.json``, ``runs/x/eval/eval.json``,
``rounds/r1/eval-heldout/eval.json``), skipping model folders, and the list is cached for a few
seconds so a page of evaluations does not rewalk the tree on every load. A report is addressed by its
path relative to its folder; only paths in the found list can be opened (no arbitrary file reads).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tuneloop.dashboard.runs import read_json
from tuneloop.errors import UserError

MAX_DEPTH = 4
_SKIP = frozenset({"checkpoints", "adapter", "model", ".git", ".venv", "node_modules", "__pycache__"})
# The metrics shown in the list, in this order, when a report has them.
HEADLINE = ("accuracy", "f1", "exact_match", "fact_accuracy", "rougeL", "bleu", "perplexity")


@dataclass
class EvalEntry:
    key: str  # "<folder index>:<relative path>"
    path: Path
    modified: float


class EvalIndex:
    def __init__(self, roots: list[Path], ttl_s: float = 5.0):
        self.roots = [Path(r) for r in roots]
        self.ttl_s = ttl_s
        self._found: list[EvalEntry] = []
        self._at = float("-inf")
        self._models: dict[Path, tuple[float, str]] = {}

    def entries(self) -> list[EvalEntry]:
        if time.monotonic() - self._at > self.ttl_s:
            self._found = sorted(self._walk(), key=lambda e: e.modified, reverse=True)
            self._at = time.monotonic()
        return self._found

    def _walk(self):
        for index, root in enumerate(self.roots):
            base_depth = str(root).rstrip(os.sep).count(os.sep)
            for folder, dirs, files in os.walk(root):
                depth = folder.rstrip(os.sep).count(os.sep) - base_depth
                dirs[:] = [d for d in dirs if d not in _SKIP and depth < MAX_DEPTH]
                if "eval.json" in files:
                    path = Path(folder) / "eval.json"
                    try:
                        modified = path.stat().st_mtime
                    except OSError:
                        continue
                    yield EvalEntry(f"{index}:{path.relative_to(root).as_posix()}", path, modified)

    def of_model(self, model_dir: Path) -> list[EvalEntry]:
        """The reports whose ``model`` is ``model_dir`` (each report's model read once per change)."""
        target = str(Path(model_dir).resolve())
        found = []
        for entry in self.entries():
            cached = self._models.get(entry.path)
            if cached is None or cached[0] != entry.modified:
                model = load(entry).get("model")
                cached = (entry.modified, str(Path(model).resolve()) if isinstance(model, str) else "")
                self._models[entry.path] = cached
            if cached[1] == target:
                found.append(entry)
        return found

    def get(self, key: str) -> EvalEntry:
        for entry in self.entries():
            if entry.key == key:
                return entry
        raise UserError(f"no evaluation {key!r}", where="eval", hint="pick one from the evaluations page")


def load(entry: EvalEntry) -> dict:
    report = read_json(entry.path)
    if not isinstance(report.get("metrics"), dict):
        report["metrics"] = {}
    return report


def comparison_rows(report: dict) -> list[dict]:
    """One row per metric: model value, baseline value, delta and its 95% CI where the report has them."""
    metrics = report.get("metrics") or {}
    baseline = ((report.get("baseline") or {}).get("metrics")) or {}
    compared = report.get("comparison") or {}
    rows = []
    for name, value in metrics.items():
        if not isinstance(value, (int, float)):
            continue
        row = {"metric": name, "model": value, "baseline": baseline.get(name), "delta": None, "ci95": None}
        if isinstance(compared.get(name), dict):
            row["delta"] = compared[name].get("delta")
            row["ci95"] = compared[name].get("ci95")
        elif isinstance(row["baseline"], (int, float)):
            row["delta"] = value - row["baseline"]
        rows.append(row)
    return rows


def side_by_side(reports: list[dict]) -> list[tuple[str, list]]:
    """(metric, [value in each report]) for every metric any of the reports has."""
    names = list(dict.fromkeys(n for r in reports for n, v in (r.get("metrics") or {}).items()
                               if isinstance(v, (int, float))))
    return [(n, [(r.get("metrics") or {}).get(n) for r in reports]) for n in names]


# -- base vs tuned, sample by sample ----------------------------------------------------------------
PREDICTIONS, BASELINE_PREDICTIONS = "predictions.jsonl", "predictions.baseline.jsonl"
SHOW = ("all", "changed", "fixed", "broken")


@dataclass
class SamplePair:
    id: str
    prompt: str
    reference: str
    base: str
    tuned: str
    base_correct: bool
    tuned_correct: bool

    @property
    def change(self) -> str:
        """fixed (the base was wrong, the tuned model right), broken (the other way) or same."""
        if self.base_correct == self.tuned_correct:
            return "same"
        return "fixed" if self.tuned_correct else "broken"


def _read_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a half-written last line while the evaluation writes
        if isinstance(row, dict):
            rows.append(row)
    return rows


def sample_pairs(entry: EvalEntry) -> list[SamplePair] | None:
    """Tuned and base answers of each sample (matched by ``id``, else by position), or None when the
    evaluation has no ``predictions.baseline.jsonl`` beside its ``predictions.jsonl``."""
    tuned_path, base_path = entry.path.with_name(PREDICTIONS), entry.path.with_name(BASELINE_PREDICTIONS)
    if not (tuned_path.is_file() and base_path.is_file()):
        return None
    tuned, base = _read_rows(tuned_path), _read_rows(base_path)
    ids = [r.get("id") for r in tuned]
    if None not in ids and len(set(ids)) == len(ids):
        by_id = {r.get("id"): r for r in base}
        matched = [(t, by_id[t["id"]]) for t in tuned if t["id"] in by_id]
    else:
        matched = list(zip(tuned, base))
    return [SamplePair(str(t.get("id", i)), str(t.get("prompt", "")), str(t.get("reference", "")),
                       str(b.get("prediction", "")), str(t.get("prediction", "")), bool(b.get("correct")),
                       bool(t.get("correct"))) for i, (t, b) in enumerate(matched)]


def check_show(show: str) -> str:
    if show not in SHOW:
        raise UserError(f"{show!r} is not one of {', '.join(SHOW)}", where="show")
    return show


def shown_pairs(pairs: list[SamplePair], show: str) -> list[SamplePair]:
    if check_show(show) == "all":
        return pairs
    if show == "changed":
        return [p for p in pairs if p.change != "same"]
    return [p for p in pairs if p.change == show]
