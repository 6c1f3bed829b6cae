"""Pure metric functions: text normalisation, classification scores, text-overlap scores, percentiles.

Everything here takes plain Python lists or numpy arrays and returns numbers, so each function has
unit tests with hand-computed values (tests/test_eval_metrics.py). Scales: accuracy, precision, recall,
F1, exact match, ROUGE and fact accuracy are fractions in [0, 1]; BLEU and chrF are on sacreBLEU's
0-100 scale, the scale published BLEU figures use.
"""

from __future__ import annotations

import re
import string

import numpy as np

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_text(text: str) -> str:
    """Lower case, punctuation (including ``_`` and ``-``) to spaces, whitespace collapsed.

    Why ``_`` to a space: label names such as ``card_arrival`` should match an answer "card arrival".
    """
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_text(prediction) == normalize_text(reference))


def contains_fact(answer: str, fact: str) -> bool:
    """Case-insensitive, whitespace-normalised containment (punctuation matters: "$4.99")."""
    return " ".join(fact.lower().split()) in " ".join(answer.lower().split())


def facts_score(answer: str, facts: list[str]) -> float:
    """1.0 when the answer contains every fact, else 0.0."""
    return float(all(contains_fact(answer, fact) for fact in facts))


# ---- classification ---------------------------------------------------------------------------


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """``matrix[i, j]`` = how many samples of true label i were predicted as j (label indices)."""
    flat = np.bincount(np.asarray(y_true) * n_labels + np.asarray(y_pred), minlength=n_labels * n_labels)
    return flat.reshape(n_labels, n_labels)


def scores_from_confusion(matrix: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 from a confusion matrix.

    Macro averages run over the labels that occur as a true or a predicted label (scikit-learn's
    default label set); a label never predicted has precision 0 (``zero_division=0``).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    true_pos = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    present = (predicted + actual) > 0
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_pos), where=denominator > 0)
    total = matrix.sum()
    return {
        "accuracy": float(true_pos.sum() / total) if total else 0.0,
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
    }


def classification_scores(y_true, y_pred, n_labels: int) -> dict[str, float]:
    return scores_from_confusion(confusion_counts(y_true, y_pred, n_labels))


# ---- generation -------------------------------------------------------------------------------


def bleu_statistics(predictions: list[str], references: list[str]) -> np.ndarray:
    """Per-sample sufficient statistics of corpus BLEU (sacreBLEU): one row per sample.

    Corpus BLEU is not an average of sentence scores, so bootstrap resampling sums these rows and
    recomputes the score (:func:`bleu_from_statistics`).
    """
    from sacrebleu.metrics import BLEU

    if not predictions:
        return np.zeros((0, 10))
    rows = BLEU()._extract_corpus_statistics(list(predictions), [list(references)])
    return np.asarray(rows, dtype=np.float64)


def bleu_from_statistics(statistics: np.ndarray) -> float:
    from sacrebleu.metrics import BLEU

    if len(statistics) == 0:
        return 0.0
    summed = [int(x) for x in np.asarray(statistics).sum(axis=0)]
    return float(BLEU()._compute_score_from_stats(summed).score)


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def corpus_chrf(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_chrf(predictions, [references]).score)


def rouge_per_sample(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F-measures per sample (rouge-score, with stemming, as most papers report)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out: dict[str, list[float]] = {"rouge1": [], "rouge2": [], "rougeL": []}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for name in out:
            out[name].append(scores[name].fmeasure)
    return out


# ---- efficiency -------------------------------------------------------------------------------


def percentile(values, q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.percentile(values, q)) if values.size else 0.0


def perplexity_from_sums(nll_sum: float, n_tokens: int) -> float:
    return float(np.exp(nll_sum / n_tokens)) if n_tokens else float("nan")
