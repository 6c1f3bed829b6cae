"""The global stages of ``data prepare`` on compact per-record summaries, not on records.

:class:`Spool` collects the :class:`~tuneloop.data.prepare_chunks.ChunkResult` of every chunk in
input order: output lines, near-dup keys, MinHash signatures and LSH band hashes go to temporary
files; what stays in memory is ~90 bytes per record (128-bit key hash, file and line, label code,
token count and byte profile, origin hash, spool offsets). :func:`decide` then runs exact dedup, the length filter,
near-dup clustering and the split on those arrays, reading back from the files only what it needs
(one band at a time; the signatures and keys of candidate pairs), and says for each record where
it goes. The order of every decision and issue is the one the records had in the input, so the
result is the one a single process computing everything in memory would reach.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuneloop.data import augment_provenance, dedup, split, stats
from tuneloop.data.prepare_chunks import NUM_PERM, Accounting, ChunkResult, hash64

DROPPED, AUGMENTED_TRAIN = -1, 3  # fates besides the split indices 0, 1, 2


class Spool:
    """Per-record results of the streamed pass, in files under ``folder`` (summaries: one column a file)."""

    def __init__(self, folder: Path, near_dup: bool):
        self.folder, self.near_dup = Path(folder), near_dup
        self.output = open(self.folder / "output.jsonl", "wb")
        self.near = open(self.folder / "near_keys.txt", "wb") if near_dup else None
        self.signatures = open(self.folder / "signatures.u32", "wb") if near_dup else None
        self.band_files: list = []
        self.paths: list[str] = []
        self.columns = {name: open(self.folder / f"column-{name}.bin", "wb") for name in COLUMNS}
        self.end = {"output_offsets": 0, "near_offsets": 0}
        for name in self.end:  # offsets start at 0: the file holds n + 1 of them
            self.columns[name].write(np.zeros(1, dtype=np.int64).tobytes())
        self.label_code: dict = {}
        self.augmented_from: dict[int, object] = {}
        self.n_input = self.n = self.cleaned = 0
        self.counts = Counter()
        self.issues: list[dict] = []
        self.shapes, self.detected, self.pii = Counter(), Counter(), Counter()
        self.tokenizers: set[str] = set()

    def add(self, r: ChunkResult) -> None:
        m = len(r.lines)
        self.n_input += r.n_input
        self.counts.update({k: r.counts[k] for k in ("invalid", "filtered", "pii_redacted")})
        self.issues += r.issues
        self.shapes.update(r.shapes)
        self.detected.update(r.detected)
        self.pii.update(r.pii)
        self.cleaned += r.cleaned
        self.tokenizers.add(r.tokenizer)
        if not self.paths or self.paths[-1] != r.path:
            self.paths.append(r.path)
        self._write("file", np.full(m, len(self.paths) - 1))
        self._write("line", r.lines)
        self._write("key_hash", r.key_hash)
        self._write("label", np.fromiter((self._code(v) for v in r.labels), dtype=np.int32, count=m))
        for name in ("lengths", "content_bytes", "upper_bound", "messages", "origin"):
            self._write(name, getattr(r, name))
        self._write_offsets("output_offsets", r.output_bytes)
        self.augmented_from.update({self.n + i: v for i, v in r.augmented_from.items()})
        self.output.write(r.output)
        if self.near_dup:
            self._write_offsets("near_offsets", r.near_key_bytes)
            self.near.write(r.near_keys)
            self.signatures.write(np.ascontiguousarray(r.signatures).tobytes())
            if not self.band_files:
                self.band_files = [open(self.folder / f"band{b}.u64", "wb") for b in range(r.bands.shape[1])]
            for b, f in enumerate(self.band_files):
                f.write(np.ascontiguousarray(r.bands[:, b]).tobytes())
        self.n += m

    def _write(self, name: str, values: np.ndarray) -> None:
        self.columns[name].write(np.ascontiguousarray(values, dtype=COLUMNS[name]).tobytes())

    def _write_offsets(self, name: str, sizes: np.ndarray) -> None:
        ends = self.end[name] + np.cumsum(sizes, dtype=np.int64)
        if len(ends):
            self.end[name] = int(ends[-1])
        self._write(name, ends)

    def _code(self, label) -> int:
        if label is None:
            return -1
        key = (type(label).__name__, label if isinstance(label, (str, bool, int, float)) else repr(label))
        return self.label_code.setdefault(key, len(self.label_code))

    def finish(self) -> Summary:
        for f in [self.output, self.near, self.signatures, *self.band_files, *self.columns.values()]:
            if f is not None:
                f.close()
        col = {name: read_column(self.folder / f"column-{name}.bin", dtype) for name, dtype in COLUMNS.items()}
        values = [None] * len(self.label_code)
        for (_, value), code in self.label_code.items():
            values[code] = value
        return Summary(self.folder, self.paths, col["file"], col["line"], col["key_hash"].reshape(-1, 2),
                       col["label"], values, col["lengths"], col["content_bytes"], col["upper_bound"],
                       col["messages"], col["origin"], self.augmented_from, col["output_offsets"],
                       col["near_offsets"] if self.near_dup else None, len(self.band_files))


# The summary columns Spool writes, one file each, and their types (key_hash: 2 a record).
COLUMNS = {"file": np.int32, "line": np.int64, "key_hash": np.uint64, "label": np.int32, "lengths": np.int64,
           "content_bytes": np.int64, "upper_bound": np.int64, "messages": np.int64, "origin": np.uint64,
           "output_offsets": np.int64, "near_offsets": np.int64}


def read_column(path: Path, dtype) -> np.ndarray:
    """A column file memory-mapped copy-on-write (an empty file cannot be mapped: an empty array)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="c")


@dataclass
class Summary:
    """Every survivor of the per-record stages, as arrays in input order (see :class:`Spool`)."""

    folder: Path
    paths: list[str]
    file: np.ndarray
    line: np.ndarray
    key_hash: np.ndarray
    label: np.ndarray  # code into label_values; -1: no label
    label_values: list
    length: np.ndarray  # tokens where the per-record pass counted them, else -1 (see token_lengths)
    content_bytes: np.ndarray
    upper_bound: np.ndarray
    messages: np.ndarray
    origin: np.ndarray
    augmented_from: dict
    output_offsets: np.ndarray
    near_offsets: np.ndarray | None
    bands: int

    def __len__(self) -> int:
        return len(self.line)

    def source(self, i: int) -> str:
        return f"{self.paths[self.file[i]]}:{self.line[i]}"

    def label_of(self, i: int):
        code = int(self.label[i])
        return None if code < 0 else self.label_values[code]


@dataclass
class Decision:
    """Where each record goes: ``fate`` per survivor (a split index, DROPPED or AUGMENTED_TRAIN)."""

    fate: np.ndarray
    output_lengths: np.ndarray
    near_summary: dict
    counting: dict  # report.json tokens.counted
    splits: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)


def decide(summary: Summary, options, books: Accounting, counter: stats.TokenCounter,
           lap=lambda stage: None) -> Decision:
    """Exact dedup, token counts and length filter, near-dup clusters and split (prepare.py's
    docstring says why in this order); ``lap(stage)`` is called after each stage (stage_seconds)."""
    augmented = np.zeros(len(summary), dtype=bool)
    augmented[list(summary.augmented_from)] = True
    order = np.concatenate([np.flatnonzero(~augmented), np.flatnonzero(augmented)])  # originals first
    kept = drop_exact_duplicates(summary, order, books)
    lap("exact_dedup")
    lengths = np.full(len(summary), -1, dtype=np.int64)
    lengths[kept], counting = token_lengths(summary, kept, options, counter)
    kept = filter_lengths(summary, kept, lengths[kept], options, books,
                          "estimated tokens" if counter.estimated else "tokens")
    originals, extra = kept[~augmented[kept]], kept[augmented[kept]]
    lap("tokens")
    groups, near_summary = cluster_near_duplicates(summary, originals, options, books)
    lap("near_dedup")
    keep = np.arange(len(originals)) if options.keep_near_duplicates else \
        np.flatnonzero(groups == np.arange(len(originals)))
    strata = np.array([str(v) for v in summary.label_values] + ["None"], dtype=object)
    split_index = split.assign_split_indices(groups[keep], strata[summary.label[originals[groups[keep]]]],
                                             options.split, options.seed)
    fate = np.full(len(summary), DROPPED, dtype=np.int8)
    fate[originals[keep]] = split_index
    placed = place_augmented(summary, originals[keep], split_index, extra, books)
    fate[placed] = AUGMENTED_TRAIN
    decision = Decision(fate, np.concatenate([lengths[originals[keep]], lengths[placed]]), near_summary, counting)
    decision.splits = {name: int((split_index == s).sum()) + (len(placed) if s == 0 else 0)
                       for s, name in enumerate(split.SPLITS)}
    decision.labels = _label_distribution(summary, originals[keep], split_index, placed)
    books.counts["output"] = len(decision.output_lengths)
    return decision


def token_lengths(summary: Summary, kept: np.ndarray, options, counter: stats.TokenCounter
                  ) -> tuple[np.ndarray, dict]:
    """stats.corpus_lengths over the records at ``kept``: the sample is drawn from the survivors of
    exact dedup, and its records are read back from the output spool and tokenized here."""
    n = len(kept)
    if counter.estimated or options.min_tokens > 1 or options.max_tokens is not None:
        return summary.length[kept], {"exact": n, "estimated_from_bytes": 0}  # all counted per record

    def exact_of(index: np.ndarray) -> np.ndarray:
        return _exact_lengths(summary, kept[index], counter)

    if n <= stats.EXACT_TOKEN_LIMIT:
        return exact_of(np.arange(n)), {"exact": n, "estimated_from_bytes": 0}
    return stats.lengths_from_sample(counter, summary.content_bytes[kept], summary.upper_bound[kept],
                                     summary.messages[kept], options.max_seq_len, exact_of, stats.EXACT_TOKEN_LIMIT)


def _exact_lengths(summary: Summary, members: np.ndarray, counter: stats.TokenCounter) -> np.ndarray:
    out = summary.length[members].copy()
    missing = np.flatnonzero(out < 0)
    if len(missing):
        missing = missing[np.argsort(members[missing], kind="stable")]  # read the spool front to back
        offsets = summary.output_offsets
        records = []
        with open(summary.folder / "output.jsonl", "rb") as f:
            for i in members[missing].tolist():
                f.seek(int(offsets[i]))
                records.append(json.loads(f.read(int(offsets[i + 1] - offsets[i]))))
        out[missing] = stats.record_lengths(counter, records)
    return out


def drop_exact_duplicates(summary: Summary, order: np.ndarray, books: Accounting) -> np.ndarray:
    """Keep the first (in ``order``) of each key; report duplicates and conflicting labels."""
    if not len(order):
        return order
    keys = summary.key_hash[order]
    by_key = np.lexsort((keys[:, 1], keys[:, 0]))  # stable: equal keys stay in order
    sorted_keys = keys[by_key]
    starts = np.concatenate(([True], (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)))
    first = np.empty(len(order), dtype=np.int64)
    first[by_key] = by_key[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
    for position in np.flatnonzero(first != np.arange(len(order))).tolist():
        i, f = int(order[position]), int(order[first[position]])
        label, first_label = summary.label_of(i), summary.label_of(f)
        if label is not None and label != first_label:
            books.drop("exact_duplicates", summary.source(i), "conflicting_label",
                       f"same text as {summary.source(f)} but labelled '{label}' there "
                       f"'{first_label}'; kept the first, fix the label that is wrong")
        else:
            books.drop("exact_duplicates", summary.source(i), "exact_duplicate",
                       f"same content as {summary.source(f)} (after normalisation)")
    return order[first == np.arange(len(order))]


def filter_lengths(summary: Summary, kept: np.ndarray, lengths: np.ndarray, options, books: Accounting,
                   unit: str) -> np.ndarray:
    short = lengths < options.min_tokens
    long = (lengths > options.max_tokens) if options.max_tokens is not None else np.zeros(len(kept), dtype=bool)
    for position in np.flatnonzero(short | long).tolist():
        i, length = int(kept[position]), int(lengths[position])
        if short[position]:
            books.drop("filtered", summary.source(i), "too_short",
                       f"{length} {unit}, below --min-tokens {options.min_tokens}")
        else:
            books.drop("filtered", summary.source(i), "too_long",
                       f"{length} {unit}, above --max-tokens {options.max_tokens}")
    return kept[~(short | long)]


def cluster_near_duplicates(summary: Summary, members: np.ndarray, options,
                            books: Accounting) -> tuple[np.ndarray, dict]:
    """Each member's group (its cluster representative, as a position in ``members``); drops
    non-representatives unless near-duplicates are kept."""
    n = len(members)
    if options.near_dup_threshold <= 0:
        return np.arange(n), {"threshold": None, "clusters": 0, "candidates": 0}
    found = _near_duplicates(summary, members, options.near_dup_threshold)
    cluster = np.asarray(found.cluster, dtype=np.int64)
    clustered = np.flatnonzero(cluster != np.arange(n))
    near_summary = {"threshold": options.near_dup_threshold, "candidates": found.candidates,
                    "clusters": len(np.unique(cluster[clustered])), "records_in_clusters": len(clustered),
                    "kept": options.keep_near_duplicates}
    if not options.keep_near_duplicates:
        for i in clustered.tolist():
            rep = int(cluster[i])
            partner = found.partner.get(i, rep)
            books.drop("near_duplicates", summary.source(members[i]), "near_duplicate",
                       f"near-duplicate of {summary.source(members[partner])} (Jaccard "
                       f"{found.similarity.get(i, options.near_dup_threshold):.2f}); kept "
                       f"{summary.source(members[rep])} for the cluster")
    return cluster, near_summary


def _near_duplicates(summary: Summary, members: np.ndarray, threshold: float) -> dedup.NearDuplicates:
    """dedup.near_duplicate_clusters on the spool, in memory that does not grow with the candidates.

    A band at a time: its candidate pairs get their signature agreement at once, and only the pairs
    that could still be near duplicates (agreement within SURE_MARGIN of the threshold or above) are
    kept. Templated data puts thousands of records in one bucket: the pairs of all bands together grow
    faster than the records (3.9 million for 200,000 support chats), the kept ones with the duplicates.
    Clusters are those of the all-pairs-then-filter order, since a pair's agreement is the same in
    whichever band it is found; ``candidates`` counts the kept pairs.
    """
    n = len(members)
    if n < 2:
        return dedup.NearDuplicates(list(range(n)))
    folder, floor = summary.folder, threshold - dedup.SURE_MARGIN
    kept, agreements = [np.empty((0, 2), dtype=np.int64)], [np.zeros(0)]
    signatures = np.memmap(folder / "signatures.u32", dtype=np.uint32, mode="r").reshape(-1, NUM_PERM)
    for b in range(summary.bands):
        pairs = dedup.band_pairs(np.fromfile(folder / f"band{b}.u64", dtype=np.uint64)[members])
        agreement = _agreement_from_file(signatures, members, pairs, floor)
        close = agreement >= floor
        kept.append(pairs[close])
        agreements.append(agreement[close])
    del signatures
    pairs, agreement = np.concatenate(kept), np.concatenate(agreements)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs, agreement = pairs[order], agreement[order]
    first = np.concatenate(([True], (pairs[1:] != pairs[:-1]).any(axis=1))) if len(pairs) else np.zeros(0, bool)
    pairs, agreement = pairs[first], agreement[first]
    with open(folder / "near_keys.txt", "rb") as keys:
        def exact(x: int, y: int) -> float:
            texts = [_read_key(keys, summary.near_offsets, members[i]) for i in (x, y)]
            hashes, offsets = dedup.shingle_hashes(texts)
            return dedup.exact_jaccard(hashes, offsets, 0, 1)

        return dedup.clusters_from_candidates(n, pairs, agreement, threshold, exact)


def _agreement_from_file(signatures: np.ndarray, members: np.ndarray, pairs: np.ndarray, floor: float,
                         block: int = 8192) -> np.ndarray:
    """dedup.signature_agreement of ``pairs`` (positions in ``members``), with the signatures of a
    block of pairs at a time copied out of ``signatures`` (a read-only memory map of the spool):
    what is copied stays one block's rows. The map's pages are the page cache's (they count in RSS
    but not as the process's own memory, and the kernel drops them under pressure); mapping it once
    for the whole pass, not once per block, saves re-faulting the file for every block (which grew
    with the records times the blocks: 94 s of near-dup on 1,000,000 records)."""
    out = np.zeros(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), block):
        part = pairs[start:start + block]
        rows = np.unique(part)
        out[start:start + block] = dedup.signature_agreement(np.array(signatures[members[rows]]),
                                                             np.searchsorted(rows, part), floor=floor)
    return out


def _read_key(f, offsets: np.ndarray, i: int) -> str:
    f.seek(int(offsets[i]))
    return f.read(int(offsets[i + 1] - offsets[i])).decode("utf-8")[:-1]


def place_augmented(summary: Summary, outputs: np.ndarray, split_index: np.ndarray, augmented: np.ndarray,
                    books: Accounting) -> np.ndarray:
    """The augmented records that join train (see augment_provenance); drops the others."""
    if not len(augmented):
        return augmented
    sources = {summary.augmented_from[int(i)] for i in augmented}
    wanted = {hash64(s): s for s in sources if isinstance(s, str)}
    split_of: dict[str, str] = {}
    for h, s in zip(summary.origin[outputs].tolist(), split_index.tolist()):  # the last split wins
        if h in wanted and split_of.get(wanted[h]) != "test":
            split_of[wanted[h]] = max(split_of.get(wanted[h], "train"), split.SPLITS[s], key=split.SPLITS.index)
    placed = []
    for i in augmented.tolist():
        reason = augment_provenance.held_out_reason(summary.augmented_from[i], split_of)
        if reason is None:
            placed.append(i)
        else:
            books.drop("filtered", summary.source(i), "augmented_from_held_out", reason)
    return np.asarray(placed, dtype=np.int64)


def _label_distribution(summary: Summary, outputs: np.ndarray, split_index: np.ndarray,
                        placed: np.ndarray) -> dict:
    codes = {name: summary.label[outputs[split_index == s]] for s, name in enumerate(split.SPLITS)}
    codes["train"] = np.concatenate([codes["train"], summary.label[placed]])
    if not any((c >= 0).any() for c in codes.values()):
        return {}
    out = {}
    for name, found in codes.items():
        counts = np.bincount(found[found >= 0], minlength=len(summary.label_values))
        out[name] = dict(sorted((summary.label_values[c], int(k)) for c, k in enumerate(counts.tolist()) if k))
    return out
