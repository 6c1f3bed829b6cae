"""Counterfactual test sets: word lists, and swapping their words in the user's records.

A list is a small CSV file: ``#`` comment lines, a header naming the groups, then one swap per row::

    female,male
    Mary,John
    she,he

The shipped lists live in ``tuneloop/explain/wordlists/`` (``names``, ``gender``, ``nationality``,
``dialect``) and are meant to be edited; a user adds their own with ``tuneloop audit --wordlist FILE``
(the probe is named after the file). Matching is whole-word and case-insensitive, and a replacement
takes the case of the word it replaces ("She" -> "He", "SHE" -> "HE"). A word listed twice keeps its
first row, so "her"/"hers" -> "his" maps back to "her".
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.errors import UserError

WORDLIST_DIR = Path(__file__).with_name("wordlists")
BUILTIN = ("names", "gender", "nationality", "dialect")


@dataclass(frozen=True)
class Marker:
    start: int
    end: int
    row: int
    group: str


@dataclass(frozen=True)
class WordList:
    name: str
    groups: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    source: str
    _lookup: dict = field(default_factory=dict, compare=False, repr=False)
    _pattern: re.Pattern | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        for r, row in enumerate(self.rows):
            for group, word in zip(self.groups, row):
                self._lookup.setdefault(word.lower(), (r, group))
        # Longest first, so "New York" wins over "York"; lookarounds instead of \b for words like "Mr".
        words = sorted(self._lookup, key=len, reverse=True)
        object.__setattr__(self, "_pattern", re.compile(
            r"(?<!\w)(" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE))

    def markers(self, text: str) -> list[Marker]:
        found = []
        for match in self._pattern.finditer(text):
            row, group = self._lookup[match.group(0).lower()]
            found.append(Marker(match.start(), match.end(), row, group))
        return found

    def swap(self, text: str, group: str) -> str:
        """``text`` with every listed word replaced by its row's word for ``group``."""
        column = self.groups.index(group)
        return self._pattern.sub(lambda m: _same_case(self.rows[self._lookup[m.group(0).lower()][0]][column],
                                                      m.group(0)), text)

    def canonical(self, text: str) -> str:
        """Every listed word replaced by its row number: answers that differ only by the swapped word
        (a greeting with the customer's name) are the same answer."""
        return self._pattern.sub(lambda m: f"@{self.name}{self._lookup[m.group(0).lower()][0]}@", text)


def _same_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    if like.islower():
        return word.lower()
    return word


def parse_wordlist(text: str, name: str, source: str) -> WordList:
    """Parse a word-list CSV; errors name ``source:line``."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) < 2:
        raise UserError("a word list needs a header naming the groups and at least one row", where=source,
                        hint="e.g. a line 'female,male' and then 'Mary,John'")
    parsed = [(n, [cell.strip() for cell in next(csv.reader(io.StringIO(line)))]) for n, line in lines]
    header_line, groups = parsed[0]
    if len(groups) < 2 or len(set(groups)) != len(groups) or not all(groups):
        raise UserError(f"the header needs two or more distinct group names, got {groups}",
                        where=f"{source}:{header_line}", hint="e.g. female,male")
    rows = []
    for n, cells in parsed[1:]:
        if len(cells) != len(groups) or not all(cells):
            raise UserError(f"expected {len(groups)} non-empty words ({', '.join(groups)}), got {len(cells)}",
                            where=f"{source}:{n}", hint="one word (or phrase) per group, comma-separated")
        rows.append(tuple(cells))
    return WordList(name, tuple(groups), tuple(rows), source)


def load_wordlist(spec: str | Path) -> WordList:
    """A shipped list by name (``names``), or a CSV file (the probe takes the file's name)."""
    path = Path(spec)
    if str(spec) in BUILTIN:
        path = WORDLIST_DIR / f"{spec}.csv"
    elif not path.is_file():
        raise UserError(f"no word list {str(spec)!r}", where="--probe/--wordlist",
                        hint=f"use one of {', '.join(BUILTIN)}, or a CSV file with a header of groups")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=str(path), hint="save the word list as UTF-8") from None
    return parse_wordlist(text, path.stem, str(path))


@dataclass
class Counterfactual:
    """One record rewritten once per group: the prompts, references and facts of each variant."""

    index: int  # position in the examples
    id: str
    original_group: str  # the group most of the record's listed words belong to
    prompts: dict[str, list[dict]]
    references: dict[str, str]
    facts: dict[str, list[str] | None]


def _prompt_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def original_group(words: WordList, text: str) -> str | None:
    counts: dict[str, int] = {}
    for marker in words.markers(text):
        counts[marker.group] = counts.get(marker.group, 0) + 1
    return max(counts, key=lambda g: (counts[g], -words.groups.index(g))) if counts else None


def build_counterfactuals(words: WordList, examples) -> list[Counterfactual]:
    """Variants of every example whose prompt contains a listed word (others are left out)."""
    out = []
    for i, example in enumerate(examples):
        group = original_group(words, _prompt_text(example.prompt))
        if group is None:
            continue
        prompts = {g: [{**m, "content": words.swap(m["content"], g)} for m in example.prompt] for g in words.groups}
        references = {g: words.swap(example.reference, g) for g in words.groups}
        facts = {g: [words.swap(f, g) for f in example.facts] if example.facts else None for g in words.groups}
        out.append(Counterfactual(i, example.id, group, prompts, references, facts))
    return out
