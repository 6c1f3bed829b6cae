"""Checks on augmented candidates: the quality filter and duplicate detection (see :mod:`augment`).

:func:`quality_problem` judges one generated text against the text it rewrites (paraphrase, noise)
or imitates (synthetic: a seed's question or answer) and returns why it is bad, or None:

* empty, shorter than ``min_chars`` or longer than ``max_chars``;
* (paraphrase, noise) length outside ``min_ratio``-``max_ratio`` times the original's: a model that
  rambles or stops after two words has not rewritten the message;
* the original copied verbatim (after normalisation), or a few-shot example or a phrase of our own
  instruction copied from the prompt (small models often echo their prompt);
* chat-template tokens (``<|im_start|>``...) in the text;
* (paraphrase) a question rewritten as a statement: small models often *answer* the message
  ("The shipping cost is $10.") instead of rewording it, so a rewrite of a text with a question
  mark must keep one;
* (paraphrase) a number or name of the original missing: the kept answer may depend on "order 17"
  or "the Orbit backpack", so a rewrite must keep every token with a digit and every capitalised
  word that does not start a sentence;
* a much smaller share of letters than the original (symbol soup), or a different writing system:
  the most common Unicode script of the letters (Latin, Cyrillic, CJK...) must be the original's.
  This is the cheap language check: it catches an English answer to a Russian question, not French
  for English.

:func:`find_duplicates` returns, for each candidate, None or ``(bucket, reason)`` for exact duplicates
(the normalised content ``prepare`` compares) and near-duplicates (character 5-gram Jaccard of the
user turns, via :mod:`tuneloop.data.dedup`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass

from tuneloop.data import augment_llm, dedup
from tuneloop.data.clean import normalise_for_dedup
from tuneloop.data.records import content_text

# Phrases of our own prompts: finding one in a candidate means the model echoed its instruction.
PROMPT_PHRASES = ("rewrite:", "keep the meaning", "change the wording", "rewritten message",
                  "write one new example", "use exactly this format", "<question>", "<answer>")
_PROMPT_EXAMPLES = {normalise_for_dedup(text) for pair in augment_llm.PARAPHRASE_EXAMPLES for text in pair}
# Japanese mixes kanji and kana; count them as one writing system.
_SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK"}


@dataclass(frozen=True)
class QualityLimits:
    min_chars: int = 3
    max_chars: int = 2000
    min_ratio: float = 0.3  # paraphrase/noise length relative to the original
    max_ratio: float = 3.0
    min_letter_ratio: float = 0.6  # letter share at least this fraction of the original's


def letter_share(text: str) -> float:
    visible = [ch for ch in text if not ch.isspace()]
    return sum(ch.isalpha() for ch in visible) / len(visible) if visible else 0.0


def dominant_script(text: str) -> str | None:
    """The Unicode script most letters of ``text`` belong to (``LATIN``, ``CYRILLIC``, ``CJK``...)."""
    scripts = Counter()
    for ch in text:
        if ch.isalpha():
            script = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
            scripts[_SCRIPT_GROUPS.get(script, script)] += 1
    return scripts.most_common(1)[0][0] if scripts else None


def _length_problem(text: str, original: str, method: str, limits: QualityLimits) -> str | None:
    if len(text) < limits.min_chars:
        return f"too short ({len(text)} characters, minimum {limits.min_chars})"
    if len(text) > limits.max_chars:
        return f"too long ({len(text)} characters, maximum {limits.max_chars})"
    if method != "synthetic" and original:
        ratio = len(text) / len(original)
        if not limits.min_ratio <= ratio <= limits.max_ratio:
            return (f"length {ratio:.2f}x the original's, outside {limits.min_ratio:g}x-{limits.max_ratio:g}x")
    return None


def _copy_problem(text: str, original: str) -> str | None:
    key = normalise_for_dedup(text)
    if key == normalise_for_dedup(original):
        return "copies the original verbatim"
    if key in _PROMPT_EXAMPLES:
        return "copies an example from the prompt"
    lowered = text.lower()
    echoed = next((phrase for phrase in PROMPT_PHRASES if phrase in lowered), None)
    if echoed:
        return f"echoes the instruction ({echoed!r})"
    if "<|" in text or "|>" in text:
        return "contains chat-template tokens"
    return None


_TOKEN = re.compile(r"[\w'-]+")


def key_terms(text: str) -> set[str]:
    """Numbers and names in ``text``: tokens with a digit, capitalised words not starting a sentence."""
    terms = set()
    for match in _TOKEN.finditer(text):
        token = match.group()
        before = text[: match.start()].rstrip()
        sentence_start = not before or before[-1] in ".!?:;\n\"'(“"
        if any(ch.isdigit() for ch in token):
            terms.add(token.lower())
        elif token[0].isupper() and len(token) > 1 and not sentence_start:
            terms.add(token.lower())
    return terms


def _paraphrase_problem(text: str, original: str) -> str | None:
    if "?" in original and "?" not in text:
        return "answers instead of rewriting (the original asks a question, the rewrite does not)"
    present = {token.lower() for token in _TOKEN.findall(text)}
    lost = sorted(key_terms(original) - present)
    return f"drops {', '.join(repr(t) for t in lost)} from the original" if lost else None


def _script_problem(text: str, original: str, limits: QualityLimits) -> str | None:
    if letter_share(text) < limits.min_letter_ratio * letter_share(original):
        return f"mostly not letters ({letter_share(text):.0%} letters, the original {letter_share(original):.0%})"
    ours, theirs = dominant_script(text), dominant_script(original)
    if theirs is not None and ours != theirs:
        return f"written in {ours or 'no'} script, the original in {theirs}"
    return None


def quality_problem(text: str, original: str, method: str, limits: QualityLimits = QualityLimits()) -> str | None:
    """Why ``text`` (generated from ``original``) is not good enough, or None when it is."""
    text = text.strip()
    if not text:
        return "empty"
    return (_length_problem(text, original, method, limits) or _copy_problem(text, original)
            or (_paraphrase_problem(text, original) if method == "paraphrase" else None)
            or _script_problem(text, original, limits))


def _exact_key(record: dict) -> str:
    return normalise_for_dedup(content_text(record, "sft"))


def find_duplicates(user_texts: list[str], records: list[dict], own_sources: list[int | None],
                    sources: list[dict], options) -> list[tuple[str, str] | None]:
    """For each candidate: None (keep) or ``(bucket, reason)``; earlier candidates win."""
    original_keys = {_exact_key(s): s["source"] for s in sources}
    n_src = len(sources)
    texts = [normalise_for_dedup("\n".join(m["content"] for m in s["messages"] if m["role"] == "user"))
             for s in sources] + [normalise_for_dedup(t) for t in user_texts]
    clusters = dedup.near_duplicate_clusters(texts, options.near_dup_threshold).cluster
    members = defaultdict(list)
    for index, representative in enumerate(clusters):
        members[representative].append(index)
    shingles = _ShingleSets(texts)
    kept, seen, verdicts = set(range(n_src)), {}, []
    for j, record in enumerate(records):
        index, key = n_src + j, _exact_key(record)
        if key in original_keys:
            verdicts.append(("exact_duplicates", f"same text as the original {original_keys[key]}"))
            continue
        if key in seen:
            verdicts.append(("exact_duplicates", f"same text as generated record {seen[key] + 1}"))
            continue
        seen[key] = j
        verdict = _near_verdict(index, members[clusters[index]], kept, own_sources, n_src, sources,
                                shingles, options)
        if verdict is None:
            kept.add(index)
        verdicts.append(verdict)
    return verdicts


def _near_verdict(index, cluster, kept, own_sources, n_src, sources, shingles, options):
    own = own_sources[index - n_src]
    for other in cluster:
        if other >= index or other not in kept:
            continue
        if options.method == "noise":  # a noisy variant may resemble its own source and siblings
            other_source = other if other < n_src else own_sources[other - n_src]
            if other_source == own:
                continue
        similarity = shingles.jaccard(index, other)
        if similarity >= options.near_dup_threshold:
            what = f"the original {sources[other]['source']}" if other < n_src else f"generated record {other - n_src + 1}"
            return ("near_duplicates", f"near-duplicate of {what} (Jaccard {similarity:.2f})")
    return None


class _ShingleSets:
    """Character 5-gram sets of the texts, computed once with :func:`dedup.shingle_hashes`."""

    def __init__(self, texts: list[str]):
        import numpy as np

        self._hashes, self._offsets = dedup.shingle_hashes(texts)
        self._np = np
        self._cache = {}

    def _set(self, i: int):
        if i not in self._cache:
            self._cache[i] = self._np.unique(self._hashes[self._offsets[i]:self._offsets[i + 1]])
        return self._cache[i]

    def jaccard(self, a: int, b: int) -> float:
        return dedup.jaccard(self._set(a), self._set(b))
