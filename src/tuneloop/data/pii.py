"""Offline PII redaction: typed placeholders such as ``<EMAIL>``, with counts per type.

Types and how each is recognised (no model, no network):

* ``EMAIL``: local@domain.tld.
* ``CREDENTIAL``: well-known key formats (OpenAI ``sk-``, GitHub ``ghp_``/``github_pat_``, AWS
  ``AKIA``, Google ``AIza``, Slack ``xox?-``, Stripe, Hugging Face ``hf_``), JWTs, ``Bearer`` tokens,
  private-key blocks, and the value after ``password``/``api_key``/``token``/``secret`` ``=``/``:``/``is``.
* ``IBAN``: country code, check digits, 11-30 alphanumerics (spaces allowed), accepted only if the
  ISO 13616 mod-97 check passes (and the length fits the country, where known).
* ``CARD``: 13-19 digits, optionally grouped by spaces or dashes, accepted only if the Luhn check passes.
* ``SSN``: US social security numbers ``AAA-GG-SSSS`` outside the never-issued ranges (000, 666,
  9xx; group 00; serial 0000); undashed forms only right after "SSN"/"social security".
* ``IP``: IPv4 dotted quads and IPv6 addresses (checked with :mod:`ipaddress`).
* ``PHONE``: international ``+CC ...`` numbers and grouped national numbers with 7-15 digits;
  dates, times, amounts and version numbers are rejected; an ungrouped digit run counts only after a
  word such as "call", "phone" or "tel".
* ``NAME``: offline, only where the text says it is a name: after "my name is", "this is", "call me",
  "Dear", "regards,", or a title (Mr, Mrs, Ms, Dr, Prof). Free-standing names are not found.

Detectors run in the order above; a later match that overlaps an earlier one is dropped. Speed
(this runs on every text of every record): the number patterns scan only windows around runs of 7+
digits, found by one simple regex after a digit count; trigger words ("password", "my name is",
titles) are looked up in the text's word set and matched with a regex anchored after the word;
each other detector needs a literal first (``@``, a token prefix, ``XX00`` for IBANs). ``tests/data/pii_labelled.jsonl`` is the labelled set; ``test_data_pii.py`` reports
precision and recall per type on it.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterator

PII_TYPES = ("EMAIL", "CREDENTIAL", "IBAN", "CARD", "SSN", "IP", "PHONE", "NAME")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b")

_TOKEN_FORMATS = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----")
_TOKEN_PREFIXES = ("sk-", "_live_", "_test_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat", "AKIA",
                   "AIza", "xox", "hf_", "glpat", "eyJ", "-----BEGIN")
# Fast path: the trigger words are found with str.find on the lower-cased text, and only the part
# after each one is matched with a regex anchored there (a leading alternation would be tried at
# every position of every text).
_SECRET_WORDS = ("password", "passwd", "pwd", "passcode", "pin", "secret", "key", "apikey", "token")
_SECRET_TAIL = re.compile(r"(?!\w)(\s+is\s+|\s*[:=]\s*)[\"']?([^\s\"',;]{4,})")
_BEARER_TAIL = re.compile(r"\s+([A-Za-z0-9._~+/=-]{16,})")

_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_IBAN_HINT = re.compile(r"[A-Z]{2}\d{2}")
# Lengths of IBANs by country (ISO 13616 registry), for the countries users most often have.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BR": 29, "CH": 21, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15,
    "PL": 28, "PT": 25, "RO": 24, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "TR": 26,
}

_CARD = re.compile(r"(?<![\d.,-])\d(?:[ -]?\d){12,18}(?![\d-]|[.,]\d)")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_SSN_CONTEXT = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\s*(?:is|:|#)?\s*"
                          r"((?!000|666|9\d\d)\d{3}[ ]?(?!00)\d{2}[ ]?(?!0000)\d{4})(?!\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:|:)(?::?[0-9A-Fa-f]{1,4}|:){1,8}(?:%\w+)?(?![\w:])"
                   r"|(?<![\w:])::(?![\w:])")

_PHONE = re.compile(
    r"(?<![\w+$€£¥/.:-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]\d{2,6}){1,5}(?![\w/:-]|[.,]\d)"
    r"|(?<![\w+$€£¥/.:-])\+\d{7,15}(?!\w)")
_PHONE_CONTEXT = re.compile(r"(?i)\b(?:call|phone|tel|telephone|mobile|cell|whatsapp|fax|text|sms|ring|number)"
                            r"\b[^\d\n]{0,20}?(\+?\d{7,15})(?!\w)")
# Digit groups that are something else: dates, SSN-shaped ids, and "1 000 000" (thousands groups).
_NOT_PHONE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|\d{3}-\d{2}-\d{4}"
                        r"|\d{1,3}(?:[ .]\d{3})+)$")

_NAME_WORD = r"(?!(?:Mr|Mrs|Ms|Miss|Dr|Prof)\b)[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_NAME_TAIL = re.compile(rf"\s+({_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})")
_TITLE_TAIL = re.compile(rf"\.?\s+({_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})")
# Name triggers by the word (lower case, punctuation split off) without which they cannot occur:
# a text's word set then says which triggers to look for at all. Values: (trigger, case-sensitive?).
_NAME_TRIGGERS = {
    b"name": [("my name is", False), ("my name's", False), ("name:", False)], b"this": [("this is", False)],
    b"call": [("call me", False)], b"called": [("i am called", False)], b"dear": [("Dear", True)],
    b"regards": [("Regards,", True), ("regards,", True)], b"sincerely": [("Sincerely,", True)],
    b"thanks": [("Thanks,", True)], b"cheers": [("Cheers,", True)],
    **{title.lower().encode(): [(title, True)] for title in ("Mr", "Mrs", "Ms", "Miss", "Dr", "Prof")},
}
_TITLES = frozenset(("Mr", "Mrs", "Ms", "Miss", "Dr", "Prof"))
_NAME_WORDS = frozenset(_NAME_TRIGGERS)
_SECRET_WORD_SET = frozenset("password passwd pwd passcode pin secret key apikey token bearer".split())
# bytes.translate is ~8x faster than str.translate (a flat 256-byte table instead of dict lookups).
_PUNCTUATION_BYTES = b"!\"#$%&'()*+,-./:;<=>?@[\\]^`{|}~_"
_WORD_SPLIT = bytes.maketrans(_PUNCTUATION_BYTES, b" " * len(_PUNCTUATION_BYTES))
_SECRET_WORD_SET = frozenset(w.encode() for w in _SECRET_WORD_SET)
_TRIGGER_WORDS = _SECRET_WORD_SET | _NAME_WORDS | {b"ssn", b"social"}
# Capitalised words after a trigger that are not names ("this is Monday", "Dear Sir").
_NOT_NAMES = frozenset("""Sir Madam Team Support Customer Customers All Everyone Friend Friends Monday Tuesday
Wednesday Thursday Friday Saturday Sunday January February March April May June July August September October
November December The This That It What Why How When Where Who Yes No Not Hello Hi Thanks Please Urgent
Important Very Really Just Still Also Regarding About Your My Our Their Manager Admin Bank Card Account""".split())

# Cheap tests that decide whether a detector's full regex needs to run at all.
_DIGIT_RUN = re.compile(r"\d[\d .()/+-]{5,}\d")  # 7+ characters of digits and separators: card/phone/SSN
_LONG_DIGITS = re.compile(r"\d{7}")

Span = tuple[int, int, str]


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum used by payment cards (``digits``: digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    iban = iban.replace(" ", "").upper()
    if len(iban) < 15 or len(iban) > 34 or not iban.isalnum():
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end(), "EMAIL"


def _after_words(text: str, haystack: str, words, tail: re.Pattern) -> Iterator[re.Match]:
    """Matches of ``tail`` anchored right after each whole-word occurrence of ``words`` in ``haystack``
    (``text`` itself, or its lower-cased copy of the same length)."""
    for word in [w for w in words if w in haystack]:  # most texts contain none: one C-level scan each
        i = haystack.find(word)
        while i != -1:
            if i == 0 or not haystack[i - 1].isalnum():
                m = tail.match(text, i + len(word))
                if m:
                    yield m
            i = haystack.find(word, i + 1)


def _credentials(text: str, lower: str, words: frozenset) -> Iterator[Span]:
    # Every prefix has "_" or "-" or starts with AKIA/AIza/eyJ: five quick tests before sixteen.
    if ("_" in text or "-" in text or "AKIA" in text or "AIza" in text or "eyJ" in text) and [
            prefix for prefix in _TOKEN_PREFIXES if prefix in text]:
        for m in _TOKEN_FORMATS.finditer(text):
            yield m.start(), m.end(), "CREDENTIAL"
    if not words & _SECRET_WORD_SET:
        return
    for m in _after_words(text, lower, ("bearer",), _BEARER_TAIL):
        yield m.start(1), m.end(1), "CREDENTIAL"
    for m in _after_words(text, lower, _SECRET_WORDS, _SECRET_TAIL):
        value = m.group(2).rstrip(".!?")
        # After "is" a secret must look like one (a digit, a symbol, or mixed case inside the word):
        # skips "my password is expired"; after ":" or "=" any value counts.
        explicit = m.group(1).strip() in (":", "=")
        looks_secret = any(c.isdigit() or not c.isalnum() for c in value) or value[1:] != value[1:].lower()
        if value and (explicit or looks_secret):
            yield m.start(2), m.start(2) + len(value), "CREDENTIAL"


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        compact = m.group().replace(" ", "")
        expected = IBAN_LENGTHS.get(compact[:2])
        if expected and len(compact) > expected:  # the pattern ran on into the next word
            end = m.start() + _position_after(m.group(), expected)
            if iban_valid(text[m.start():end]):
                yield m.start(), end, "IBAN"
        elif iban_valid(compact):
            yield m.start(), m.end(), "IBAN"


def _position_after(text: str, n_chars: int) -> int:
    """Index in ``text`` just after its first ``n_chars`` non-space characters."""
    seen = 0
    for i, ch in enumerate(text):
        if ch != " ":
            seen += 1
            if seen == n_chars:
                return i + 1
    return len(text)


def _cards(text: str, pos: int, end: int) -> Iterator[Span]:
    for m in _CARD.finditer(text, pos, end):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1:
            yield m.start(), m.end(), "CARD"


def _ssns(text: str, pos: int, end: int) -> Iterator[Span]:
    for m in _SSN.finditer(text, pos, end):
        yield m.start(), m.end(), "SSN"


def _ssns_in_context(text: str) -> Iterator[Span]:
    for m in _SSN_CONTEXT.finditer(text):
        yield m.start(1), m.end(1), "SSN"


def _ipv4s(text: str, pos: int, end: int) -> Iterator[Span]:
    for m in _IPV4.finditer(text, pos, end):
        yield m.start(), m.end(), "IP"


def _ipv6s(text: str) -> Iterator[Span]:
    for m in _IPV6.finditer(text):
        candidate = m.group().split("%")[0]
        if candidate.count(":") >= 2 and _is_ipv6(candidate):
            yield m.start(), m.end(), "IP"


def _is_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return candidate != "::"


def _phones(text: str, pos: int, end: int) -> Iterator[Span]:
    for m in _PHONE.finditer(text, pos, end):
        value = m.group()
        digits = sum(c.isdigit() for c in value)
        if not 7 <= digits <= 15 or _NOT_PHONE.match(value):
            continue
        if "." in value and not value.startswith("+") and value.count(".") == 1:
            continue  # "3.14159", "12.50 20": a decimal number, not a phone
        yield m.start(), m.end(), "PHONE"


def _phones_in_context(text: str) -> Iterator[Span]:
    for m in _PHONE_CONTEXT.finditer(text):
        yield m.start(1), m.end(1), "PHONE"


def _names(text: str, lower: str, words: frozenset) -> Iterator[Span]:
    matches = []
    for key in _NAME_WORDS & words:
        for trigger, case_sensitive in _NAME_TRIGGERS[key]:
            tail = _TITLE_TAIL if trigger in _TITLES else _NAME_TAIL
            matches += _after_words(text, text if case_sensitive else lower, (trigger,), tail)
    for m in matches:
        # Keep the leading run of words that are not common capitalised non-names ("Dear Sir").
        end = None
        for word in re.finditer(r"\S+", m.group(1)):
            if word.group() in _NOT_NAMES:
                break
            end = m.start(1) + word.end()
        if end is not None:
            yield m.start(1), end, "NAME"


def _number_windows(text: str, encoded: bytes) -> list[tuple[int, int]]:
    """(pos, endpos) around each run of 7+ digits-and-separators, with a few characters of context.

    Cards, SSNs, IPv4 addresses and phones all live in such runs; their (slower) patterns then scan
    only these windows. Lookbehinds still see the text before ``pos`` (re's pos semantics).
    """
    if len(encoded) - len(encoded.translate(None, b"0123456789")) < 7:  # under 7 digits: no run
        return []
    return [(max(0, m.start() - 4), min(len(text), m.end() + 3)) for m in _DIGIT_RUN.finditer(text)]


def find_pii(text: str) -> list[Span]:
    """Non-overlapping ``(start, end, type)`` spans, sorted by start (earlier types win overlaps)."""
    lower = text.lower()
    if len(lower) != len(text):  # rare letters whose lower case is longer ("İ"): keep offsets aligned
        lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    encoded = lower.encode("utf-8")
    windows = _number_windows(text, encoded)
    word_list = encoded.translate(_WORD_SPLIT).split()
    # Most texts hold no trigger word at all: one early-exit scan of the word list decides that.
    words = frozenset(word_list) if not _TRIGGER_WORDS.isdisjoint(word_list) else frozenset()
    found: list[Iterator[Span]] = []
    if "@" in text:
        found.append(_emails(text))
    found.append(_credentials(text, lower, words))
    if windows and _IBAN_HINT.search(text):  # every IBAN has a run of 7+ digits
        found.append(_ibans(text))
    found += [_cards(text, pos, end) for pos, end in windows]
    found += [_ssns(text, pos, end) for pos, end in windows]
    if windows and (b"ssn" in words or b"social" in words):
        found.append(_ssns_in_context(text))
    found += [_ipv4s(text, pos, end) for pos, end in windows]
    if text.count(":") >= 2:
        found.append(_ipv6s(text))
    found += [_phones(text, pos, end) for pos, end in windows]
    if any(_LONG_DIGITS.search(text, pos, end) for pos, end in windows):
        found.append(_phones_in_context(text))
    if not _NAME_WORDS.isdisjoint(words):
        found.append(_names(text, lower, words))
    spans: list[Span] = []
    for detector in found:  # generators: each runs only now, in priority order
        for span in detector:
            if not any(span[0] < end and start < span[1] for start, end, _ in spans):
                spans.append(span)
    return sorted(spans)


def replace_spans(text: str, spans: list[Span]) -> str:
    """``text`` with each ``(start, end, type)`` span replaced by ``<TYPE>``."""
    out, position = [], 0
    for start, end, kind in spans:
        out.append(text[position:start])
        out.append(f"<{kind}>")
        position = end
    out.append(text[position:])
    return "".join(out)


def redact(text: str, counts: Counter | None = None) -> str:
    """``text`` with each PII span replaced by ``<TYPE>``; adds what it replaced to ``counts``."""
    spans = find_pii(text)
    if not spans:
        return text
    if counts is not None:
        counts.update(kind for _, _, kind in spans)
    return replace_spans(text, spans)
