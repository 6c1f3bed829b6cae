"""Token counts and length statistics, with the target model's tokenizer when it can be loaded.

:class:`TokenCounter` counts a whole corpus in one batched call of the fast (Rust) tokenizer, which
is ~50x quicker than calling it record by record. A chat record's length is the tokens of its
contents plus the chat template's overhead, measured once on the model's own template (a fixed part
and a per-message part), so that no record has to be rendered through Jinja.

On large corpora (over 10,000 records) :func:`corpus_lengths` tokenizes a seeded sample plus every
record that could exceed ``max_seq_len``, and estimates the rest from their byte length; the report
says how many were counted exactly.

When the tokenizer cannot be loaded (no model, no converted copy, a broken file), the counter falls
back to a regex estimate (words and punctuation x 1.3, close to BPE on English) and says so in
``TokenCounter.description``; the report shows the counts as estimates.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass

import numpy as np

from tuneloop.chat.template import render_text
from tuneloop.data.records import texts
from tuneloop.models.loading import load_tokenizer

EXACT_TOKEN_LIMIT = 10_000  # records tokenized one by one; beyond this, a sample (see corpus_lengths)
HISTOGRAM_EDGES = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_WORDISH = re.compile(r"\w+|[^\w\s]")


@dataclass
class TokenCounter:
    """Counts tokens of texts; ``tokenizer`` None means the regex estimate."""

    tokenizer: object | None = None
    description: str = "estimate"
    fixed_overhead: int = 0
    per_message_overhead: int = 0

    @property
    def estimated(self) -> bool:
        return self.tokenizer is None

    def count_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.int64)
        if self.tokenizer is None:
            return np.fromiter((round(len(_WORDISH.findall(t)) * 1.3) for t in texts),
                               dtype=np.int64, count=len(texts))
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None:  # the Rust tokenizer: batched, parallel, no Python objects per token
            encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
            return np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(texts))
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(texts))


@functools.lru_cache(maxsize=4)
def load_token_counter(model: str | None) -> TokenCounter:
    """A counter for ``model``'s tokenizer, or the regex estimate (with the reason) if it can't load.

    Cached: loading a tokenizer takes seconds, and quickstart or a notebook may prepare several times.
    """
    if not model or model.lower() == "none":
        return TokenCounter(description="estimate (no --model given)")
    try:
        tokenizer = load_tokenizer(model)
    except Exception as e:  # any failure here only downgrades the statistics; the reason is reported
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"warning: tokenizer of {model} not available ({reason}); token counts are estimates",
              file=sys.stderr)
        return TokenCounter(description=f"estimate (tokenizer of {model} not available: {reason})")
    counter = TokenCounter(tokenizer, description=f"{model} tokenizer")
    counter.fixed_overhead, counter.per_message_overhead = _template_overhead(counter)
    return counter


def _template_overhead(counter: TokenCounter) -> tuple[int, int]:
    """(fixed, per message) tokens the chat template adds around message contents."""
    try:
        x, y = "x", "y"
        two = [{"role": "user", "content": x}, {"role": "assistant", "content": y}]
        rendered = counter.count_texts([render_text(counter.tokenizer, two),
                                        render_text(counter.tokenizer, two + two), x, y])
        per_message = max(0, int(rendered[1] - rendered[0] - rendered[2] - rendered[3]) // 2)
        fixed = max(0, int(rendered[0] - rendered[2] - rendered[3]) - 2 * per_message)
        return fixed, per_message
    except Exception:  # a tokenizer without a usable template: count contents only
        return 0, 0


def _pieces(records: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All free texts, the record each belongs to, and each record's message count (0: plain text)."""
    pieces: list[str] = []
    owners: list[int] = []
    messages = np.zeros(len(records), dtype=np.int64)
    for i, record in enumerate(records):
        parts = texts(record)
        pieces.extend(parts)
        owners.extend([i] * len(parts))
        messages[i] = len(parts) if "text" not in record else 0
    return pieces, np.asarray(owners, dtype=np.int64), messages


def _add_overhead(counter: TokenCounter, lengths: np.ndarray, messages: np.ndarray) -> np.ndarray:
    chat = messages > 0
    lengths[chat] += counter.fixed_overhead + counter.per_message_overhead * messages[chat]
    return lengths


def record_lengths(counter: TokenCounter, records: list[dict]) -> np.ndarray:
    """Tokens per canonical record: contents (one batched tokenizer call) plus template overhead."""
    pieces, owners, messages = _pieces(records)
    # Repeated texts (system prompts, class labels) are tokenized once.
    unique = list(dict.fromkeys(pieces))
    position = {text: i for i, text in enumerate(unique)}
    unique_counts = counter.count_texts(unique)
    counts = unique_counts[np.fromiter((position[p] for p in pieces), dtype=np.int64, count=len(pieces))]
    lengths = np.bincount(owners, weights=counts, minlength=len(records)).astype(np.int64)
    return _add_overhead(counter, lengths, messages)


def corpus_lengths(counter: TokenCounter, records: list[dict], max_seq_len: int, exact_all: bool = False,
                   exact_limit: int = EXACT_TOKEN_LIMIT, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Tokens per record, and how they were counted.

    Up to ``exact_limit`` records (or with ``exact_all``, needed by the length filters) every record
    is tokenized. Beyond that, a seeded sample of ``exact_limit`` records is tokenized, and so is
    every record whose byte length says it could exceed ``max_seq_len`` (a byte-level BPE token
    covers at least one byte), so ``over_max_seq_len`` stays exact; the rest are estimated as bytes x
    the sample's tokens per byte (:func:`lengths_from_sample`).
    """
    n = len(records)
    if counter.estimated or exact_all or n <= exact_limit:
        return record_lengths(counter, records), {"exact": n, "estimated_from_bytes": 0}
    content_bytes, upper_bound, messages = byte_profile(counter, records)
    return lengths_from_sample(counter, content_bytes, upper_bound, messages, max_seq_len,
                               lambda index: record_lengths(counter, [records[i] for i in index]), exact_limit, seed)


def byte_profile(counter: TokenCounter, records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per record: content bytes, an upper bound of its tokens, and its message count (0: plain text)."""
    pieces, owners, messages = _pieces(records)
    n = len(records)
    piece_bytes = np.fromiter((len(p) if p.isascii() else len(p.encode("utf-8")) for p in pieces),
                              dtype=np.int64, count=len(pieces))
    content_bytes = np.bincount(owners, weights=piece_bytes, minlength=n).astype(np.int64)
    upper_bound = _add_overhead(counter, content_bytes + 2 * np.bincount(owners, minlength=n), messages)
    return content_bytes, upper_bound, messages


def lengths_from_sample(counter: TokenCounter, content_bytes: np.ndarray, upper_bound: np.ndarray,
                        messages: np.ndarray, max_seq_len: int, exact_of, exact_limit: int = EXACT_TOKEN_LIMIT,
                        seed: int = 0) -> tuple[np.ndarray, dict]:
    """:func:`corpus_lengths` for more than ``exact_limit`` records, given their :func:`byte_profile`
    and ``exact_of(index)``, the exact lengths of the records at ``index``."""
    n = len(content_bytes)
    sample = np.random.default_rng(seed).choice(n, exact_limit, replace=False)
    exact_index = np.union1d(sample, np.flatnonzero(upper_bound > max_seq_len))
    exact = exact_of(exact_index)
    sample_exact = exact_of(sample) if len(exact_index) > len(sample) else exact
    sample_content = sample_exact - _add_overhead(counter, np.zeros(len(sample), np.int64), messages[sample])
    ratio = float(sample_content.sum()) / max(1, int(content_bytes[sample].sum()))
    lengths = _add_overhead(counter, np.round(content_bytes * ratio).astype(np.int64), messages.copy())
    lengths[exact_index] = exact
    return lengths, {"exact": int(len(exact_index)), "estimated_from_bytes": int(n - len(exact_index)),
                     "tokens_per_byte": round(ratio, 4)}


def length_statistics(lengths: np.ndarray, max_seq_len: int, counter: TokenCounter) -> dict:
    """The ``tokens`` section of report.json."""
    stats = {"tokenizer": counter.description, "estimated": counter.estimated, "max_seq_len": max_seq_len,
             "records": int(len(lengths)), "total": int(lengths.sum()) if len(lengths) else 0}
    if len(lengths):
        stats.update({"min": int(lengths.min()), "max": int(lengths.max()), "mean": round(float(lengths.mean()), 1),
                      **{f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99)}})
    stats["over_max_seq_len"] = int((lengths > max_seq_len).sum())
    edges = [e for e in HISTOGRAM_EDGES if e < max(int(lengths.max()) if len(lengths) else 0, 16) * 2]
    counts, _ = np.histogram(lengths, bins=edges + [np.inf])
    stats["histogram"] = [{"from": lo, "to": hi, "count": int(c)}
                          for lo, hi, c in zip(edges, edges[1:] + [None], counts)]
    return stats
