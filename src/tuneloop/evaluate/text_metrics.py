"""Scoring free-text answers against reference answers: exact match, BLEU, chrF, ROUGE-1/2/L.

Each metric comes back as :class:`~tuneloop.evaluate.compare.SampleStats`, so the same numbers feed
the headline value, the bootstrap CI against a baseline and the per-slice table. BLEU and chrF are
corpus-level (sacreBLEU): their rows are sufficient statistics that are summed, not averaged.
"""

from __future__ import annotations

import numpy as np

from tuneloop.evaluate.compare import SampleStats, mean_of
from tuneloop.evaluate.metrics import bleu_from_statistics, bleu_statistics, exact_match, rouge_per_sample


def chrf_statistics(predictions: list[str], references: list[str]) -> np.ndarray:
    from sacrebleu.metrics import CHRF

    if not predictions:
        return np.zeros((0, 18))
    return np.asarray(CHRF()._extract_corpus_statistics(list(predictions), [list(references)]), dtype=np.float64)


def chrf_from_statistics(statistics: np.ndarray) -> float:
    from sacrebleu.metrics import CHRF

    if len(statistics) == 0:
        return 0.0
    return float(CHRF()._compute_score_from_stats([int(x) for x in statistics.sum(axis=0)]).score)


def generation_stats(predictions: list[str], references: list[str]) -> dict[str, SampleStats]:
    rouge = rouge_per_sample(predictions, references)
    return {
        "exact_match": mean_of([exact_match(p, r) for p, r in zip(predictions, references)]),
        "bleu": SampleStats(bleu_statistics(predictions, references), bleu_from_statistics),
        "rouge1": mean_of(rouge["rouge1"]),
        "rouge2": mean_of(rouge["rouge2"]),
        "rougeL": mean_of(rouge["rougeL"]),
        "chrf": SampleStats(chrf_statistics(predictions, references), chrf_from_statistics),
    }
