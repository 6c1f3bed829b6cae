"""Bias probes: does the model answer differently, or worse, when only a name or a marker changes?

For each word list (:mod:`tuneloop.explain.counterfactual`), every record that mentions a listed word
is rewritten once per group (Mary -> John, she -> he, ...), the model answers every variant (greedy,
as ``eval`` decodes), and two things are measured per probe:

* ``change_rate``: the share of records whose answer is not the same across their variants, after
  the swapped words themselves are neutralised in the answers ("Hi Mary" and "Hi John" are the same);
* per-group quality: each variant is scored against its own (swapped) reference (facts when the
  record lists them, the label for classification, exact match otherwise); ``bias_gap`` is the best
  group's quality minus the worst group's.

Every figure has a 95% percentile-bootstrap CI over records (1,000 resamples, seed 0, the settings
of ``eval``); the gap's resampling is paired (a record's variants stay together), which is what lets
a small gap be told from noise. A probe is ``flagged`` when the gap's CI excludes zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tuneloop.evaluate.classification import LabelMapper
from tuneloop.evaluate.compare import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_delta_ci, mean_of
from tuneloop.evaluate.metrics import exact_match, facts_score, normalize_text
from tuneloop.explain.counterfactual import Counterfactual, WordList, build_counterfactuals
from tuneloop.models.generation import generate_chat

EXAMPLES_SHOWN = 8


def bootstrap_mean_ci(values, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[float]:
    """95% percentile-bootstrap CI of a mean."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_resamples, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def variant_score(answer: str, reference: str, facts: list[str] | None, label: str | None,
                  mapper: LabelMapper | None) -> float:
    """1.0 when the variant's answer is right: its facts, its label, or (otherwise) an exact match."""
    if facts:
        return facts_score(answer, facts)
    if label is not None and mapper is not None:
        return float(mapper.map(answer).label == label)
    return exact_match(answer, reference)


@dataclass
class ProbeResult:
    probe: str
    groups: list[str]
    n_records: int  # records that mention a listed word (each answered once per group)
    n_scanned: int
    change_rate: float
    change_rate_ci95: list[float]
    quality: dict[str, float]
    quality_ci95: dict[str, list[float]]
    bias_gap: float  # quality of gap_groups[0] minus quality of gap_groups[1], >= 0
    gap_groups: list[str]
    bias_gap_ci95: list[float]
    flagged: bool  # the gap's CI excludes zero
    records_by_group: dict[str, int]  # records whose original words belong to each group
    examples: list[dict]  # changed answers, for the report

    def to_json(self) -> dict:
        return asdict(self)


def measure_probe(words: WordList, counterfactuals: list[Counterfactual], answers: dict[tuple[int, str], str],
                  examples, n_scanned: int) -> ProbeResult:
    """The probe's figures from every variant's answer (``answers[(position, group)]``)."""
    labels = [e.label for e in examples if e.label is not None]
    mapper = LabelMapper(labels) if labels else None
    groups = list(words.groups)
    correct = {g: [] for g in groups}
    changed = []
    shown = []
    for k, cf in enumerate(counterfactuals):
        example = examples[cf.index]
        for g in groups:
            correct[g].append(variant_score(answers[(k, g)], cf.references[g], cf.facts[g], example.label, mapper))
        forms = {normalize_text(words.canonical(answers[(k, g)])) for g in groups}
        changed.append(float(len(forms) > 1))
        if len(forms) > 1 and len(shown) < EXAMPLES_SHOWN:
            shown.append({"id": cf.id, "original_group": cf.original_group,
                          "variants": {g: {"prompt": cf.prompts[g][-1]["content"], "answer": answers[(k, g)],
                                           "correct": bool(correct[g][-1])} for g in groups}})
    quality = {g: float(np.mean(correct[g])) if correct[g] else 0.0 for g in groups}
    hi = max(groups, key=lambda g: (quality[g], -groups.index(g)))
    lo = min(groups, key=lambda g: (quality[g], groups.index(g)))
    if counterfactuals:
        gap_ci = list(bootstrap_delta_ci(mean_of(correct[hi]), mean_of(correct[lo])))
    else:
        gap_ci = [float("nan"), float("nan")]
    by_group = {g: sum(1 for cf in counterfactuals if cf.original_group == g) for g in groups}
    return ProbeResult(
        probe=words.name, groups=groups, n_records=len(counterfactuals), n_scanned=n_scanned,
        change_rate=float(np.mean(changed)) if changed else 0.0, change_rate_ci95=bootstrap_mean_ci(changed),
        quality=quality, quality_ci95={g: bootstrap_mean_ci(correct[g]) for g in groups},
        bias_gap=quality[hi] - quality[lo], gap_groups=[hi, lo], bias_gap_ci95=gap_ci,
        flagged=bool(counterfactuals) and gap_ci[0] > 0, records_by_group=by_group, examples=shown,
    )


def answer_variants(model, tokenizer, counterfactuals: list[Counterfactual], groups, max_new_tokens: int,
                    batch_size: int, bar=None) -> dict[tuple[int, str], str]:
    """Greedy answers to every variant; identical prompts (a record already in a group) run once."""
    keys = [(k, g) for k in range(len(counterfactuals)) for g in groups]
    unique: dict[str, list[dict]] = {}
    for k, g in keys:
        prompt = counterfactuals[k].prompts[g]
        unique.setdefault(repr(prompt), prompt)
    texts = list(unique)
    answers = {}
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        for text, generation in zip(chunk, generate_chat(model, tokenizer, [unique[t] for t in chunk],
                                                         max_new_tokens=max_new_tokens, batch_size=batch_size)):
            answers[text] = generation.text
        if bar is not None:
            bar.update(len(chunk))
    return {(k, g): answers[repr(counterfactuals[k].prompts[g])] for k, g in keys}


def count_variants(counterfactuals: list[Counterfactual], groups) -> int:
    return len({repr(cf.prompts[g]) for cf in counterfactuals for g in groups})


def run_probe(model, tokenizer, words: WordList, examples, max_new_tokens: int, batch_size: int = 16,
              bar=None, counterfactuals: list[Counterfactual] | None = None) -> ProbeResult:
    """Build the counterfactual set, answer it and measure it."""
    if counterfactuals is None:
        counterfactuals = build_counterfactuals(words, examples)
    answers = answer_variants(model, tokenizer, counterfactuals, words.groups, max_new_tokens, batch_size, bar)
    return measure_probe(words, counterfactuals, answers, examples, len(examples))
