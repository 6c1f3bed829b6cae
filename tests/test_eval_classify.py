"""Honest classification scoring: likelihood over the label set (fast path vs a slow reference),
exact-label generation with a ``no_label`` count, and the named ``similar`` mapping.

The fast scorer runs the prompt once and all labels on copies of its KV cache; the reference here
scores every (prompt, label) conversation as one full sequence through training's loss masking
(:func:`~tuneloop.chat.template.encode_chat`), so the two share no code beyond the model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuneloop.chat.template import encode_chat
from tuneloop.evaluate.classification import (NO_LABEL, ExactLabelMatcher, answer_token_ids, classify,
                                              label_log_likelihoods, length_sorted_chunks, light_normalise,
                                              most_likely_labels, predict_labels_by_likelihood)
from tuneloop.chat.batch import pad_batch
from tuneloop.evaluate.perplexity import per_sequence_nll

LABELS = ["card_arrival", "card", "lost_or_stolen_card", "exchange_rate", "top_up_failed"]
PROMPTS = [[{"role": "user", "content": "Where is my new card?"}],
           [{"role": "system", "content": "Answer with the intent label only."},
            {"role": "user", "content": "My card was stolen yesterday, what now?"}],
           [{"role": "user", "content": "rate?"}]]


def reference_log_likelihoods(model, tokenizer, prompts, labels) -> np.ndarray:
    """Slow and plain: each label's conversation scored alone, full sequence, no cache."""
    out = np.empty((len(prompts), len(labels)))
    for i, messages in enumerate(prompts):
        for j, label in enumerate(labels):
            encoded = encode_chat(tokenizer, [*messages, {"role": "assistant", "content": label}])
            nll, _ = per_sequence_nll(model, pad_batch([encoded], tokenizer.pad_token_id))
            out[i, j] = -nll[0]
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from tuneloop.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(str(tiny_model_dir))


@pytest.mark.parametrize("batch_size", [128, 2])  # all labels in one batch; labels split over batches
def test_cached_batched_scores_equal_full_sequence_reference(tiny, batch_size):
    model, tokenizer = tiny
    fast = label_log_likelihoods(model, tokenizer, PROMPTS, LABELS, batch_size=batch_size)
    slow = reference_log_likelihoods(model, tokenizer, PROMPTS, LABELS)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-3)
    assert (fast < 0).all() and len(np.unique(fast.round(3))) > len(LABELS)  # real, distinct scores
    predicted = predict_labels_by_likelihood(model, tokenizer, PROMPTS, LABELS, batch_size=batch_size)
    assert predicted == [LABELS[j] for j in slow.argmax(axis=1)]


@pytest.mark.parametrize("max_expansions", [1000, 2])  # the search finishes; it gives up and scores in full
def test_best_first_search_finds_the_most_likely_label(tiny, max_expansions):
    model, tokenizer = tiny
    slow = reference_log_likelihoods(model, tokenizer, PROMPTS, LABELS)
    predicted, passes = most_likely_labels(model, tokenizer, PROMPTS, LABELS, max_expansions=max_expansions)
    assert predicted == [LABELS[j] for j in slow.argmax(axis=1)]
    answer_tokens = sum(len(a) for a in answer_token_ids(tokenizer, PROMPTS[0], LABELS)[1])
    if max_expansions == 1000:  # never more passes than the prompt plus one per distinct label prefix
        assert len(PROMPTS) <= passes <= len(PROMPTS) * (1 + answer_tokens)
    else:
        assert passes == len(PROMPTS) * (max_expansions + 1)


def test_peft_wrapped_model_scores_like_its_merged_weights(tiny):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    import copy

    import torch

    torch.manual_seed(0)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False))
    wrapped = label_log_likelihoods(peft_model, tokenizer, PROMPTS[:2], LABELS)
    merged = reference_log_likelihoods(peft_model.merge_and_unload(), tokenizer, PROMPTS[:2], LABELS)
    np.testing.assert_allclose(wrapped, merged, rtol=1e-4, atol=1e-3)
    assert not np.allclose(wrapped, label_log_likelihoods(model, tokenizer, PROMPTS[:2], LABELS))


def test_length_sorted_chunks_cap_rows_and_padded_tokens():
    assert length_sorted_chunks([5, 2, 9, 2, 3], max_rows=2, max_tokens=100) == [[1, 3], [4, 0], [2]]
    assert length_sorted_chunks([5, 2, 9, 2, 3], max_rows=10, max_tokens=10) == [[1, 3, 4], [0], [2]]


def test_generate_mode_counts_only_exact_labels():
    matcher = ExactLabelMatcher(LABELS)
    assert matcher.map("  Card_Arrival. ").label == "card_arrival"
    assert light_normalise("Top_up_failed!\n") == "top_up_failed"
    for text in ("card arrival", "I think it is card_arrival", "I'm sorry, as a chatbot I cannot", ""):
        assert matcher.map(text).label == NO_LABEL and matcher.map(text).matched_by == "no_label"
    result = classify(["card", "lost or stolen", "exchange_rate"], ["card", "lost_or_stolen_card", "card"], LABELS)
    assert result.correct.tolist() == [1.0, 0.0, 0.0] and result.no_label == 1
    lenient = classify(["card", "lost or stolen", "exchange_rate"], ["card", "lost_or_stolen_card", "card"],
                       LABELS, mode="similar")
    assert lenient.correct.tolist() == [1.0, 1.0, 0.0] and lenient.matches[1].matched_by == "similar"


def balanced_classification_jsonl(path, labels, per_label: int):
    texts = ["I need help with this", "Something went wrong with my account", "Can you tell me more",
             "Why did this happen to me", "Please sort this out quickly", "Is there a fee for that"]
    with open(path, "w") as f:
        for i in range(per_label):
            for label in labels:
                f.write(json.dumps({"id": f"{label}-{i}", "text": f"{texts[i % len(texts)]} ({i})",
                                    "label": label}) + "\n")
    return path


def test_base_model_scores_near_chance_and_eval_json_says_how(tiny_model_dir, tmp_path):
    from tuneloop.evaluate import run_eval

    labels = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]
    data = balanced_classification_jsonl(tmp_path / "test.jsonl", labels, per_label=6)
    chance = 1 / len(labels)
    by_mode = {}
    for mode in ("likelihood", "generate", "similar"):
        out = tmp_path / mode
        run_eval(str(tiny_model_dir), data, out_dir=out, classify=mode, max_new_tokens=6, batch_size=8,
                 progress=False)
        by_mode[mode] = json.loads((out / "eval.json").read_text())
        assert by_mode[mode]["classify"] == mode and by_mode[mode]["settings"]["classify"] == mode
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 24 and {"prediction", "predicted_label", "matched_by", "correct"} <= rows[0].keys()
        assert f"classify={mode}" in (out / "report.html").read_text()
    likelihood, generate = by_mode["likelihood"], by_mode["generate"]
    # A random model's preferred label does not depend on the question: accuracy is about one label's share.
    assert abs(likelihood["metrics"]["accuracy"] - chance) <= 0.15
    assert likelihood["no_label"] == 0
    # Greedy text from a random model is never a label: all of it is "no label", and all of it is wrong.
    assert generate["no_label"] == 24 and generate["metrics"]["accuracy"] == 0.0
    assert by_mode["similar"]["no_label"] <= 24
