"""The per-record stages of ``data prepare``, run on one chunk of records at a time.

:func:`read_chunks` cuts the inputs into chunks of a few thousand records (never across a file, so a
chunk has one path); :func:`process_chunk` parses, validates, converts, cleans, redacts and counts
the tokens of a chunk's records, and returns a :class:`ChunkResult`: the output lines of the
survivors plus the compact summary the global stages need (a 128-bit hash of the dedup key, the
label, the token count, the MinHash signature and LSH band hashes of the near-dup key). A chunk's
result depends on that chunk alone, so chunks can run in any process or on any machine
(``prepare_engines``) and the merged results are the same as one process's.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuneloop.data import augment_provenance, clean, dedup, ingest, pii, stats
from tuneloop.data.records import content_text, map_texts, to_canonical
from tuneloop.data.validate import detect_shape, validate_record

CHUNK_RECORDS = 2000  # big enough that per-chunk costs vanish, small enough to bound a worker's memory
NUM_PERM = 128  # MinHash permutations (dedup.near_duplicate_clusters' default)


@dataclass
class Chunk:
    """Records of one input file: JSONL lines still to parse (``lines``) or records read (``records``)."""

    path: str
    lines: list[tuple[int, str]] | None = None
    records: list[ingest.RawRecord] | None = None
    columns: ingest.ColumnMap = ingest.ColumnMap()

    def raw_records(self) -> list[ingest.RawRecord]:
        if self.records is not None:
            return self.records
        parsed = (ingest.parse_jsonl_line(self.path, number, line) for number, line in self.lines)
        if self.columns:
            return [ingest.rename_columns(r, self.columns) for r in parsed]
        return list(parsed)

    def __len__(self) -> int:
        return len(self.records if self.records is not None else self.lines)


def read_chunks(files: list[Path], columns: ingest.ColumnMap, size: int | None = None) -> Iterator[Chunk]:
    """Chunks of every input in order (``size`` records, default CHUNK_RECORDS). JSONL lines are
    parsed by the chunk's worker, not here, so the one reading process does little more than read."""
    size = size or CHUNK_RECORDS
    for path in files:
        if ingest.is_plain_jsonl(path):
            lines = ingest.read_jsonl_lines(path)
            make = lambda batch: Chunk(str(path), lines=batch, columns=columns)  # noqa: E731
        else:
            lines = ingest.read_records(path, columns)
            make = lambda batch: Chunk(str(path), records=batch)  # noqa: E731
        batch = []
        for item in lines:
            batch.append(item)
            if len(batch) == size:
                yield make(batch)
                batch = []
        if batch:
            yield make(batch)


class Accounting:
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


def task_from_shapes(shapes: Counter, task: str) -> str:
    """``auto`` becomes preference, classification or sft from the records' shapes (majority wins)."""
    if task != "auto":
        return task
    shapes = Counter(shapes)
    shapes.pop(None, None)
    preference = shapes.pop("preference", 0) + shapes.pop("unpaired_preference", 0)
    if preference > sum(shapes.values()):
        return "preference"
    if shapes and set(shapes) == {"classification"}:
        return "classification"
    return "sft"


@dataclass
class ChunkResult:
    """What one chunk contributes: counts and issues of its dropped records, and per survivor its
    output line and summary (arrays in survivor order)."""

    n_input: int
    counts: dict
    issues: list[dict]
    shapes: Counter  # of valid records, as validated for the task
    detected: Counter  # detect_shape of every parsed record (what ``--task auto`` decides on)
    pii: Counter
    cleaned: int
    tokenizer: str  # TokenCounter.description where the chunk ran (must be the driver's)
    path: str
    lines: np.ndarray  # int64 line of each survivor
    key_hash: np.ndarray  # (m, 2) uint64: 128-bit hash of the exact-dedup key
    labels: list
    lengths: np.ndarray  # int64 tokens where counted here (-1: left to the sample, see _token_summary)
    content_bytes: np.ndarray  # stats.byte_profile of each survivor
    upper_bound: np.ndarray
    messages: np.ndarray
    origin: np.ndarray  # uint64 hash of augment_provenance.origin_id (what augmented records name)
    augmented_from: dict = field(default_factory=dict)  # survivor index -> its augmented_from
    output: bytes = b""  # the survivors' output JSON lines
    output_bytes: np.ndarray | None = None  # each output line's size
    near_keys: bytes = b""  # the near-dup keys, one a line (no key holds a newline)
    near_key_bytes: np.ndarray | None = None  # each key line's size
    signatures: np.ndarray | None = None  # (m, NUM_PERM) uint32 MinHash of the near-dup keys
    bands: np.ndarray | None = None  # (m, bands) uint64 LSH band hashes


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def process_chunk(chunk: Chunk, task: str, options) -> ChunkResult:
    """The per-record stages for one chunk (``options`` is a ``PrepareOptions``)."""
    raw = chunk.raw_records()
    books = Accounting(0)
    survivors, shapes, pii_counts, cleaned = check_and_clean(raw, task, options, books)
    keys = [c.key for c in survivors]
    digests = b"".join(hashlib.blake2b(k.encode("utf-8"), digest_size=16).digest() for k in keys)
    result = ChunkResult(
        n_input=len(raw), counts=books.counts, issues=books.issues, shapes=shapes,
        detected=Counter(detect_shape(r.obj) for r in raw if r.error is None), pii=pii_counts, cleaned=cleaned,
        tokenizer=stats.load_token_counter(options.model).description, path=chunk.path, lines=np.fromiter((c.line for c in survivors), dtype=np.int64, count=len(survivors)),
        key_hash=np.frombuffer(digests, dtype="<u8").reshape(-1, 2).copy(), labels=[c.label for c in survivors],
        **_token_summary([c.record for c in survivors], options),
        origin=np.fromiter((hash64(c.origin) for c in survivors), dtype=np.uint64, count=len(survivors)),
        augmented_from={i: c.record["augmented_from"] for i, c in enumerate(survivors)
                        if c.record.get("augmented_from") is not None},
    )
    lines = [(json.dumps(output_record(c), ensure_ascii=False, default=str) + "\n").encode("utf-8")
             for c in survivors]
    result.output = b"".join(lines)
    result.output_bytes = np.fromiter((len(line) for line in lines), dtype=np.int64, count=len(lines))
    if options.near_dup_threshold > 0:
        _near_dup_summary(result, [near_key(c) for c in survivors], options.near_dup_threshold)
    return result


def _token_summary(records: list[dict], options) -> dict:
    """Byte profile of each record, and its exact tokens where they will be needed whatever the rest
    of the corpus is: every record when the counter is the estimate or a length filter is on, else
    only records that could exceed max_seq_len (stats.corpus_lengths; the sample is drawn later)."""
    counter = stats.load_token_counter(options.model)
    content_bytes, upper_bound, messages = stats.byte_profile(counter, records)
    lengths = np.full(len(records), -1, dtype=np.int64)
    if counter.estimated or options.min_tokens > 1 or options.max_tokens is not None:
        lengths[:] = stats.record_lengths(counter, records)
    else:
        long = np.flatnonzero(upper_bound > options.max_seq_len)
        lengths[long] = stats.record_lengths(counter, [records[i] for i in long])
    return {"lengths": lengths, "content_bytes": content_bytes, "upper_bound": upper_bound, "messages": messages}


def _near_dup_summary(result: ChunkResult, texts: list[str], threshold: float) -> None:
    encoded = [t.encode("utf-8") + b"\n" for t in texts]
    result.near_keys = b"".join(encoded)
    result.near_key_bytes = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    bands, rows = dedup.lsh_parameters(threshold, NUM_PERM)
    if not texts:
        result.signatures = np.zeros((0, NUM_PERM), dtype=np.uint32)
        result.bands = np.zeros((0, bands), dtype=np.uint64)
        return
    hashes, offsets = dedup.shingle_hashes(texts)
    result.signatures = dedup.minhash_signatures(hashes, offsets, NUM_PERM)
    result.bands = dedup.band_hashes(result.signatures, bands, rows)


@dataclass
class Candidate:
    """A valid record on its way through the per-record stages."""

    source: str
    line: int
    record: dict
    key: str = ""  # normalised content: equal keys are exact duplicates
    label: str | None = None
    origin: str = ""  # the id augmented records name this record by (augment_provenance.origin_id)
    task: str = "sft"


def check_and_clean(raw: list[ingest.RawRecord], task: str, options, books: Accounting
                    ) -> tuple[list[Candidate], Counter, Counter, int]:
    """Validate, convert, clean and redact each record; returns survivors, shapes, PII counts, #cleaned."""
    survivors, shapes, pii_counts, cleaned = [], Counter(), Counter(), 0
    text_cache: dict = {}
    for item in raw:
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
        text_state = TextPass(options.pii, text_cache)
        map_texts(record, text_state)  # one pass: clean, then redact, every free text
        cleaned += text_state.changed
        if text_state.empty:
            books.drop("filtered", item.source, "empty", "a text is empty after cleaning "
                       "(it held only whitespace or control characters)")
            continue
        if text_state.redacted:
            books.counts["pii_redacted"] += 1
            pii_counts.update(text_state.redacted)
        survivors.append(Candidate(item.source, item.line, record,
                                   clean.normalise_for_dedup(content_text(record, task)), record.get("label"),
                                   augment_provenance.origin_id(item.obj), task))
    return survivors, shapes, pii_counts, cleaned


class TextPass:
    """Called on each free text of one record: cleans it, then redacts PII (unless off); remembers
    whether cleaning changed or emptied any text and what was redacted.

    ``cache`` maps texts already seen in this chunk to their result: system prompts, stock answers
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


def near_key(candidate: Candidate) -> str:
    """The key without system messages (see records.content_text); most records have none."""
    messages = candidate.record.get("messages")
    if isinstance(messages, list) and any(m.get("role") == "system" for m in messages):
        return clean.normalise_for_dedup(content_text(candidate.record, "sft", system=False))
    return candidate.key


def record_id(key: str) -> str:
    """Stable id: a hash of the normalised content (unique, since exact duplicates are gone)."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()


def output_record(candidate: Candidate) -> dict:
    record = {"id": record_id(candidate.key), "source": candidate.source}
    record.update((k, v) for k, v in candidate.record.items() if k != "label")
    if candidate.label is not None:
        record["label"] = candidate.label
    return record
