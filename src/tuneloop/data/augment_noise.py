"""Rule-based noisy variants of user messages (``data augment --method noise``): typos, casing, word dropout.

Real users type fast; a model tuned only on tidy questions can stumble on "hwo do i retrun this".
Each variant applies, with a random generator seeded by ``(seed, source id, variant number)`` (so a
run is reproducible and adding records does not change the variants of the others):

1. word dropout: each word but the first is dropped with probability ``dropout`` (texts of four
   words or more; at most a third of the words);
2. typos: each word of four letters or more gets, with probability ``typo``, one of: two adjacent
   letters swapped, a letter deleted, a letter doubled, a letter replaced by a keyboard neighbour;
3. casing: the whole text lower-cased (probability ``lower``) or its first letter lower-cased.
Words are re-joined with single spaces, as hurried typing would have them.

At least one typo or dropout always happens, so a variant never differs only in case and
punctuation (``prepare`` would count that as an exact duplicate).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# QWERTY neighbours: the typo a finger actually makes.
KEYBOARD_NEIGHBOURS = {
    "a": "qwsz", "b": "vghn", "c": "xdfv", "d": "serfcx", "e": "wsdr", "f": "drtgvc", "g": "ftyhbv",
    "h": "gyujnb", "i": "ujko", "j": "huikmn", "k": "jiolm", "l": "kop", "m": "njk", "n": "bhjm",
    "o": "iklp", "p": "ol", "q": "wa", "r": "edft", "s": "awedxz", "t": "rfgy", "u": "yhji",
    "v": "cfgb", "w": "qase", "x": "zsdc", "y": "tghu", "z": "asx",
}
TYPO_KINDS = ("swap", "delete", "double", "neighbour")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class NoiseSettings:
    typo: float = 0.15  # per-word probability of one typo
    dropout: float = 0.1  # per-word probability of dropping it
    lower: float = 0.5  # probability of lower-casing the whole text


def apply_typo(word: str, kind: str, position: int) -> str:
    """``word`` with one typo of ``kind`` at letter ``position`` (0 <= position < len(word) - 1)."""
    if kind == "swap":
        return word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    if kind == "delete":
        return word[:position] + word[position + 1 :]
    if kind == "double":
        return word[: position + 1] + word[position] + word[position + 1 :]
    if kind == "neighbour":
        letter = word[position]
        options = KEYBOARD_NEIGHBOURS.get(letter.lower(), letter)
        replacement = options[(position + len(word)) % len(options)]
        return word[:position] + (replacement.upper() if letter.isupper() else replacement) + word[position + 1 :]
    raise ValueError(f"unknown typo kind {kind!r}")


def _typo_positions(word: str) -> list[int]:
    # Letters only, and never the last character (punctuation often sits there).
    return [i for i in range(len(word) - 1) if word[i].isalpha() and word[i + 1].isalpha()]


def _random_typo(word: str, rng: random.Random) -> str:
    positions = _typo_positions(word)
    if not positions:
        return word
    return apply_typo(word, rng.choice(TYPO_KINDS), rng.choice(positions))


def _drop_words(words: list[str], rate: float, rng: random.Random) -> list[str]:
    if len(words) < 4:
        return words
    budget = len(words) // 3
    kept = [words[0]]
    for word in words[1:]:
        if budget and rng.random() < rate:
            budget -= 1
            continue
        kept.append(word)
    return kept


def noisy_text(text: str, rng: random.Random, settings: NoiseSettings = NoiseSettings()) -> str:
    """One noisy variant of ``text`` (see the module docstring for the steps)."""
    words = _WORD.findall(text)
    if not words:
        return text
    noisy = _drop_words(words, settings.dropout, rng)
    changed = len(noisy) != len(words)
    for i, word in enumerate(noisy):
        if len(word) >= 4 and rng.random() < settings.typo:
            typo = _random_typo(word, rng)
            changed |= typo != word
            noisy[i] = typo
    if not changed:  # force one real change on the longest word that can take a typo
        candidates = [i for i, w in enumerate(noisy) if _typo_positions(w)]
        if candidates:
            i = max(candidates, key=lambda j: len(noisy[j]))
            noisy[i] = _random_typo(noisy[i], rng)
    result = " ".join(noisy)
    if rng.random() < settings.lower:
        return result.lower()
    return result[:1].lower() + result[1:]


def noise_rng(seed: int, source_id: str, variant: int) -> random.Random:
    """The generator for one variant; string seeds are hashed with SHA-512, stable across runs."""
    return random.Random(f"{seed}:{source_id}:{variant}")


def noisy_messages(messages: list[dict], rng: random.Random, settings: NoiseSettings = NoiseSettings()) -> list[dict]:
    """The conversation with every user turn made noisy; system and assistant turns unchanged."""
    return [{**m, "content": noisy_text(m["content"], rng, settings)} if m["role"] == "user" else dict(m)
            for m in messages]
