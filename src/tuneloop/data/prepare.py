"""``data prepare`` as a Python API: ingest -> validate -> clean -> redact PII -> dedup -> split -> write.

    from tuneloop.data.prepare import PrepareOptions, prepare
    report = prepare(["support.jsonl"], "prepared/", PrepareOptions(task="sft"))
    report.counts["output"], report.files["train"]

Every input record ends in exactly one bucket, and report.json says which:
``input == invalid + exact_duplicates + near_duplicates + filtered + output``. Each record that is
not output has an entry in ``issues`` (``source`` = file:line, ``kind``, ``message``).

Order of the steps, and why: cleaning before PII and dedup (so "café" and mojibake "cafÃ©" compare
equal); PII before exact dedup (two messages differing only in an e-mail address are the same
training example); the length filter before near-dup clustering; near-dup clusters before
splitting, so that a cluster can never straddle splits.

How it scales: the per-record stages (parse, validate, clean, redact, count tokens, MinHash) run on
chunks of records (prepare_chunks) in worker processes or on Ray (prepare_engines, ``--workers``,
``--engine ray``); the global stages (exact and near dedup, split) run on compact per-record
summaries in input order (prepare_global), and the output is streamed from a spool file. Memory is
~90 bytes per record, near-dup's candidate pairs (16 bytes each) and a few chunks, and the output
is the same for any engine and worker count.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tuneloop import __version__
from tuneloop.data import ingest, pii, split, stats
from tuneloop.data.prepare_chunks import Accounting, read_chunks, task_from_shapes
from tuneloop.data.prepare_engines import ENGINES, run_chunks
from tuneloop.data.prepare_global import AUGMENTED_TRAIN, Spool, decide
from tuneloop.data.report import render_html
from tuneloop.data.validate import TASKS, detect_shape
from tuneloop.errors import UserError
from tuneloop.models.catalog import find_card
from tuneloop.models.estimate import estimate as estimate_training
from tuneloop.paths import check_output_dir, staged_files, write_json_atomic, write_text_atomic

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class PrepareOptions:
    """Settings of one ``data prepare`` run (the CLI flags of the same names)."""

    task: str = "auto"  # auto | sft | preference | classification
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, validation, test
    seed: int = 0
    text_column: str | None = None  # CSV/Parquet/JSON field to use as "text"
    label_column: str | None = None  # ... and as "label"
    pii: bool = True  # redact PII into <TYPE> placeholders
    near_dup_threshold: float = 0.8  # character 5-gram Jaccard; 0 turns near-dup detection off
    keep_near_duplicates: bool = False  # keep them, but in the same split as their cluster
    model: str | None = DEFAULT_MODEL  # whose tokenizer measures lengths (estimate if unavailable)
    max_seq_len: int = 1024  # records longer than this are counted in tokens.over_max_seq_len
    min_tokens: int = 1  # records shorter than this are filtered
    max_tokens: int | None = None  # records longer than this are filtered (None: keep all)
    workers: int | None = None  # processes for the per-record stages (None: one per core, up to 4; ray: all)
    engine: str = "local"  # local (this machine's processes) | ray (Ray Data)
    ray_address: str | None = None  # an existing Ray cluster (engine ray); None starts a local one

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"--task {self.task}: unknown task", hint=f"use one of {', '.join(TASKS)}")
        if not 0 <= self.near_dup_threshold <= 1:
            raise UserError(f"--near-dup-threshold {self.near_dup_threshold}: must be between 0 and 1",
                            hint="0.8 is a good default; 0 turns near-duplicate detection off")
        if self.max_seq_len < 1 or self.min_tokens < 0 or (self.max_tokens is not None and self.max_tokens < 1):
            raise UserError("--max-seq-len and --max-tokens must be positive, --min-tokens >= 0")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) < 0:
            raise UserError(f"split {self.split}: need three non-negative fractions summing to 1")
        if self.engine not in ENGINES:
            raise UserError(f"--engine {self.engine}: unknown engine", hint=f"use one of {', '.join(ENGINES)}")
        if self.ray_address and self.engine != "ray":
            raise UserError(f"--ray-address {self.ray_address} is only used with --engine ray",
                            hint="add --engine ray, or leave --ray-address out")


@dataclass
class PrepareReport:
    """What :func:`prepare` did; ``to_json()`` is report.json."""

    task: str
    counts: dict
    splits: dict
    tokens: dict
    labels: dict
    issues: list[dict]
    pii: dict
    shapes: dict
    near_duplicates: dict
    cleaning: dict
    inputs: list[str]
    settings: dict
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("files")
        return data


def resolve_task(raw: list[ingest.RawRecord], task: str) -> str:
    """``auto`` becomes preference, classification or sft from the records' shapes (majority wins)."""
    return task_from_shapes(Counter(detect_shape(r.obj) for r in raw if r.error is None), task)


def _progress(description: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI), where it would only add noise.
    return tqdm(desc=description, unit="rec", file=sys.stderr, mininterval=0.5, leave=False, disable=None)


def _first_guess(files: list[Path], columns: ingest.ColumnMap, task: str) -> str:
    """The task the first chunk's shapes say (``auto``); checked against all records at the end."""
    if task != "auto":
        return task
    first = next(read_chunks(files, columns), None)
    return resolve_task(first.raw_records(), task) if first is not None else "sft"


def _per_record_pass(files: list[Path], task: str, options: PrepareOptions, folder: Path,
                     progress: bool) -> Spool:
    """Every chunk through the per-record stages on the chosen engine, merged in input order."""
    spool = Spool(folder, options.near_dup_threshold > 0)
    bar = _progress("checking", progress)
    chunks = read_chunks(files, ingest.ColumnMap(options.text_column, options.label_column))
    for result in run_chunks(chunks, task, options):
        spool.add(result)
        if bar is not None:
            bar.update(result.n_input)
    if bar is not None:
        bar.close()
    return spool


def _settings(options: PrepareOptions, task: str) -> dict:
    settings = asdict(options)
    settings["split"] = list(options.split)
    settings["resolved_task"] = task
    return settings


def prepare(paths, out_dir, options: PrepareOptions | None = None, progress: bool = False) -> PrepareReport:
    """Run the whole preparation and write train/validation/test.jsonl, report.json/.html, manifest.json.

    Records stream through in chunks; per record only a compact summary stays in memory (see
    prepare_global), and the bulky parts wait in a temporary folder (``TMPDIR``) until written.
    """
    options = options or PrepareOptions()
    clock = _StageClock()
    check_output_dir(out_dir)
    files = ingest.expand_inputs(paths)
    _check_inputs_are_not_outputs(files, Path(out_dir))
    counter = stats.load_token_counter(options.model)  # loaded before workers fork, so they share it
    task = _first_guess(files, ingest.ColumnMap(options.text_column, options.label_column), options.task)
    clock.lap("read")
    with tempfile.TemporaryDirectory(prefix="tuneloop-prepare-") as folder:
        spool = _per_record_pass(files, task, options, Path(folder), progress)
        if task_from_shapes(spool.detected, options.task) != task:
            # The first chunk's shapes were not the majority's: the task decides validation, so again.
            task = task_from_shapes(spool.detected, options.task)
            spool.finish()
            spool = _per_record_pass(files, task, options, Path(folder), progress)
        if not spool.n_input:
            raise UserError(f"no records found in {', '.join(map(str, paths))}", hint="are the files empty?")
        if spool.tokenizers - {counter.description}:  # a Ray node without the model counts differently
            raise UserError(f"--model {options.model}: token counts differ between machines "
                            f"(here: {counter.description}; on workers: {', '.join(sorted(spool.tokenizers))})",
                            hint="make the model available on every Ray node (tuneloop models import), "
                                 "or pass --model none to estimate everywhere")
        books = Accounting(spool.n_input)
        books.counts.update(spool.counts)
        books.issues = spool.issues
        shapes, pii_counts, cleaned = spool.shapes, spool.pii, spool.cleaned
        summary = spool.finish()
        clock.lap("validate_clean_pii")
        decision = decide(summary, options, books, counter, clock.lap)
        token_stats = stats.length_statistics(decision.output_lengths, options.max_seq_len, counter)
        token_stats["counted"] = decision.counting
        # Sequences are about as long as the records (p95), not max_seq_len: that is what the estimate needs.
        seq_len = min(options.max_seq_len, max(16, token_stats.get("p95", options.max_seq_len)))
        token_stats.update(training_estimate(options.model, token_stats["total"], seq_len))
        clock.lap("split")
        report = PrepareReport(
            task=task, counts=books.counts, splits=decision.splits, tokens=token_stats, labels=decision.labels,
            issues=books.issues, pii={"enabled": options.pii, **{t: pii_counts.get(t, 0) for t in pii.PII_TYPES}},
            shapes=dict(shapes), near_duplicates=decision.near_summary, cleaning={"records_changed": cleaned},
            inputs=[str(f) for f in files], settings=_settings(options, task), stage_seconds=clock.stages)
        _check_accounting(report.counts)
        report.seconds = round(clock.total, 3)  # what report.json/.html show (writing them not included)
        write_outputs(Path(out_dir), Path(folder) / "output.jsonl", decision.fate, report, files)
    clock.lap("write")
    report.seconds = round(clock.total, 3)
    return report


OUTPUT_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "report.json", "report.html", "manifest.json")


def _check_inputs_are_not_outputs(files: list[Path], out_dir: Path) -> None:
    """Writing --out must never replace an input (e.g. prepare data/train.jsonl --out data/)."""
    outputs = {(out_dir / name).resolve() for name in OUTPUT_FILES}
    for path in files:
        if path.resolve() in outputs:
            raise UserError(f"--out {out_dir} would overwrite the input {path}",
                            hint="choose another --out directory (inputs are never modified); "
                                 "to re-prepare a prepared directory, pass its files to a new --out")


class _StageClock:
    """Seconds per pipeline stage (report.json ``stage_seconds``: where the time goes)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 3)
        self.last = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def _check_accounting(counts: dict) -> None:
    parts = ("invalid", "exact_duplicates", "near_duplicates", "filtered", "output")
    if counts["input"] != sum(counts[k] for k in parts):  # a bug in tuneloop, not the user's data
        raise RuntimeError(f"record accounting does not add up: {counts}")


def training_estimate(model: str | None, tokens_per_epoch: int, seq_len: int) -> dict:
    """Tokens per epoch and, for a catalog model, the model layer's LoRA time estimate for one epoch."""
    estimate = {"tokens_per_epoch": tokens_per_epoch}
    card = find_card(model or DEFAULT_MODEL)
    if card is None:
        estimate["train_time"] = f"unavailable ({model} is not a catalog model)"
        return estimate
    try:
        # Importing torch only to ask for CUDA would cost seconds; a GPU shows itself as a device node.
        device = "cuda" if Path("/dev/nvidia0").exists() or "torch" in sys.modules and \
            sys.modules["torch"].cuda.is_available() else "cpu"
        seconds = estimate_training(card, "lora", seq_len=seq_len, batch_size=8,
                                    device=device).seconds_per_1k_tokens
    except Exception as e:  # an estimate is a nicety; its failure must not stop preparation
        estimate["train_time"] = f"unavailable ({e})"
        return estimate
    estimate["train_seconds_per_epoch"] = round(seconds * tokens_per_epoch / 1000, 1)
    estimate["train_time"] = (f"~{seconds * tokens_per_epoch / 60000:.1f} min per epoch (LoRA r16, batch 8, "
                              f"{card.name}, from `tuneloop models estimate`)")
    return estimate


def _input_entry(path: Path) -> dict:
    """Manifest entry of one input: a file's hash, a save_to_disk directory's files hashed together,
    or a hub dataset id (its content is the hub's; the id with config and split is the record)."""
    if path.is_file():
        return {"path": str(path), "sha256": _sha256(path), "bytes": path.stat().st_size}
    if path.is_dir():
        digest, size = hashlib.sha256(), 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + _sha256(file).encode())
            size += file.stat().st_size
        return {"path": str(path), "sha256": digest.hexdigest(), "bytes": size}
    return {"path": str(path), "hub_dataset": True}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_outputs(out_dir: Path, spool: Path, fate: np.ndarray, report: PrepareReport, inputs: list[Path]) -> None:
    """All files are written to a staging folder first and moved in together, manifest.json last (its
    presence means a complete set): a full disk mid-write leaves an earlier set in ``out_dir`` intact.

    The split files are streamed from the spool of output lines (``fate``: each line's split, see
    prepare_global); augmented records join train after the originals.
    """
    with staged_files(out_dir, last="manifest.json") as stage:
        _write_splits(stage, spool, fate)
        report.files.update({name: out_dir / f"{name}.jsonl" for name in split.SPLITS})
        write_json_atomic(stage / "report.json", report.to_json())
        write_text_atomic(stage / "report.html", render_html(report.to_json()))
        report.files.update(report=out_dir / "report.json", html=out_dir / "report.html")
        manifest = {
            "tool": "tuneloop", "version": __version__, "command": "data prepare",
            "settings": report.settings,
            "inputs": [_input_entry(p) for p in inputs],
            "outputs": [{"path": p.name, "sha256": _sha256(stage / p.name), "bytes": (stage / p.name).stat().st_size}
                        for p in report.files.values()],
        }
        write_json_atomic(stage / "manifest.json", manifest)
    report.files["manifest"] = out_dir / "manifest.json"


def _write_splits(stage: Path, spool: Path, fate: np.ndarray) -> None:
    targets = [open(stage / f"{name}.jsonl", "wb") for name in split.SPLITS]
    try:
        with open(spool, "rb") as lines:
            for line, goes in zip(lines, fate.tolist()):
                if 0 <= goes < len(targets):
                    targets[goes].write(line)
            if (fate == AUGMENTED_TRAIN).any():
                lines.seek(0)
                for line, goes in zip(lines, fate.tolist()):
                    if goes == AUGMENTED_TRAIN:
                        targets[0].write(line)
    finally:
        for target in targets:
            target.close()
