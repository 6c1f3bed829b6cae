"""``run_eval``: evaluate a model (and optionally a baseline) on a data file and write the results.

This is the orchestration behind ``tuneloop eval``; every step it calls is a pure function elsewhere
in this package. Order matters for the user: the data is read and checked, the task detected and the
gate rules parsed *before* any model is loaded, so a typo fails in a second, not after an hour.

    from tuneloop.evaluate import run_eval
    result = run_eval("runs/support-bot", "prepared/test.jsonl", baseline="smollm2-135m-instruct",
                      out_dir="eval", gates=["f1 >= baseline + 0.02"])
    result["gate"]["passed"]

Optional parts, each its own module: label likelihood (classification), judge, harness tasks.

Files written to ``out_dir``: ``eval.json`` (the returned dict), ``predictions.jsonl`` (and
``predictions.baseline.jsonl``), ``report.html``.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneloop.errors import UserError, did_you_mean
from tuneloop.evaluate.classification import (CLASSIFY_MODES, classification_stats, classify, classify_by_likelihood,
                                              predict_labels_by_likelihood, top_confused_pairs)
from tuneloop.evaluate.compare import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, SampleStats, compare_metrics,
                                       GATE_MODES, evaluate_gates, parse_gate)
from tuneloop.evaluate.examples import Example, detect_task, load_examples
from tuneloop.evaluate.harness import compare_tasks, parse_tasks, run_tasks
from tuneloop.evaluate.inference import PeakMemory, answer_prompts, model_size_mb
from tuneloop.evaluate.judge import check_rubrics, judge_metric_names, open_judge, run_judge
from tuneloop.evaluate.perplexity import reference_nll
from tuneloop.evaluate.report import render_report
from tuneloop.evaluate.text_metrics import generation_stats
from tuneloop.evaluate.metrics import facts_score, percentile, perplexity_from_sums
from tuneloop.evaluate.slices import DEFAULT_GAP_THRESHOLD, field_value, slice_metrics
from tuneloop.models.loading import load_model_and_tokenizer, resolve_model
from tuneloop.paths import (check_output_dir, make_dir, write_json_atomic, write_jsonl_atomic,
                            write_text_atomic)

TASK_METRICS = {
    "classification": ("accuracy", "precision", "recall", "f1"),
    "generation": ("exact_match", "bleu", "rouge1", "rouge2", "rougeL", "chrf"),
}
COMMON_METRICS = ("perplexity", "latency_ms_p50", "latency_ms_p95", "tokens_per_s")
SCALAR_METRICS = ("peak_memory_mb", "model_size_mb")


@dataclass
class ModelResult:
    """Everything measured for one model: per-sample rows, metric statistics and scalar figures."""

    reference: str
    answers: object  # inference.ModelAnswers
    stats: dict[str, SampleStats]
    scalars: dict[str, float]
    rows: list[dict]
    timing: dict[str, float]
    confusion: dict | None = None
    no_label: int | None = None  # classification: answers that are no label (always wrong)
    harness: dict | None = None  # lm-evaluation-harness results, {task: {metric: {value, stderr}}}

    @property
    def metrics(self) -> dict[str, float]:
        return {**{name: s.value() for name, s in self.stats.items()}, **self.scalars}


def metric_names(task: str, examples: list[Example]) -> list[str]:
    facts = ("fact_accuracy",) if any(e.facts for e in examples) else ()
    return [*TASK_METRICS[task], *facts, *COMMON_METRICS, *SCALAR_METRICS]


def default_max_new_tokens(tokenizer, task: str, examples: list[Example]) -> int:
    """Enough for the longest reference: labels are short, so classification decodes only a few steps."""
    lengths = [len(tokenizer(e.reference, add_special_tokens=False)["input_ids"]) for e in examples]
    if task == "classification":
        return max(lengths) + 4
    return int(min(256, max(lengths) + 16))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def _efficiency_stats(answers, nll: list[float], counts: list[int]) -> dict[str, SampleStats]:
    latency = np.asarray(answers.latency_ms)
    throughput = np.stack([np.asarray(answers.completion_tokens, float), np.asarray(answers.amortised_s)], axis=1)
    return {
        "perplexity": SampleStats(np.stack([nll, counts], axis=1).astype(float),
                                  lambda r: perplexity_from_sums(r[:, 0].sum(), int(r[:, 1].sum()))),
        "latency_ms_p50": SampleStats(latency, lambda v: percentile(v, 50)),
        "latency_ms_p95": SampleStats(latency, lambda v: percentile(v, 95)),
        "tokens_per_s": SampleStats(throughput, lambda r: float(r[:, 0].sum() / r[:, 1].sum()) if r[:, 1].sum() else 0.0),
    }


def _facts_stats(examples: list[Example], texts: list[str]) -> SampleStats:
    # Rows: (has facts, all facts found); records without facts do not count either way.
    rows = np.array([[1.0, facts_score(t, e.facts)] if e.facts else [0.0, 0.0] for e, t in zip(examples, texts)])
    return SampleStats(rows, lambda r: float(r[:, 1].sum() / r[:, 0].sum()) if r[:, 0].sum() else 0.0)


def _task_scores(task: str, examples: list[Example], texts: list[str], classify_mode: str,
                 likely_labels: list[str] | None):
    """(metric stats, per-sample fields for predictions.jsonl, confusion block or None, no_label count)."""
    if task == "classification":
        labels = [e.label for e in examples]
        if classify_mode == "likelihood":
            result = classify_by_likelihood(likely_labels, labels, labels)
        else:
            result = classify(texts, labels, labels, mode=classify_mode)
        matrix = result.confusion()
        confusion = {"labels": result.labels, "matrix": matrix.tolist(),
                     "top_confused": top_confused_pairs(matrix, result.labels)}
        fields = [{"predicted_label": m.label, "matched_by": m.matched_by, "correct": bool(c)}
                  for m, c in zip(result.matches, result.correct)]
        return classification_stats(result), fields, confusion, result.no_label
    stats = generation_stats(texts, [e.reference for e in examples])
    em, rouge_l = stats["exact_match"].values, stats["rougeL"].values
    fields = [{"correct": bool(em[i]), "score": round(float(rouge_l[i]), 4)} for i in range(len(texts))]
    return stats, fields, None, None


def resolve_dtype(dtype: str):
    """auto: bfloat16 on a GPU (its native speed), float32 on CPU (exact, and what the figures assume)."""
    import torch

    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"unknown dtype {dtype!r}", where="--dtype", hint="use auto, float32, bfloat16 or float16")
    return getattr(torch, dtype)


def evaluate_model(reference: str, examples: list[Example], task: str, batch_size: int,
                   max_new_tokens: int | None, progress: bool = True, dtype: str = "auto",
                   classify_mode: str = "likelihood", tasks: tuple | None = None) -> ModelResult:
    """Load one model, answer every prompt, score perplexity on the references, then free it.

    Greedy answers are generated in every mode (latency, tokens/s and the text in predictions.jsonl);
    with ``classify_mode="likelihood"`` the label is then chosen by likelihood over the label set.
    """
    import torch

    resolved = resolve_model(reference)
    device = "cuda" if torch.cuda.is_available() else None
    started = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(resolved, dtype=resolve_dtype(dtype), device=device)
    load_s = time.perf_counter() - started
    max_new = max_new_tokens or default_max_new_tokens(tokenizer, task, examples)
    with PeakMemory() as memory:
        with _progress(len(examples), f"{Path(reference).name}: generate", progress) as bar:
            answers = answer_prompts(model, tokenizer, [e.prompt for e in examples], max_new, batch_size, bar)
        started = time.perf_counter()
        with _progress(len(examples), f"{Path(reference).name}: perplexity", progress) as bar:
            nll, counts = reference_nll(model, tokenizer, [e.conversation for e in examples], batch_size, bar)
        perplexity_s = time.perf_counter() - started
        likely_labels, likelihood_s = None, None
        if task == "classification" and classify_mode == "likelihood":
            started = time.perf_counter()
            label_set = sorted({e.label for e in examples})
            with _progress(len(examples), f"{Path(reference).name}: label likelihood", progress) as bar:
                likely_labels = predict_labels_by_likelihood(model, tokenizer, [e.prompt for e in examples],
                                                             label_set, progress=bar)
            likelihood_s = time.perf_counter() - started
    harness, harness_s = None, None
    if tasks:
        started = time.perf_counter()
        harness = run_tasks(model, tokenizer, *tasks, batch_size=batch_size)
        harness_s = time.perf_counter() - started
    del model
    gc.collect()
    stats, fields, confusion, no_label = _task_scores(task, examples, answers.texts, classify_mode, likely_labels)
    stats.update(_efficiency_stats(answers, nll, counts))
    if any(e.facts for e in examples):
        stats["fact_accuracy"] = _facts_stats(examples, answers.texts)
    scalars = {"peak_memory_mb": round(memory.peak_mb, 1),
               "model_size_mb": round(model_size_mb(resolved.path, resolved.adapter), 1)}
    timing = {"load_s": load_s, "generation_s": answers.wall_s, "perplexity_s": perplexity_s,
              "max_new_tokens": max_new, **({"likelihood_s": likelihood_s} if likelihood_s is not None else {}),
              **({"harness_s": harness_s} if harness_s is not None else {})}
    return ModelResult(reference, answers, stats, scalars, _prediction_rows(examples, answers, fields), timing,
                       confusion, no_label, harness)


def _prediction_rows(examples: list[Example], answers, fields: list[dict]) -> list[dict]:
    """predictions.jsonl: one row per sample, in data order."""
    return [{"id": e.id, "source": e.source, "prompt": e.prompt_text, "reference": e.reference,
             "prediction": answers.texts[i], **fields[i], "latency_ms": round(answers.latency_ms[i], 2),
             "completion_tokens": answers.completion_tokens[i], "finish_reason": answers.finish_reasons[i]}
            for i, e in enumerate(examples)]


def check_slice_field(examples: list[Example], field: str) -> None:
    if any(field_value(e.record, field) != "(missing)" for e in examples):
        return
    keys = sorted({k for e in examples for k in e.record})
    guess = did_you_mean(field, keys)
    raise UserError(f"no record has the field {field!r}" + (f"; did you mean {guess!r}?" if guess else ""),
                    where="--slice-by", hint="fields in this data: " + ", ".join(keys))


def parse_gates(rules, names: list[str], have_baseline: bool) -> list:
    """Parse every rule up front, so a typo fails before any model is loaded."""
    gates = [parse_gate(rule, names) for rule in rules]
    for gate in gates:
        if gate.uses_baseline and not have_baseline:
            raise UserError("the rule compares with the baseline but no baseline was given",
                            where=f"--gate {gate.rule!r}", hint="add --baseline MODEL")
    return gates


def compare_results(main: ModelResult, base: ModelResult) -> dict:
    """Deltas with bootstrap CIs; memory and size are single figures, so they get no CI."""
    comparison = compare_metrics(main.stats, base.stats)
    for name in SCALAR_METRICS:
        comparison[name] = {"model": main.scalars[name], "baseline": base.scalars[name],
                            "delta": main.scalars[name] - base.scalars[name], "ci95": None}
    return comparison


def run_eval(model: str, data: str | Path, baseline: str | None = None, out_dir: str | Path | None = None,
             gates=(), slice_by: str | None = None, max_samples: int | None = None, task: str = "auto",
             batch_size: int = 16, max_new_tokens: int | None = None,
             slice_threshold: float = DEFAULT_GAP_THRESHOLD, progress: bool = True, dtype: str = "auto",
             classify: str = "likelihood", gate_mode: str = "ci", judge: str | None = None,
             judge_rubrics=(), judge_model: str | None = None, judge_api_key: str | None = None,
             tasks: str | list[str] | None = None) -> dict:
    """Evaluate ``model`` (and ``baseline``) on ``data``; returns eval.json's content (see SPEC).

    ``classify``: how a classification answer becomes a label (``likelihood``, ``generate`` or
    ``similar``; see :mod:`tuneloop.evaluate.classification`). ``gate_mode``: ``ci`` (a rule passes only
    beyond its paired-bootstrap 95% CI) or ``point`` (observed values); see :mod:`tuneloop.evaluate.compare`.
    ``judge``: a model reference or an OpenAI-compatible URL scoring the answers on ``judge_rubrics``
    (:mod:`tuneloop.evaluate.judge`). ``tasks``: lm-evaluation-harness task names and task YAML files,
    run on both models (:mod:`tuneloop.evaluate.harness`).
    """
    started = time.perf_counter()
    if classify not in CLASSIFY_MODES:
        raise UserError(f"unknown classification scoring {classify!r}", where="--classify",
                        hint="use " + ", ".join(CLASSIFY_MODES))
    if gate_mode not in GATE_MODES:
        raise UserError(f"unknown gate mode {gate_mode!r}", where="--gate-mode", hint="use ci or point")
    if out_dir is not None:
        check_output_dir(out_dir)
    examples = load_examples(data, max_samples)
    task = detect_task(examples, task)
    rubrics = check_rubrics(judge_rubrics, True) if judge else []
    harness_tasks = parse_tasks(tasks) if tasks else None
    names = metric_names(task, examples) + judge_metric_names(rubrics, baseline is not None)
    parsed_gates = parse_gates(gates, names, baseline is not None)
    if slice_by:
        check_slice_field(examples, slice_by)
    groups = [field_value(e.record, slice_by) for e in examples] if slice_by else None

    results = [evaluate_model(model, examples, task, batch_size, max_new_tokens, progress, dtype, classify,
                              harness_tasks)]
    if baseline is not None:
        results.append(evaluate_model(baseline, examples, task, batch_size, max_new_tokens, progress, dtype,
                                      classify, harness_tasks))
    main, base = results[0], (results[1] if baseline is not None else None)
    judged = _judge(judge, judge_model, judge_api_key, rubrics, examples, main, base, progress) if judge else None
    slices = [slice_metrics(r.stats, groups, slice_by, slice_threshold) if groups else None for r in results]

    result = {
        "model": model, "data": str(data), "task": task, "n": len(examples),
        "classify": classify if task == "classification" else None,
        "metrics": main.metrics, "no_label": main.no_label,
        "baseline": ({"model": base.reference, "metrics": base.metrics, "no_label": base.no_label,
                      "slices": slices[1], "confusion": base.confusion, "timing": base.timing} if base else None),
        "comparison": compare_results(main, base) if base else None,
        "gate": evaluate_gates(parsed_gates, main.metrics, base.metrics if base else None, gate_mode,
                               main.stats, base.stats if base else None),
        "slices": slices[0],
        "judge": judged,
        "harness": compare_tasks(main.harness, base.harness if base else None) if harness_tasks else None,
        "confusion": main.confusion,
        "timing": main.timing,
        "settings": {"batch_size": batch_size, "max_new_tokens": max_new_tokens or "auto", "decoding": "greedy",
                     "dtype": dtype, "classify": classify if task == "classification" else None,
                     "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED,
                     "max_samples": max_samples, "slice_by": slice_by, "slice_threshold": slice_threshold,
                     "gate_mode": gate_mode},
    }
    result["wall_s"] = time.perf_counter() - started
    if out_dir is not None:
        write_outputs(Path(out_dir), result, main, base)
    return result


def _judge(spec: str, judge_model, judge_api_key, rubrics: list[str], examples: list[Example], main: ModelResult,
           base: ModelResult | None, progress: bool) -> dict:
    """Judge scores join each model's stats (so they get CIs, deltas and gates); reasons join the rows."""
    questions = [e.prompt_text for e in examples]
    references = [e.reference for e in examples]
    with open_judge(spec, judge_model, judge_api_key) as judge:
        stats, base_stats, records, summary = run_judge(
            judge, rubrics, questions, references, main.answers.texts, base.answers.texts if base else None,
            lambda total, desc: _progress(total, desc, progress))
    main.stats.update(stats)
    for row, record in zip(main.rows, records):
        row["judge"] = record
    if base is not None:
        base.stats.update(base_stats)
        for row, record in zip(base.rows, records):
            row["judge"] = {r: {"score": v["baseline_score"], "reason": v["baseline_reason"]} for r, v in record.items()}
    return summary


def write_outputs(out_dir: Path, result: dict, main: ModelResult, base: ModelResult | None) -> None:
    """predictions, report, then eval.json last: its presence means the evaluation completed."""
    make_dir(out_dir)
    write_jsonl_atomic(out_dir / "predictions.jsonl", main.rows)
    if base is not None:
        write_jsonl_atomic(out_dir / "predictions.baseline.jsonl", base.rows)
    write_text_atomic(out_dir / "report.html", render_report(result, main.rows, base.rows if base else None))
    write_json_atomic(out_dir / "eval.json", result)
