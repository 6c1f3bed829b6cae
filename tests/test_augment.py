"""data augment: noise is exact and deterministic; the quality filter, dedup and provenance logic get
known good and bad candidates; paraphrase/synthetic run end to end on the tiny random model (their
text is garbage, so every candidate must be caught or pass the checks, never slip through unchecked)."""

from __future__ import annotations

import json

import pytest

from tuneloop.data.augment import AugmentOptions, Candidate, augment, check_candidates, source_record
from tuneloop.data.augment_filter import dominant_script, key_terms, quality_problem
from tuneloop.data.augment_llm import clean_paraphrase, parse_qa
from tuneloop.data.augment_noise import TYPO_KINDS, apply_typo, noise_rng, noisy_text
from tuneloop.data.augment_provenance import origin_id
from tuneloop.data.validate import validate_record
from tuneloop.errors import UserError

QUESTION = "How do I return the Orbit backpack I ordered last week?"


def chat(user: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}


SUPPORT = [
    chat(QUESTION, "Start a return from Orders within 30 days; the label is free."),
    chat("Can I pay with PayPal at checkout?", "Yes, PayPal, cards and SplitPay are accepted."),
    chat("Does the Pebble power bank charge a laptop?", "No, it charges phones and tablets (10,000 mAh)."),
    chat("Where is my parcel? Order 4471 shows shipped.", "Shipped orders arrive in 4 to 6 business days."),
]


def test_typos_are_exact():
    assert [apply_typo("return", kind, 2) for kind in TYPO_KINDS] == ["reutrn", "reurn", "retturn", "rerurn"]


def test_noise_is_exact_and_deterministic():
    assert noisy_text(QUESTION, noise_rng(0, "r1", 0)) == "how i return the orbit abckpack i orderwd last week?"
    assert noisy_text(QUESTION, noise_rng(0, "r1", 1)) == "how do I return the Orbit I last week?"
    assert noisy_text(QUESTION, noise_rng(0, "r1", 0)) == noisy_text(QUESTION, noise_rng(0, "r1", 0))
    assert noisy_text(QUESTION, noise_rng(1, "r1", 0)) != noisy_text(QUESTION, noise_rng(0, "r1", 0))


def test_noise_augment_marks_provenance_and_keeps_answers():
    first = augment(SUPPORT, "noise", n=2, seed=3)
    again = augment(SUPPORT, "noise", n=2, seed=3)
    assert first.records == again.records
    c = first.counts
    assert c["generated"] == 8
    assert c["generated"] == c["invalid"] + c["exact_duplicates"] + c["near_duplicates"] + c["filtered"] + c["output"]
    ids = {origin_id(r) for r in SUPPORT}
    for record in first.records:
        assert record["augmentation"] == "noise" and record["augmented_from"] in ids
        source = next(s for s in SUPPORT if origin_id(s) == record["augmented_from"])
        assert record["messages"][1] == source["messages"][1]  # the answer is kept
        assert record["messages"][0]["content"] != source["messages"][0]["content"]
        assert validate_record(record, "sft")[1] == []  # provenance keys are valid record keys


@pytest.mark.parametrize("text, original, method, problem", [
    ("What are my options to send back the Orbit backpack from last week?", QUESTION, "paraphrase", None),
    ("", QUESTION, "paraphrase", "empty"),
    ("Return?", QUESTION, "paraphrase", "length 0.13x the original's, outside 0.3x-3x"),
    ("how do I RETURN the orbit backpack i ordered last week", QUESTION, "paraphrase", "copies the original verbatim"),
    ("Can I pay with PayPal?", "Do you take PayPal payments?", "paraphrase", "copies an example from the prompt"),
    ("Rewrite: How do I send back my Orbit bag from last week?", QUESTION, "paraphrase",
     "echoes the instruction ('rewrite:')"),
    ("<|im_start|>assistant How do I send the Orbit bag back?", QUESTION, "paraphrase",
     "contains chat-template tokens"),
    ("How can I send back the backpack I bought recently?", QUESTION, "paraphrase", "drops 'orbit' from the original"),
    ("You can return the Orbit backpack within 30 days.", QUESTION, "paraphrase",
     "answers instead of rewriting (the original asks a question, the rewrite does not)"),
    ("Как вернуть рюкзак Orbit, заказанный на прошлой неделе?", QUESTION, "paraphrase",
     "written in CYRILLIC script, the original in LATIN"),
    ("?? !! 12 -- ## ++ %% Orbit $$ @@", QUESTION, "paraphrase", "mostly not letters (22% letters, the original 98%)"),
    ("x" * 2001, QUESTION, "synthetic", "too long (2001 characters, maximum 2000)"),
    ("What colours does the Orbit come in?", QUESTION, "synthetic", None),  # synthetic: no ratio/terms rule
])
def test_quality_filter(text, original, method, problem):
    assert quality_problem(text, original, method) == problem


def test_script_and_key_terms():
    assert dominant_script("Где мой заказ?") == "CYRILLIC"
    assert dominant_script("注文はどこですか") == "CJK"  # kanji and kana count as one writing system
    assert key_terms("Hi! Can I return the Orbit backpack from order 17-B?") == {"orbit", "17-b"}


def test_clean_paraphrase_and_parse_qa():
    assert clean_paraphrase('Rewritten: "Is PayPal OK?"\n\nHope this helps') == "Is PayPal OK?"
    assert parse_qa("Q: Do you ship to Canada?\nA: Yes, in 7 days.\nQ: more") == ("Do you ship to Canada?",
                                                                                 "Yes, in 7 days.")
    assert parse_qa("Do you ship to Canada?\nA: Yes.\n\nA: No.") == ("Do you ship to Canada?", "Yes.")
    assert parse_qa("Sure, here is an example.") is None


def _candidate(sources, index, user):
    messages = [{"role": "user", "content": user}, dict(sources[index]["messages"][1])]
    return Candidate({"messages": messages}, index, [(user, sources[index]["messages"][0]["content"])])


def test_checks_sort_known_candidates_into_the_right_buckets():
    sources = [source_record(r, f"support.jsonl:{i + 1}")[0] for i, r in enumerate(SUPPORT)]
    good = "What should I do to send back the Orbit backpack I bought last week?"
    candidates = [
        _candidate(sources, 0, good),
        _candidate(sources, 0, good + " "),  # exact duplicate of the candidate before it
        _candidate(sources, 1, "Can I pay with PayPal at checkout??"),  # the original copied: quality
        _candidate(sources, 1, "Can I pay with PayPal at checkout please?"),  # near-duplicate: 29 of its 36 5-grams shared
        _candidate(sources, 2, "Is the Pebble power bank able to charge laptops?"),
        _candidate(sources, 3, "Track?"),  # too short for its original
        Candidate({"messages": [{"role": "user", "content": "Hello Order 4471"}]}, 3,
                  [("Hello Order 4471", SUPPORT[3]["messages"][0]["content"])]),  # invalid: no answer
    ]
    result = check_candidates(candidates, sources, AugmentOptions(method="paraphrase"))
    assert result.counts == {"sources": 4, "generated": 7, "invalid": 1, "exact_duplicates": 1,
                             "near_duplicates": 1, "filtered": 2, "output": 2}
    assert [r["messages"][0]["content"] for r in result.records] == [good, candidates[4].pairs[0][0]]
    assert [r["augmented_from"] for r in result.records] == [sources[0]["id"], sources[2]["id"]]
    assert {r["augmentation"] for r in result.records} == {"paraphrase"}
    assert [(r["kind"], r["augmented_from"], r["reason"]) for r in result.rejected] == [
        ("quality", sources[1]["id"], "copies the original verbatim"),
        ("quality", sources[3]["id"], "length 0.13x the original's, outside 0.3x-3x"),
        ("invalid", sources[3]["id"], "messages: has no assistant message; add the answer to learn as role 'assistant'"),
        ("exact_duplicate", sources[0]["id"], "same text as generated record 1"),
        ("near_duplicate", sources[1]["id"], "near-duplicate of the original support.jsonl:2 (Jaccard 0.81)"),
    ]


def test_noise_variants_may_resemble_their_own_source_only():
    sources = [source_record(r, f"s:{i}")[0] for i, r in enumerate(SUPPORT)]
    near_own = "How do I return the Orbit backpak I ordered last week?"
    candidates = [_candidate(sources, 0, near_own), _candidate(sources, 1, near_own.replace("backpak", "bakpack"))]
    result = check_candidates(candidates, sources, AugmentOptions(method="noise"))
    # The first is a near twin of its own source (fine for noise); the second, attributed to another
    # source, is a near twin of source 0 and of the first candidate.
    assert result.counts["output"] == 1 and result.counts["near_duplicates"] == 1


def test_bad_input_names_the_record():
    with pytest.raises(UserError, match=r"record 2: messages\[1\].role"):
        augment([SUPPORT[0], {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}],
                "noise")
    with pytest.raises(UserError, match="unknown method"):
        augment(SUPPORT, "translate")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from tuneloop.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(tiny_model_dir)


@pytest.mark.parametrize("method", ["paraphrase", "synthetic"])
def test_model_methods_on_the_tiny_model_go_through_every_check(method, tiny):
    result = augment(SUPPORT, method, loaded=tiny, n=2, seed=0, max_new_tokens=12, topics=("returns",))
    c = result.counts
    assert c["generated"] == (8 if method == "paraphrase" else 2)
    assert c["generated"] == c["invalid"] + c["exact_duplicates"] + c["near_duplicates"] + c["filtered"] + c["output"]
    for record in result.records:  # whatever survived is valid, marked and not a copy
        assert validate_record(record, "sft")[1] == []
        assert record["augmentation"] == method
        assert record["augmented_from"]
    for rejected in result.rejected:
        assert rejected["reason"] and rejected["kind"] in ("invalid", "quality", "exact_duplicate", "near_duplicate")
    json.dumps(result.records)  # serialisable as written by the CLI


@pytest.mark.slow
def test_paraphrase_with_the_embedded_model():
    result = augment(SUPPORT, "paraphrase", seed=0, max_new_tokens=40)
    c = result.counts
    assert c["generated"] == 4
    assert c["generated"] == c["invalid"] + c["exact_duplicates"] + c["near_duplicates"] + c["filtered"] + c["output"]
    ids = {origin_id(r) for r in SUPPORT}
    for record in result.records:
        assert validate_record(record, "sft")[1] == [] and record["augmented_from"] in ids
        assert quality_problem(record["messages"][0]["content"],
                               next(s for s in SUPPORT if origin_id(s) == record["augmented_from"])
                               ["messages"][0]["content"], "paraphrase") is None
