"""Text cleaning: Unicode repair and normalisation, control characters, whitespace; the dedup key.

:func:`clean_text` is what goes into the training files:
1. mojibake and other Unicode damage repaired with ftfy, then NFC normalisation (ftfy does both);
   pure-ASCII text is skipped because ftfy has nothing to fix there and it is the costly step;
2. control and zero-width characters removed (tabs and newlines kept), odd spaces (no-break, em
   space...) turned into plain spaces, Windows line ends into ``\\n``;
3. trailing spaces stripped from each line, runs of 3+ newlines cut to one blank line, and the text
   stripped at both ends. Inner runs of spaces stay: they can matter (code, tables).

:func:`normalise_for_dedup` is only a comparison key: case-folded, punctuation removed, whitespace
collapsed, so "Hello!" and "hello" count as exact duplicates.
"""

from __future__ import annotations

import re
import string
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_ODD_SPACE = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACE = re.compile(r"[ \t]+(?=\n|\Z)")
_BLANK_LINES = re.compile(r"\n{3,}")
_PUNCTUATION = re.compile(r"[^\w\s]+")
# Characters that need a regex pass; plain str tests below catch the whitespace cases (much faster
# than one regex with alternatives, which is tried at every position).
_ODD_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00a0\u1680\u2000-\u200d\u202f\u205f\u2060\u3000\ufeff]")
# For ASCII text: punctuation -> space in one bytes.translate call ("_" stays: it is \w, as below).
_PUNCTUATION_BYTES = string.punctuation.replace("_", "").encode()
_ASCII_PUNCTUATION = bytes.maketrans(_PUNCTUATION_BYTES, b" " * len(_PUNCTUATION_BYTES))


def repair_unicode(text: str) -> str:
    if text.isascii():
        return text
    import ftfy  # imported here: it takes ~0.1 s and ASCII-only data never needs it

    return ftfy.fix_text(text, normalization="NFC")


def clean_text(text: str) -> str:
    """Repaired, normalised text (see the module docstring for each step)."""
    text = repair_unicode(text)
    if (_ODD_CHARS.search(text) is None and "\r" not in text and "\n\n\n" not in text and " \n" not in text
            and "\t\n" not in text and text == text.strip()):
        return text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _ODD_SPACE.sub(" ", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def normalise_for_dedup(text: str) -> str:
    """Comparison key for exact duplicates: case-folded, punctuation-free, whitespace-collapsed."""
    if text.isascii():
        return b" ".join(text.lower().encode().translate(_ASCII_PUNCTUATION).split()).decode()
    text = unicodedata.normalize("NFKC", text)
    return " ".join(_PUNCTUATION.sub(" ", text.casefold()).split())
