"""Classification by generation: map a model's free-text answer onto the label set, then score it.

A chat model answers in words, so its answer is mapped onto a label in three steps, and the step
that matched is kept in ``predictions.jsonl`` (``matched_by``) so a reader can see how lenient it was:

1. ``exact``: the normalised answer equals a normalised label ("Card arrival." -> ``card_arrival``);
2. ``contained``: a normalised label occurs in the answer as whole words (the longest such label,
   since "card" inside "lost or stolen card" should not win over the longer label);
3. ``similar``: the label with the highest string similarity (difflib ratio) to the answer.

An empty answer maps to :data:`NO_ANSWER` (``matched_by`` = ``empty``), a pseudo-label that is always
wrong; otherwise it would "match" whichever label happens to win the similarity tie.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import numpy as np

from tuneloop.evaluate.metrics import confusion_counts, normalize_text, scores_from_confusion


NO_ANSWER = "(no answer)"


@dataclass(frozen=True)
class LabelMatch:
    label: str
    matched_by: str  # "exact" | "contained" | "similar" | "empty"


class LabelMapper:
    """Maps answers onto a fixed label set; build it once per evaluation."""

    def __init__(self, labels: list[str]):
        self.labels = sorted(set(labels))
        self._normalised = {label: normalize_text(label) for label in self.labels}
        self._by_normalised = {norm: label for label, norm in self._normalised.items()}
        # Longest first, so the most specific label contained in an answer wins.
        self._patterns = sorted(
            ((label, re.compile(rf"(?<!\w){re.escape(norm)}(?!\w)")) for label, norm in self._normalised.items() if norm),
            key=lambda item: -len(self._normalised[item[0]]),
        )

    def map(self, answer: str) -> LabelMatch:
        norm = normalize_text(answer)
        if not norm:
            return LabelMatch(NO_ANSWER, "empty")
        if norm in self._by_normalised:
            return LabelMatch(self._by_normalised[norm], "exact")
        for label, pattern in self._patterns:
            if pattern.search(norm):
                return LabelMatch(label, "contained")
        best = max(self.labels, key=lambda label: (difflib.SequenceMatcher(None, norm, self._normalised[label]).ratio(), label))
        return LabelMatch(best, "similar")

    def index(self, label: str) -> int:
        return self.labels.index(label)


@dataclass
class ClassificationResult:
    labels: list[str]
    y_true: np.ndarray  # label indices
    y_pred: np.ndarray
    matches: list[LabelMatch]

    @property
    def correct(self) -> np.ndarray:
        return (self.y_true == self.y_pred).astype(np.float64)

    def confusion(self) -> np.ndarray:
        return confusion_counts(self.y_true, self.y_pred, len(self.labels))

    def scores(self) -> dict[str, float]:
        return scores_from_confusion(self.confusion())


def classify(answers: list[str], references: list[str], labels: list[str]) -> ClassificationResult:
    """Map each answer onto ``labels`` and pair it with its reference label."""
    mapper = LabelMapper(labels)
    matches = [mapper.map(answer) for answer in answers]
    label_set = mapper.labels + ([NO_ANSWER] if any(m.label == NO_ANSWER for m in matches) else [])
    position = {label: i for i, label in enumerate(label_set)}
    y_true = np.array([position[r] for r in references], dtype=np.int64)
    y_pred = np.array([position[m.label] for m in matches], dtype=np.int64)
    return ClassificationResult(label_set, y_true, y_pred, matches)


def top_confused_pairs(matrix: np.ndarray, labels: list[str], k: int = 15) -> list[dict]:
    """The k most frequent (true, predicted) mistakes, most frequent first."""
    off = np.array(matrix, copy=True)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = []
    for flat in order:
        i, j = divmod(int(flat), len(labels))
        if off[i, j] == 0:
            break
        pairs.append({"true": labels[i], "predicted": labels[j], "count": int(off[i, j])})
    return pairs


def classification_stats(result: ClassificationResult) -> dict:
    """accuracy, precision, recall, f1 as :class:`~tuneloop.evaluate.compare.SampleStats`.

    Rows are (true, predicted) label indices, so macro scores are recomputed on any subset.
    """
    from tuneloop.evaluate.compare import SampleStats

    n_labels = len(result.labels)
    pairs = np.stack([result.y_true, result.y_pred], axis=1)

    def score(name):
        return lambda rows: scores_from_confusion(confusion_counts(rows[:, 0], rows[:, 1], n_labels))[name]

    return {name: SampleStats(pairs, score(name)) for name in ("accuracy", "precision", "recall", "f1")}
