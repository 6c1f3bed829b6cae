"""``data prepare`` as a Python API: ingest -> validate -> clean -> redact PII -> dedup -> split -> write.

    from tuneloop.data.prepare import PrepareOptions, prepare
    report = prepare(["support.jsonl"], "prepared/", PrepareOptions(task="sft"))
    report.counts["output"], report.files["train"]

Every input record ends in exactly one bucket, and report.json says which:
``input == invalid + exact_duplicates + near_duplicates + filtered + output``. Each record that is
not output has an entry in ``issues`` (``source`` = file:line, ``kind``, ``message``).

Order of the steps, and why: cleaning before PII and dedup (so "café" and mojibake "cafÃ©" compare
equal); PII before exact dedup (two messages differing only in an e-mail address are the same
training example); exact dedup before counting tokens (no work on records about to be dropped); the
length filter before near-dup clustering; near-dup clusters before splitting, so that a cluster can
never straddle splits.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tuneloop import __version__
from tuneloop.data import augment_provenance, clean, dedup, ingest, pii, split, stats
from tuneloop.data.records import content_text, map_texts, to_canonical
from tuneloop.data.report import render_html
from tuneloop.data.validate import TASKS, detect_shape, validate_record
from tuneloop.errors import UserError
from tuneloop.models.catalog import find_card
from tuneloop.models.estimate import estimate as estimate_training
from tuneloop.paths import (check_output_dir, staged_files, write_json_atomic, write_jsonl_atomic,
                            write_text_atomic)

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
    workers: int | None = None  # processes for validate/clean/PII on big inputs (None: one per core, up to 4)

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


@dataclass
class _Candidate:
    """A valid record on its way through the pipeline."""

    source: str
    record: dict
    key: str = ""  # normalised content: equal keys are exact duplicates
    label: str | None = None
    origin: str = ""  # the id augmented records name this record by (augment_provenance.origin_id)


def read_all(paths, options: PrepareOptions) -> tuple[list[ingest.RawRecord], list[Path]]:
    files = ingest.expand_inputs(paths)
    columns = ingest.ColumnMap(options.text_column, options.label_column)
    records = [r for path in files for r in ingest.read_records(path, columns)]
    return records, files


def resolve_task(raw: list[ingest.RawRecord], task: str) -> str:
    """``auto`` becomes preference, classification or sft from the records' shapes (majority wins)."""
    if task != "auto":
        return task
    shapes = Counter(detect_shape(r.obj) for r in raw if r.error is None)
    shapes.pop(None, None)
    preference = shapes.pop("preference", 0) + shapes.pop("unpaired_preference", 0)
    if preference > sum(shapes.values()):
        return "preference"
    if shapes and set(shapes) == {"classification"}:
        return "classification"
    return "sft"


class _Accounting:
    """Counts and issues; every record that is not output is counted once in exactly one bucket."""

    def __init__(self, n_input: int):
        self.counts = {"input": n_input, "invalid": 0, "exact_duplicates": 0, "near_duplicates": 0,
                       "filtered": 0, "pii_redacted": 0, "output": 0}
        self.issues: list[dict] = []

    def drop(self, bucket: str, source: str, kind: str, message: str) -> None:
        self.counts[bucket] += 1
        self.issues.append({"source": source, "kind": kind, "message": message})

    def note(self, source: str, kind: str, message: str) -> None:
        self.issues.append({"source": source, "kind": kind, "message": message})


def _progress(items, description: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI), where it would only add noise.
    return tqdm(items, desc=description, unit="rec", file=sys.stderr, mininterval=0.5, leave=False, disable=None)


def check_and_clean(raw: list[ingest.RawRecord], task: str, options: PrepareOptions, books: _Accounting,
                    progress: bool = False) -> tuple[list[_Candidate], Counter, Counter, int]:
    """Validate, convert, clean and redact each record; returns survivors, shapes, PII counts, #cleaned."""
    survivors, shapes, pii_counts, cleaned = [], Counter(), Counter(), 0
    # Augmented records name their sources by origin id; hashing every record is only needed then.
    need_origin = any(isinstance(r.obj, dict) and "augmented_from" in r.obj for r in raw)
    text_cache: dict = {}
    for item in _progress(raw, "checking", progress):
        if item.error is not None:
            books.drop("invalid", item.source, "invalid", f"record: {item.error}")
            continue
        shape, problems = validate_record(item.obj, task)
        if problems:
            books.counts["invalid"] += 1
            for problem in problems:
                books.note(item.source, "invalid", f"{problem.field}: {problem.message}")
            continue
        shapes[shape] += 1
        record = to_canonical(item.obj, shape)
        record.update(augment_provenance.provenance_fields(item.obj))
        text_state = _TextPass(options.pii, text_cache)
        map_texts(record, text_state)  # one pass: clean, then redact, every free text
        cleaned += text_state.changed
        if text_state.empty:
            books.drop("filtered", item.source, "empty", "a text is empty after cleaning "
                       "(it held only whitespace or control characters)")
            continue
        if text_state.redacted:
            books.counts["pii_redacted"] += 1
            pii_counts.update(text_state.redacted)
        label = record.get("label")
        survivors.append(_Candidate(item.source, record, clean.normalise_for_dedup(content_text(record, task)),
                                    label, augment_provenance.origin_id(item.obj) if need_origin else ""))
    return survivors, shapes, pii_counts, cleaned


PARALLEL_MIN_RECORDS = 20_000  # below this, starting worker processes costs more than it saves
_SHARED_RAW: list[ingest.RawRecord] = []  # what forked workers read (inherited, never pickled)


def _check_chunk(args: tuple[int, int, str, PrepareOptions]) -> tuple:
    start, end, task, options = args
    books = _Accounting(0)
    result = check_and_clean(_SHARED_RAW[start:end], task, options, books)
    return result, books.counts, books.issues


def check_and_clean_parallel(raw: list[ingest.RawRecord], task: str, options: PrepareOptions,
                             books: _Accounting, progress: bool = False):
    """:func:`check_and_clean` over chunks in forked worker processes (one per core) for big inputs.

    Validation, cleaning and PII are pure Python per record, so threads would not help; forked
    workers inherit ``raw`` without copying it, and chunks are merged in input order, so the result
    is the same as the sequential one.
    """
    import multiprocessing
    import os

    workers = options.workers or min(os.cpu_count() or 1, 4)
    if len(raw) < PARALLEL_MIN_RECORDS or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return check_and_clean(raw, task, options, books, progress)
    global _SHARED_RAW
    _SHARED_RAW = raw
    size = -(-len(raw) // (workers * 4))  # a few chunks per worker evens out uneven records
    chunks = [(start, min(start + size, len(raw)), task, options) for start in range(0, len(raw), size)]
    survivors, shapes, pii_counts, cleaned = [], Counter(), Counter(), 0
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.imap(_check_chunk, chunks)
            for (part, part_shapes, part_pii, part_cleaned), counts, issues in _progress_chunks(
                    results, len(chunks), progress):
                survivors += part
                shapes.update(part_shapes)
                pii_counts.update(part_pii)
                cleaned += part_cleaned
                for key in ("invalid", "filtered", "pii_redacted"):
                    books.counts[key] += counts[key]
                books.issues += issues
    finally:
        _SHARED_RAW = []
    return survivors, shapes, pii_counts, cleaned


def _progress_chunks(results, total: int, enabled: bool):
    if not enabled:
        return results
    from tqdm import tqdm

    return tqdm(results, total=total, desc="checking", unit="chunk", file=sys.stderr, leave=False, disable=None)


class _TextPass:
    """Called on each free text of one record: cleans it, then redacts PII (unless off); remembers
    whether cleaning changed or emptied any text and what was redacted.

    ``cache`` maps texts already seen in this run to their result: system prompts, stock answers
    and class labels repeat across records and are processed once.
    """

    CACHE_LIMIT = 200_000

    def __init__(self, redact: bool, cache: dict):
        self.redact, self.cache = redact, cache
        self.changed = self.empty = False
        self.redacted: Counter = Counter()

    def __call__(self, text: str) -> str:
        hit = self.cache.get(text)
        if hit is None:
            cleaned = clean.clean_text(text)
            spans = pii.find_pii(cleaned) if self.redact and cleaned else []
            result = pii.replace_spans(cleaned, spans) if spans else cleaned
            hit = (result, cleaned != text, not cleaned and bool(text), [kind for _, _, kind in spans])
            if len(self.cache) < self.CACHE_LIMIT:
                self.cache[text] = hit
        result, changed, empty, found = hit
        self.changed |= changed
        self.empty |= empty
        if found:
            self.redacted.update(found)
        return result


def drop_exact_duplicates(candidates: list[_Candidate], books: _Accounting) -> list[_Candidate]:
    """Keep the first of each normalised key; report duplicates and conflicting labels."""
    first_of = dedup.exact_duplicate_of([c.key for c in candidates])
    kept = []
    for i, candidate in enumerate(candidates):
        first = candidates[first_of[i]]
        if first_of[i] == i:
            kept.append(candidate)
        elif candidate.label is not None and candidate.label != first.label:
            books.drop("exact_duplicates", candidate.source, "conflicting_label",
                       f"same text as {first.source} but labelled '{candidate.label}' there "
                       f"'{first.label}'; kept the first, fix the label that is wrong")
        else:
            books.drop("exact_duplicates", candidate.source, "exact_duplicate",
                       f"same content as {first.source} (after normalisation)")
    return kept


def filter_lengths(candidates: list[_Candidate], counter: stats.TokenCounter, options: PrepareOptions,
                   books: _Accounting) -> tuple[list[_Candidate], list[int], dict]:
    # Exact counts for every record only when a filter needs them (min_tokens 1 only drops empty
    # records, and those are gone already); otherwise a sample (see stats.corpus_lengths).
    exact_all = options.min_tokens > 1 or options.max_tokens is not None
    lengths, counting = stats.corpus_lengths(counter, [c.record for c in candidates], options.max_seq_len, exact_all)
    kept, kept_lengths = [], []
    unit = "estimated tokens" if counter.estimated else "tokens"
    for candidate, length in zip(candidates, lengths.tolist()):
        if length < options.min_tokens:
            books.drop("filtered", candidate.source, "too_short",
                       f"{length} {unit}, below --min-tokens {options.min_tokens}")
        elif options.max_tokens is not None and length > options.max_tokens:
            books.drop("filtered", candidate.source, "too_long",
                       f"{length} {unit}, above --max-tokens {options.max_tokens}")
        else:
            kept.append(candidate)
            kept_lengths.append(length)
    return kept, kept_lengths, counting


def cluster_near_duplicates(candidates: list[_Candidate], options: PrepareOptions,
                            books: _Accounting) -> tuple[list[int], dict]:
    """Each survivor's group (its cluster representative); drops non-representatives unless kept."""
    if options.near_dup_threshold <= 0:
        return list(range(len(candidates))), {"threshold": None, "clusters": 0, "candidates": 0}
    found = dedup.near_duplicate_clusters([_near_key(c) for c in candidates], options.near_dup_threshold)
    clustered = sum(1 for i, rep in enumerate(found.cluster) if rep != i)
    summary = {"threshold": options.near_dup_threshold, "candidates": found.candidates,
               "clusters": len({rep for i, rep in enumerate(found.cluster) if rep != i}),
               "records_in_clusters": clustered, "kept": options.keep_near_duplicates}
    if not options.keep_near_duplicates:
        for i, rep in enumerate(found.cluster):
            if rep != i:
                partner = found.partner.get(i, rep)
                books.drop("near_duplicates", candidates[i].source, "near_duplicate",
                           f"near-duplicate of {candidates[partner].source} (Jaccard "
                           f"{found.similarity.get(i, options.near_dup_threshold):.2f}); kept "
                           f"{candidates[rep].source} for the cluster")
    return found.cluster, summary


def _near_key(candidate: _Candidate) -> str:
    """The key without system messages (see records.content_text); most records have none."""
    messages = candidate.record.get("messages")
    if isinstance(messages, list) and any(m.get("role") == "system" for m in messages):
        return clean.normalise_for_dedup(content_text(candidate.record, "sft", system=False))
    return candidate.key


def record_id(candidate: _Candidate) -> str:
    """Stable id: a hash of the normalised content (unique, since exact duplicates are gone)."""
    return hashlib.blake2b(candidate.key.encode("utf-8"), digest_size=8).hexdigest()


def _output_record(candidate: _Candidate) -> dict:
    record = {"id": record_id(candidate), "source": candidate.source}
    record.update((k, v) for k, v in candidate.record.items() if k != "label")
    if candidate.label is not None:
        record["label"] = candidate.label
    return record


def _label_distribution(by_split: dict[str, list[_Candidate]]) -> dict:
    if not any(c.label is not None for members in by_split.values() for c in members):
        return {}
    return {name: dict(sorted(Counter(c.label for c in members if c.label is not None).items()))
            for name, members in by_split.items()}


def _settings(options: PrepareOptions, task: str) -> dict:
    settings = asdict(options)
    settings["split"] = list(options.split)
    settings["resolved_task"] = task
    return settings


def prepare(paths, out_dir, options: PrepareOptions | None = None, progress: bool = False) -> PrepareReport:
    """Run the whole preparation and write train/validation/test.jsonl, report.json/.html, manifest.json."""
    options = options or PrepareOptions()
    clock = _StageClock()
    check_output_dir(out_dir)
    raw, files = read_all(paths, options)
    _check_inputs_are_not_outputs(files, Path(out_dir))
    if not raw:
        raise UserError(f"no records found in {', '.join(map(str, paths))}", hint="are the files empty?")
    task = resolve_task(raw, options.task)
    books = _Accounting(len(raw))
    clock.lap("read")
    candidates, shapes, pii_counts, cleaned = check_and_clean_parallel(raw, task, options, books, progress)
    del raw
    clock.lap("validate_clean_pii")
    candidates = drop_exact_duplicates(augment_provenance.originals_first(candidates), books)
    clock.lap("exact_dedup")
    counter = stats.load_token_counter(options.model)
    candidates, lengths, counting = filter_lengths(candidates, counter, options, books)
    # Augmented records (data augment) skip near-dup clustering and the split; they join train at the end.
    candidates, lengths, augmented = augment_provenance.set_aside_augmented(candidates, lengths)
    clock.lap("tokens")
    groups, near_summary = cluster_near_duplicates(candidates, options, books)
    clock.lap("near_dedup")
    kept = [i for i, g in enumerate(groups) if options.keep_near_duplicates or g == i]
    label_of_group = {groups[i]: candidates[groups[i]].label for i in kept}
    assigned = split.assign_splits([groups[i] for i in kept], label_of_group, options.split, options.seed)
    by_split: dict[str, list[_Candidate]] = {name: [] for name in split.SPLITS}
    for i, name in zip(kept, assigned):
        by_split[name].append(candidates[i])
    augmented_lengths = augment_provenance.place_augmented(augmented, by_split, books.drop)
    books.counts["output"] = len(kept) + len(augmented_lengths)
    token_stats = stats.length_statistics(np.asarray([lengths[i] for i in kept] + augmented_lengths, dtype=np.int64),
                                          options.max_seq_len, counter)
    token_stats["counted"] = counting
    # Sequences are about as long as the records (p95), not max_seq_len: that is what the estimate needs.
    seq_len = min(options.max_seq_len, max(16, token_stats.get("p95", options.max_seq_len)))
    token_stats.update(training_estimate(options.model, token_stats["total"], seq_len))
    clock.lap("split")
    report = PrepareReport(
        task=task, counts=books.counts, splits={k: len(v) for k, v in by_split.items()}, tokens=token_stats,
        labels=_label_distribution(by_split), issues=books.issues,
        pii={"enabled": options.pii, **{t: pii_counts.get(t, 0) for t in pii.PII_TYPES}},
        shapes=dict(shapes), near_duplicates=near_summary, cleaning={"records_changed": cleaned},
        inputs=[str(f) for f in files], settings=_settings(options, task), stage_seconds=clock.stages)
    _check_accounting(report.counts)
    report.seconds = round(clock.total, 3)  # what report.json/.html show (writing them not included)
    write_outputs(Path(out_dir), by_split, report, files)
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


def write_outputs(out_dir: Path, by_split: dict[str, list[_Candidate]], report: PrepareReport,
                  inputs: list[Path]) -> None:
    """All files are written to a staging folder first and moved in together, manifest.json last (its
    presence means a complete set): a full disk mid-write leaves an earlier set in ``out_dir`` intact."""
    with staged_files(out_dir, last="manifest.json") as stage:
        for name, members in by_split.items():
            write_jsonl_atomic(stage / f"{name}.jsonl", (_output_record(c) for c in members))
            report.files[name] = out_dir / f"{name}.jsonl"
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
