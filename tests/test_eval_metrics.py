"""Unit tests of the evaluation's pure metric functions, against hand-computed values and reference libraries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.evaluate.classification import NO_ANSWER, LabelMapper, classify, top_confused_pairs
from tuneloop.evaluate.text_metrics import chrf_from_statistics, chrf_statistics, generation_stats
from tuneloop.evaluate.metrics import (bleu_from_statistics, bleu_statistics, classification_scores,
                                      confusion_counts, corpus_bleu, corpus_chrf, exact_match, facts_score,
                                      normalize_text, percentile, perplexity_from_sums, rouge_per_sample)


def test_normalize_and_exact_match():
    assert normalize_text("  Card_Arrival!\n") == "card arrival"
    assert exact_match("The answer.", "the   answer") == 1.0
    assert exact_match("the answers", "the answer") == 0.0


def test_classification_scores_on_a_small_confusion():
    # true 0,0,0,1,1,2 / predicted 0,0,1,1,2,2:
    # label 0: P=2/2 R=2/3 F1=0.8; label 1: P=1/2 R=1/2 F1=0.5; label 2: P=1/2 R=1/1 F1=2/3
    y_true, y_pred = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2])
    assert confusion_counts(y_true, y_pred, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    scores = classification_scores(y_true, y_pred, 3)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert scores["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert scores["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_macro_average_skips_labels_absent_from_truth_and_predictions():
    # Label 2 of 3 never occurs: averaging over it would halve nothing but drag the mean down.
    scores = classification_scores(np.array([0, 1]), np.array([0, 0]), 3)
    assert scores["precision"] == pytest.approx((0.5 + 0.0) / 2)
    assert scores["recall"] == pytest.approx((1.0 + 0.0) / 2)
    assert scores["f1"] == pytest.approx((2 / 3 + 0.0) / 2)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=40))
def test_classification_scores_agree_with_scikit_learn(pairs):
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y_true, y_pred = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    ours = classification_scores(y_true, y_pred, 5)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f))


def test_label_mapping_exact_contained_similar_empty():
    mapper = LabelMapper(["card_arrival", "lost_or_stolen_card", "card", "exchange_rate"])
    exact = mapper.map("Card arrival.")
    assert (exact.label, exact.matched_by) == ("card_arrival", "exact")
    # Longest contained label wins over the shorter "card" inside it.
    assert mapper.map("I think it is lost or stolen card, sorry").label == "lost_or_stolen_card"
    assert mapper.map("I think it is lost or stolen card").matched_by == "contained"
    similar = mapper.map("exchange rates")
    assert (similar.label, similar.matched_by) == ("exchange_rate", "similar")
    assert mapper.map("  ...  ").label == NO_ANSWER


def test_classify_counts_an_empty_answer_as_wrong():
    result = classify(["", "b"], ["a", "b"], ["a", "b"])
    assert result.labels == ["a", "b", NO_ANSWER]
    assert result.correct.tolist() == [0.0, 1.0]
    assert result.scores()["accuracy"] == 0.5


def test_top_confused_pairs_most_frequent_first():
    matrix = np.array([[5, 3, 0], [1, 4, 0], [0, 2, 9]])
    assert top_confused_pairs(matrix, ["a", "b", "c"], k=2) == [
        {"true": "a", "predicted": "b", "count": 3}, {"true": "c", "predicted": "b", "count": 2}]


def test_bleu_matches_a_hand_computation_and_sacrebleu():
    hyp, ref = "the quick brown fox jumps over the dog", "the quick brown fox jumps over the lazy dog"
    # n-gram precisions 8/8, 6/7, 5/6, 4/5; brevity penalty exp(1 - 9/8).
    expected = 100 * math.exp(1 - 9 / 8) * math.exp((math.log(1) + math.log(6 / 7) + math.log(5 / 6) + math.log(4 / 5)) / 4)
    assert corpus_bleu([hyp], [ref]) == pytest.approx(expected, abs=1e-9)
    assert bleu_from_statistics(bleu_statistics([hyp], [ref])) == pytest.approx(expected, abs=1e-9)


def test_bleu_statistics_sum_to_corpus_bleu():
    import sacrebleu

    hyps = ["the cat sat on the mat", "hello there", "a b c d e"]
    refs = ["the cat is on the mat", "hello there friend", "a b c d f"]
    stats = bleu_statistics(hyps, refs)
    assert stats.shape == (3, 10)
    assert bleu_from_statistics(stats) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert chrf_from_statistics(chrf_statistics(hyps, refs)) == pytest.approx(corpus_chrf(hyps, refs))


def test_rouge_hand_computed():
    scores = rouge_per_sample(["the cat sat"], ["the cat sat down"])
    # unigrams: P=3/3 R=3/4 -> F=6/7; bigrams: P=2/2 R=2/3 -> F=0.8; LCS=3 -> F=6/7
    assert scores["rouge1"][0] == pytest.approx(6 / 7)
    assert scores["rouge2"][0] == pytest.approx(0.8)
    assert scores["rougeL"][0] == pytest.approx(6 / 7)


def test_generation_stats_values():
    stats = generation_stats(["the cat sat", "We open at 9 am."], ["the cat sat down", "we open at 9 am"])
    assert stats["exact_match"].value() == 0.5
    assert stats["rouge1"].value() == pytest.approx((6 / 7 + 1.0) / 2)
    assert stats["exact_match"].value(np.array([1])) == 1.0


def test_facts_and_percentiles_and_perplexity():
    assert facts_score("We are open 9am-5pm,  Monday to Friday", ["open 9AM-5pm", "monday  to friday"]) == 1.0
    assert facts_score("We are open 9am-5pm", ["open 9am-5pm", "Saturday"]) == 0.0
    assert percentile([10, 20, 30, 40], 50) == 25.0
    assert percentile([10, 20, 30, 40], 95) == pytest.approx(38.5)  # 30 + 0.85 * 10
    assert perplexity_from_sums(3 * math.log(4), 3) == pytest.approx(4.0)
