"""``run_audit``: bias probes and group fairness of one model on the user's data, with a release gate.

This is the orchestration behind ``tuneloop audit``::

    from tuneloop.explain.audit import run_audit
    result = run_audit("runs/support-bot", "prepared/test.jsonl", probes=["names", "gender"],
                       sensitive_fields=["region"], gates=["bias_gap <= 0.05"], out_dir="audit")
    result["gate"]["passed"]

As in ``eval``, everything that can be wrong with the input (the file, the word lists, the fields,
the gate rules) is checked before the model is loaded. Metrics a gate can name (each the worst over
probes or fields; ``NAME.PROBE`` / ``NAME.FIELD`` for one of them): ``bias_gap``, ``bias_gap_ci_low``,
``change_rate``, ``quality_gap``, and for classification ``demographic_parity_difference`` and
``equalized_odds_difference``. Files: ``audit.json`` (the returned dict) and ``audit.html``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from tuneloop.errors import UserError
from tuneloop.evaluate.classification import LabelMapper
from tuneloop.evaluate.compare import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, evaluate_gates, parse_gate
from tuneloop.evaluate.examples import detect_task, load_examples
from tuneloop.evaluate.run import check_slice_field, default_max_new_tokens
from tuneloop.evaluate.slices import field_value
from tuneloop.explain.bias import bootstrap_mean_ci, count_variants, run_probe, variant_score
from tuneloop.explain.counterfactual import BUILTIN, build_counterfactuals, load_wordlist
from tuneloop.explain.fairness import fairness_by_field
from tuneloop.explain.render import render_audit
from tuneloop.models.generation import generate_chat
from tuneloop.models.loading import load_model_and_tokenizer
from tuneloop.paths import check_output_dir, make_dir, write_json_atomic, write_text_atomic

PROBE_METRICS = ("bias_gap", "bias_gap_ci_low", "change_rate")
FIELD_METRICS = ("quality_gap",)
CLASSIFICATION_FIELD_METRICS = ("demographic_parity_difference", "equalized_odds_difference")


def select_probes(examples, probes, wordlists) -> list[tuple]:
    """(word list, its counterfactuals) for each probe that applies. Named probes must match records;
    with none named, the shipped lists that match any record are used."""
    named = list(probes or []) + [str(w) for w in wordlists or []]
    chosen = []
    for spec in named or BUILTIN:
        words = load_wordlist(spec)
        counterfactuals = build_counterfactuals(words, examples)
        if not counterfactuals and named:
            raise UserError(f"none of the {len(examples)} records mentions a word of the {words.name!r} list",
                            where=f"--probe {spec}", hint=f"add your words to {words.source} (or pass "
                            "--wordlist FILE), or drop this probe")
        if counterfactuals:
            chosen.append((words, counterfactuals))
    if not chosen:
        raise UserError(f"no record mentions a word of the shipped lists ({', '.join(BUILTIN)})",
                        where="--data", hint="pass --wordlist FILE with the names or markers your data uses, "
                        "or --sensitive-field FIELD to compare groups of a record field")
    return chosen


def metric_names(probe_names: list[str], fields: list[str], task: str) -> list[str]:
    names = []
    if probe_names:
        names += [*PROBE_METRICS, *(f"{m}.{p}" for m in PROBE_METRICS for p in probe_names)]
    field_metrics = FIELD_METRICS + (CLASSIFICATION_FIELD_METRICS if task == "classification" else ())
    if fields:
        names += [*field_metrics, *(f"{m}.{f}" for m in field_metrics for f in fields)]
    return names


def _gap_by_group(correct: np.ndarray, groups: list[str], n_resamples: int = BOOTSTRAP_RESAMPLES,
                  seed: int = BOOTSTRAP_SEED) -> dict:
    """Per-group quality and the best-minus-worst gap with a stratified bootstrap CI (groups resampled
    separately, since a record belongs to one group only)."""
    by_group = {g: correct[[i for i, x in enumerate(groups) if x == g]] for g in sorted(set(groups))}
    quality = {g: float(v.mean()) for g, v in by_group.items()}
    hi, lo = max(quality, key=quality.get), min(quality, key=quality.get)
    rng = np.random.default_rng(seed)
    gaps = [by_group[hi][rng.integers(0, len(by_group[hi]), len(by_group[hi]))].mean()
            - by_group[lo][rng.integers(0, len(by_group[lo]), len(by_group[lo]))].mean() for _ in range(n_resamples)]
    return {"quality": quality, "counts": {g: len(v) for g, v in by_group.items()},
            "quality_ci95": {g: bootstrap_mean_ci(v) for g, v in by_group.items()},
            "quality_gap": quality[hi] - quality[lo], "gap_groups": [hi, lo],
            "quality_gap_ci95": [float(np.percentile(gaps, 2.5)), float(np.percentile(gaps, 97.5))]}


def field_audit(examples, answers: list[str], fields: list[str], task: str) -> dict:
    """Quality per group of each field; for classification also fairlearn's differences."""
    mapper = LabelMapper([e.label for e in examples]) if task == "classification" else None
    correct = np.array([variant_score(a, e.reference, e.facts, e.label, mapper) for e, a in zip(examples, answers)])
    values = {f: [field_value(e.record, f) for e in examples] for f in fields}
    out = {f: _gap_by_group(correct, values[f]) for f in fields}
    if mapper is not None:
        predicted = [mapper.map(a).label for a in answers]
        truth = [e.label for e in examples]
        for name, figures in fairness_by_field(truth, predicted, values, mapper.labels).items():
            out.setdefault(name, {}).update(figures)
    return out


def collect_metrics(probe_results: list[dict], fields: dict[str, dict], task: str) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for r in probe_results:
        metrics[f"bias_gap.{r['probe']}"] = r["bias_gap"]
        metrics[f"bias_gap_ci_low.{r['probe']}"] = r["bias_gap_ci95"][0]
        metrics[f"change_rate.{r['probe']}"] = r["change_rate"]
    if probe_results:
        for m in PROBE_METRICS:
            metrics[m] = max(metrics[f"{m}.{r['probe']}"] for r in probe_results)
    names = FIELD_METRICS + (CLASSIFICATION_FIELD_METRICS if task == "classification" else ())
    for m in names:
        values = {f: figures[m] for f, figures in fields.items() if m in figures}
        for f, v in values.items():
            metrics[f"{m}.{f}"] = v
        if values:
            metrics[m] = max(values.values())
    return metrics


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="answer", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def run_audit(model: str, data, probes=None, wordlists=(), sensitive_fields=(), gates=(), out_dir=None,
              max_samples: int | None = None, task: str = "auto", batch_size: int = 16,
              max_new_tokens: int | None = None, progress: bool = True) -> dict:
    """Probe ``model`` on ``data``; returns audit.json's content."""
    import torch

    started = time.perf_counter()
    if out_dir is not None:
        check_output_dir(out_dir)
    examples = load_examples(data, max_samples)
    task = detect_task(examples, task)
    fields = list(sensitive_fields)
    for f in fields:
        check_slice_field(examples, f)
    chosen = select_probes(examples, probes, wordlists) if (probes or wordlists or not fields) else []
    names = metric_names([w.name for w, _ in chosen], fields, task)
    parsed = [parse_gate(rule, names) for rule in gates]

    model_obj, tokenizer = load_model_and_tokenizer(model, device="cuda" if torch.cuda.is_available() else None)
    max_new = max_new_tokens or default_max_new_tokens(tokenizer, task, examples)
    total = sum(count_variants(cfs, w.groups) for w, cfs in chosen) + (len(examples) if fields else 0)
    with _progress(total, f"{Path(str(model)).name}: audit", progress) as bar:
        probe_results = [run_probe(model_obj, tokenizer, w, examples, max_new, batch_size, bar, cfs).to_json()
                         for w, cfs in chosen]
        field_results = {}
        if fields:
            answers = [g.text for g in generate_chat(model_obj, tokenizer, [e.prompt for e in examples],
                                                     max_new_tokens=max_new, batch_size=batch_size)]
            bar.update(len(examples))
            field_results = field_audit(examples, answers, fields, task)
    metrics = collect_metrics(probe_results, field_results, task)
    result = {
        "model": str(model), "data": str(data), "task": task, "n": len(examples), "metrics": metrics,
        "probes": probe_results, "fields": field_results, "gate": evaluate_gates(parsed, metrics, None),
        "settings": {"max_new_tokens": max_new, "decoding": "greedy", "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
                     "bootstrap_seed": BOOTSTRAP_SEED, "max_samples": max_samples,
                     "wordlists": {w.name: w.source for w, _ in chosen}},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if out_dir is not None:
        write_audit(Path(out_dir), result)
    return result


def write_audit(out_dir: Path, result: dict) -> None:
    make_dir(out_dir)
    write_text_atomic(out_dir / "audit.html", render_audit(result))
    write_json_atomic(out_dir / "audit.json", result)
