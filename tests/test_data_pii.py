"""PII redaction: checksums, placeholders, and precision/recall per type on the labelled set.

``tests/data/pii_labelled.jsonl`` (written by ``tests/data/make_pii_labelled.py``) holds hand-written
support-style sentences with the PII each contains, plus hard negatives (dates, amounts, order ids,
times, versions, invalid checksums). A detection counts as correct when its type and exact text match.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tuneloop.data.pii import PII_TYPES, find_pii, iban_valid, luhn_valid, redact

LABELLED = Path(__file__).parent / "data" / "pii_labelled.jsonl"
REQUIRED = ("EMAIL", "PHONE", "CARD", "IBAN", "SSN", "IP")


def test_luhn_and_iban_checksums():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and iban_valid("DE89370400440532013000")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")  # one digit off: mod 97 fails
    assert not iban_valid("DE8937040044053201300")  # a German IBAN has 22 characters


def test_redact_uses_typed_placeholders_and_counts():
    counts = Counter()
    text = "Mail a.b@example.com, call +44 20 7946 0958, card 4111-1111-1111-1111, ip 10.0.0.7"
    assert redact(text, counts) == "Mail <EMAIL>, call <PHONE>, card <CARD>, ip <IP>"
    assert counts == Counter(EMAIL=1, PHONE=1, CARD=1, IP=1)
    assert redact("nothing to see here") == "nothing to see here"


def _score() -> dict[str, dict[str, int]]:
    score = {t: {"tp": 0, "fp": 0, "fn": 0} for t in PII_TYPES}
    for line in LABELLED.read_text().splitlines():
        example = json.loads(line)
        expected = Counter((t, v) for t, v in example["pii"])
        found = Counter((t, example["text"][s:e]) for s, e, t in find_pii(example["text"]))
        for (kind, _), n in (expected & found).items():
            score[kind]["tp"] += n
        for (kind, _), n in (found - expected).items():
            score[kind]["fp"] += n
        for (kind, _), n in (expected - found).items():
            score[kind]["fn"] += n
    return score


def test_precision_and_recall_per_type_on_labelled_set():
    score = _score()
    report = {}
    for kind, s in score.items():
        precision = s["tp"] / (s["tp"] + s["fp"]) if s["tp"] + s["fp"] else 1.0
        recall = s["tp"] / (s["tp"] + s["fn"]) if s["tp"] + s["fn"] else 1.0
        report[kind] = (round(precision, 3), round(recall, 3), s["tp"] + s["fn"])
    print("type: (precision, recall, positives)", report)  # shown with pytest -s / on failure
    for kind in REQUIRED:
        precision, recall, positives = report[kind]
        assert positives >= 18, f"{kind}: the labelled set needs more examples"
        assert recall >= 0.95, f"{kind} recall {recall} < 0.95: {report}"
        assert precision >= 0.9, f"{kind} precision {precision} < 0.9: {report}"


@pytest.mark.parametrize("text", ["I paid $1,234.56 on 2024-01-15 at 10:30.", "Version 1.2.3 crashes",
                                  "My password is not working.", "Order 12345678 is late"])
def test_hard_negatives_stay_untouched(text):
    assert redact(text) == text
