"""``tuneloop auto``: data in, the best model that fits the budget out, with the reason for each choice.

The steps, each recorded with its reason in ``auto_report.json`` / ``report.html``:

1. inspect: prepare the data (or use a prepared directory) and read its shape: task, sizes, token
   lengths, labels;
2. model: catalog models present on this machine (offline: nothing is downloaded) that fit the
   memory and train an epoch within a share of the budget; the largest such wins;
3. method: LoRA (a CPU trains a 135M-1B model's adapters, not all its weights, in minutes);
4. formulation, for classification data both: a classifier head (LoRA + linear head,
   :mod:`tuneloop.tune.classifier`, settings from earlier Banking77 runs; an Optuna study of its
   learning rate first when the budget holds 5 epochs of it), and the generative one (the label as
   the assistant's answer, ordinary SFT); otherwise a ``tuneloop tune`` study;
5. evaluate each against its base on the held-out test split (the head on all of it; the
   generative model, scored by label likelihood, on the first records that fit the budget), pick
   the winner;
6. a winning classifier head is exported (``OUT/classifier-model``: a plain transformers sequence
   classifier, ``tuneloop serve --model NAME=OUT/classifier-model`` answers ``POST /v1/classify``).

Budget shares (of ``--budget-minutes``) are in :data:`SHARES`; each phase stops at its share.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneloop.config.recipe import recipe_from_dict
from tuneloop.data.prepare import PrepareOptions, prepare
from tuneloop.errors import UserError
from tuneloop.evaluate import run_eval
from tuneloop.evaluate.classification import most_likely_labels
from tuneloop.evaluate.metrics import classification_scores
from tuneloop.export import export_model
from tuneloop.models.catalog import CATALOG, EMBEDDED
from tuneloop.models.estimate import bf16_supported, estimate
from tuneloop.models.store import is_hf_dir
from tuneloop.paths import make_dir, model_store, read_jsonl, write_json_atomic, write_text_atomic
from tuneloop.train import run_training
from tuneloop.models.loading import load_model_and_tokenizer, resolve_model
from tuneloop.tune.classifier import (HEAD_STUDY_SHARE, ClassifierSettings, evaluate_classifier, head_study,
                                      plan_head_study, read_split, text_and_label, train_classifier,
                                      with_learning_rate, write_labels)
from tuneloop.tune.launch import prepare_settings, run_study
from tuneloop.tune.study import machine_memory_gb

# Classification: the head's training (with its learning-rate study when it fits, see
# classifier.plan_head_study), the generative SFT run; the rest (~35%) is evaluation: the
# head on the whole test split, then the generative model and its base on what time is left.
SHARES = {"classifier": 0.5, "generative": 0.15}
# Training a sample (forward, backward, its share of the validation passes) costs this many test
# passes of one: on Banking77, 5.5 training samples/s against 23 scored (tune_auto_banking77.json).
TRAIN_COST_PER_SCORED_SAMPLE = 4.5
GENERATIVE_TEST_SAMPLES = 200  # at most; fewer when the budget runs out (the report gives the count)
UNTRAINED_TEST_SAMPLES = 300  # the untrained head (the classifier's base line, ~1/labels) on a slice
CLASSIFIER_EXPORT = "classifier-model"  # under --out: the exported winning classifier
TEXT_COLUMNS = ("text", "query", "sentence", "utterance", "question", "input")
LABEL_COLUMNS = ("label", "category", "intent", "class", "target")


@dataclass
class DataProfile:
    task: str
    prepared: str
    train: int
    validation: int
    test: int
    labels: int = 0
    label_counts: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)

    def paths(self) -> dict:
        return {s: str(Path(self.prepared) / f"{s}.jsonl") for s in ("train", "validation", "test")}


def inspect_data(data: str | Path, out_dir: Path) -> tuple[DataProfile, list[str]]:
    """Prepare (or reuse) the data; its profile and what was done, in words."""
    data = Path(data)
    if data.is_dir() and all((data / f"{s}.jsonl").is_file() for s in ("train", "validation", "test")):
        prepared, notes = data, [f"{data} is already prepared (train/validation/test.jsonl): used as is"]
    else:
        if not data.exists():
            raise UserError(f"data not found: {data}", hint="give a data file, a directory of files, "
                                                            "or a `tuneloop data prepare` output directory")
        text_column, label_column = _csv_columns(data)
        prepared = out_dir / "prepared"
        prepare([data], prepared, PrepareOptions(task="auto", text_column=text_column, label_column=label_column))
        notes = [f"prepared {data} into {prepared} (validate, clean, dedup, PII, stratified 70/15/15 split)"]
        if label_column:
            notes.append(f"CSV columns: text = {text_column!r}, label = {label_column!r} (by name)")
    report = json.loads((prepared / "report.json").read_text()) if (prepared / "report.json").is_file() else {}
    train = read_jsonl(prepared / "train.jsonl")
    labelled = bool(train) and all("label" in r for r in train)
    counts: dict = {}
    for r in train if labelled else []:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    profile = DataProfile("classification" if labelled else "sft", str(prepared), len(train),
                          len(read_jsonl(prepared / "validation.jsonl")), len(read_jsonl(prepared / "test.jsonl")),
                          len(counts), counts, {k: v for k, v in report.get("tokens", {}).items()
                                                if k in ("mean", "p95", "max", "tokens_per_epoch")})
    if not profile.train or not profile.validation or not profile.test:
        raise UserError(f"{prepared}: auto needs train, validation and test records "
                        f"(got {profile.train}/{profile.validation}/{profile.test})", hint="give more data")
    return profile, notes


def _csv_columns(path: Path) -> tuple[str | None, str | None]:
    if path.suffix.lower() != ".csv":
        return None, None
    with open(path, newline="", encoding="utf-8") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    lower = {h.lower(): h for h in header}
    text = next((lower[c] for c in TEXT_COLUMNS if c in lower), None)
    label = next((lower[c] for c in LABEL_COLUMNS if c in lower), None)
    return (text, label) if text and label else (None, None)


def locally_present(card) -> bool:
    """Offline rule: the embedded model, or one already in the local model store."""
    return card.name == EMBEDDED or is_hf_dir(model_store() / card.name)


def choose_model(profile: DataProfile, memory_gb: float, budget_minutes: float) -> tuple[str, list[str]]:
    """The largest local catalog model that fits memory and trains an epoch in its budget share."""
    seq_len = int(profile.tokens.get("p95") or 128)
    tokens = profile.train * float(profile.tokens.get("mean") or 64)
    share_s = budget_minutes * 60 * SHARES["classifier"]
    reasons, fitting = [], []
    for card in CATALOG:
        if not locally_present(card):
            continue
        est = estimate(card, "lora", seq_len, 16, measure_peak=True)
        epoch_s = tokens / 1000 * est.seconds_per_1k_tokens
        fits_memory, fits_time = est.total_gb <= memory_gb, epoch_s <= share_s
        reasons.append(f"{card.name}: {est.total_gb:.1f} GB for LoRA at {seq_len} tokens x 16 "
                       f"({'fits' if fits_memory else 'over'} {memory_gb:.0f} GB); ~{epoch_s / 60:.1f} min per epoch "
                       f"of {tokens:,.0f} tokens ({'fits' if fits_time else 'over'} the {share_s / 60:.1f} min share)")
        if fits_memory and fits_time:
            fitting.append(card)
    absent = [c.name for c in CATALOG if not locally_present(c)]
    reasons.append(f"not considered (not on this machine; auto downloads nothing): {len(absent)} catalog models")
    if not fitting:
        reasons.append(f"nothing fits both limits: falling back to the embedded {EMBEDDED}, the smallest")
        return EMBEDDED, reasons
    best = max(fitting, key=lambda c: c.parameters)
    reasons.append(f"chosen: {best.name}, the largest local model that fits (quality grows with size)")
    return best.name, reasons


def run_auto(data, budget_minutes: float, memory_gb: float | None, out_dir, model: str | None = None) -> dict:
    started = time.time()
    deadline = started + budget_minutes * 60
    out_dir = make_dir(out_dir, "--out")
    memory_gb = memory_gb or machine_memory_gb()
    profile, notes = inspect_data(data, out_dir)
    decisions = {"data": notes + [_describe(profile)]}
    if model:
        chosen, decisions["model"] = model, [f"--model {model} given: used as is"]
    else:
        chosen, decisions["model"] = choose_model(profile, memory_gb, budget_minutes)
    decisions["method"] = ["LoRA: on a CPU it trains in minutes what full fine-tuning would in hours, "
                           "with far less memory (no optimizer state for frozen weights)"]
    report = {"data": str(data), "budget_minutes": budget_minutes, "memory_gb": round(memory_gb, 1),
              "profile": asdict(profile), "model": chosen, "decisions": decisions, "results": {}}
    if profile.task == "classification":
        _classification(profile, chosen, budget_minutes, deadline, out_dir, report)
    else:
        _sft(profile, chosen, budget_minutes, deadline, out_dir, report)
    report["wall_minutes"] = round((time.time() - started) / 60, 2)
    write_json_atomic(out_dir / "auto_report.json", report)
    write_text_atomic(out_dir / "report.html", render_html(report))
    return report


def _describe(p: DataProfile) -> str:
    shape = (f"classification: {p.labels} labels, {min(p.label_counts.values())}-{max(p.label_counts.values())} "
             f"training examples per label" if p.task == "classification" else "chat / instruction data (SFT)")
    return (f"{shape}; {p.train} train / {p.validation} validation / {p.test} test records; "
            f"tokens per record mean {p.tokens.get('mean', '?')}, p95 {p.tokens.get('p95', '?')}, "
            f"max {p.tokens.get('max', '?')}")


def _classification(profile, model, budget_minutes, deadline, out_dir, report) -> None:
    paths = profile.paths()
    budget_s = budget_minutes * 60
    report["decisions"]["formulation"] = [
        "labelled data: a classifier head (one forward pass scores all labels; every prediction is a "
        "valid label) and the generative formulation (the label as the answer) are both trained and "
        "scored on the test split: the head on all of it, the generative model (and its base) on as many "
        f"test records, in order, as fit the rest of the budget (at most {GENERATIVE_TEST_SAMPLES})"]
    p95 = int(profile.tokens.get("p95") or 64)
    share_s = budget_s * SHARES["classifier"]
    prior = ClassifierSettings(model=model, max_len=min(256, p95), epochs=100, max_seconds=share_s)
    head_dir = make_dir(out_dir / "classifier", "--out")
    labels = sorted(set(read_split(paths["train"])[1]))
    write_labels(head_dir, labels, prior)
    # The untrained head first: the classifier's base line, and its speed sizes the plan.
    untrained = evaluate_classifier(head_dir, paths["test"], head_dir, untrained=True, settings=prior,
                                    max_samples=UNTRAINED_TEST_SAMPLES)
    epoch_s = TRAIN_COST_PER_SCORED_SAMPLE * profile.train / max(1e-6, untrained["metrics"]["samples_per_s"])
    study_fits, why_study = plan_head_study(share_s, epoch_s)
    learning_rate, share_started = prior.learning_rate, time.time()
    if study_fits:
        study = head_study(paths["train"], paths["validation"], out_dir / "classifier-study", prior,
                           share_s * HEAD_STUDY_SHARE)
        report["results"]["classifier_study"] = study
        learning_rate = study["learning_rate"]
        why_study += (f"; {len(study['trials'])} trials, best learning rate {learning_rate:.2g} "
                      f"(validation accuracy {_pct(study['validation_accuracy'])}; trial 0 was the prior "
                      f"{prior.learning_rate:g})")
    final = with_learning_rate(prior, learning_rate,
                               max_seconds=max(share_s / 4, share_s - (time.time() - share_started)))
    report["decisions"]["hyperparameters"] = [
        f"classifier: LoRA r{final.r} on every linear layer, learning rate {final.learning_rate:.2g} (head "
        f"{final.head_learning_rate:.2g}), batch {final.batch_size} of length-sorted rows, trained for "
        f"{final.max_seconds / 60:.1f} min (of the {share_s / 60:.1f} min share, {SHARES['classifier']:.0%} of "
        "the budget), best checkpoint by validation accuracy; the learning rate warms up for 10 steps, then "
        "decays (cosine, to 10%) over the time, not over the 100 planned epochs it will not reach. The prior "
        f"learning rate {prior.learning_rate:g}: it beat 3e-4 and 3e-3 in the learning-rate study of an earlier "
        "Banking77 run. Sorting rows by length cuts the padding a random batch carries (short queries "
        "padded to the longest)", why_study]
    summary = train_classifier(paths["train"], paths["validation"], head_dir, final)
    tuned = evaluate_classifier(head_dir, paths["test"], head_dir)
    # eval.json in the SPEC's shape, so the exported model's card reports the test scores
    write_json_atomic(head_dir / "eval.json", tuned | {"task": "classification (head)", "gate": None, "baseline": {
        "model": untrained["model"], "metrics": untrained["metrics"]}})
    report["results"]["classifier"] = {"run_dir": str(head_dir), "train": summary, "test": tuned["metrics"],
                                       "test_samples": tuned["n"], "base_test": untrained["metrics"],
                                       "base_test_samples": untrained["n"]}
    generative_s = min(budget_s * SHARES["generative"], max(60.0, deadline - time.time() - 300))
    report["results"]["generative"] = _generative(paths, model, generative_s, deadline, out_dir)
    _pick_winner(report)
    if report["winner"]["formulation"] == "classifier":
        _export_classifier(report, out_dir / CLASSIFIER_EXPORT)


def _export_classifier(report: dict, target: Path) -> None:
    """The winning head, merged into a plain transformers classifier that ``serve`` answers /v1/classify with."""
    record = export_model(report["winner"]["run_dir"], "safetensors", target, overwrite=True)
    report["winner"]["export"] = str(target)
    report["decisions"]["export"] = [
        f"the classifier head was merged into its base and written to {target} (a transformers "
        f"AutoModelForSequenceClassification directory; reload check max |logit difference| "
        f"{record['reload_max_abs_diff']:.1e}); serve it with `tuneloop serve --model NAME={target}` "
        f"and POST /v1/classify"]


def _generative(paths, model, seconds: float, deadline: float, out_dir: Path) -> dict:
    """LoRA SFT on the chat form (user: text, assistant: label) for ``seconds``; scored vs the base."""
    recipe = recipe_from_dict({"name": "generative", "model": model, "method": "lora", "output_dir": str(out_dir),
                               "data": {"train": paths["train"], "validation": paths["validation"]},
                               "train": {"epochs": 1, "eval_every": 25, "save_every": 100_000,
                                         "max_seq_len": 256, "learning_rate": 1e-3},
                               "tracking": {"backend": "none"}})
    end = time.time() + seconds
    run_dir = run_training(recipe, on_evaluate=lambda step, metrics: time.time() >= end)
    summary = json.loads((run_dir / "summary.json").read_text())
    labels = sorted({text_and_label(r)[1] for r in read_jsonl(paths["train"])})
    scoring_s = max(30.0, deadline - time.time() - 60)
    # the tuned model first (the number that matters), then its base on the same records
    tuned = score_generative(str(run_dir), paths["test"], labels, GENERATIVE_TEST_SAMPLES, scoring_s * 0.6)
    base = score_generative(model, paths["test"], labels, tuned["n"], max(15.0, deadline - time.time() - 90))
    write_json_atomic(out_dir / "generative-eval.json", {"tuned": tuned, "base": base})
    return {"run_dir": str(run_dir), "steps": summary["steps"], "train_seconds": summary["train_seconds"],
            "test": tuned["metrics"], "test_samples": tuned["n"], "base_test": base["metrics"],
            "base_test_samples": base["n"], "scoring": "label likelihood over all training labels "
            "(exact most likely label, best-first search over the label tokens), test records in order "
            "until the time ran out"}


def score_generative(reference: str, test_path: str, labels: list[str], max_samples: int, seconds: float) -> dict:
    """Accuracy and macro F1 of a chat model's most likely label (among ``labels``) on the first test
    records, stopping after ``seconds`` (at least one record) or ``max_samples``."""
    import numpy as np
    import torch

    dtype = torch.bfloat16 if bf16_supported() else torch.float32
    model, tokenizer = load_model_and_tokenizer(resolve_model(reference), dtype=dtype)
    started, predicted, truth, passes = time.time(), [], [], 0
    for record in read_jsonl(test_path)[:max_samples]:
        text, label = text_and_label(record)
        best, used = most_likely_labels(model, tokenizer, [[{"role": "user", "content": text}]], labels)
        predicted.append(best[0])
        truth.append(label)
        passes += used
        if time.time() - started >= seconds:
            break
    index = {label: i for i, label in enumerate(labels)}
    scores = classification_scores(np.array([index.get(t, -1) for t in truth]),
                                   np.array([index[p] for p in predicted]), len(labels))
    scores["accuracy"] = sum(p == t for p, t in zip(predicted, truth)) / max(1, len(truth))
    return {"model": reference, "n": len(truth), "metrics": scores, "seconds": round(time.time() - started, 1),
            "forward_passes": passes}


def _pick_winner(report: dict) -> None:
    results = report["results"]
    head = results["classifier"]["test"]["accuracy"]
    generative = results["generative"]["test"].get("accuracy", 0.0)
    winner = "classifier" if head >= generative else "generative"
    report["winner"] = {"formulation": winner, "run_dir": results[winner]["run_dir"],
                        "accuracy": max(head, generative)}
    report["decisions"]["winner"] = [
        f"{winner}: test accuracy {max(head, generative):.1%} vs {min(head, generative):.1%} "
        f"({'classifier head' if winner == 'generative' else 'generative'})"]


def _sft(profile, model, budget_minutes, deadline, out_dir, report) -> None:
    """Chat data: a tune study (learning rate, LoRA r) within the budget; the best trial is the model."""
    paths = profile.paths()
    raw = {"name": "auto", "model": model, "method": "lora", "output_dir": str(out_dir),
           "data": {"train": paths["train"], "validation": paths["validation"]},
           "train": {"epochs": 1, "eval_every": 25, "save_every": 100_000, "max_seq_len": 1024},
           "tracking": {"backend": "none"},
           "search": {"params": {"train.learning_rate": {"distribution": "log_uniform", "low": 5e-5, "high": 2e-3},
                                 "lora.r": {"choices": [8, 16, 32]}}, "startup_trials": 2}}
    recipe = recipe_from_dict(raw)
    minutes = budget_minutes * 0.75
    settings = prepare_settings(recipe, "auto", out_dir / "tune", None, None, minutes, report["memory_gb"])
    summary = run_study(recipe, settings, workers=1, worker_args=[], budget_minutes=minutes)
    report["decisions"]["hyperparameters"] = [
        f"a TPE study with pruning over learning rate and LoRA r for {minutes:.1f} min; "
        f"{summary['trials']} trials; best {summary['best']}"]
    report["results"]["study"] = {k: summary[k] for k in ("trials", "counts", "best")}
    if summary["best"]:
        result = run_eval(summary["best"]["run_dir"], paths["test"], baseline=model,
                          out_dir=out_dir / "eval", max_samples=GENERATIVE_TEST_SAMPLES)
        report["results"]["generative"] = {"run_dir": summary["best"]["run_dir"], "test": result["metrics"],
                                           "base_test": result["baseline"]["metrics"]}
        report["winner"] = {"formulation": "generative", "run_dir": summary["best"]["run_dir"]}


def render_html(report: dict) -> str:
    import html

    decisions = "".join(f"<h3>{html.escape(k)}</h3><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in v) + "</ul>"
                        for k, v in report["decisions"].items())
    rows = ""
    for name, result in report["results"].items():
        if isinstance(result, dict) and "test" in result:
            for side, key in (("tuned", "test"), ("base", "base_test")):
                m = result[key]
                rows += (f"<tr><td>{html.escape(name)}</td><td>{side}</td><td>{_pct(m.get('accuracy'))}</td>"
                         f"<td>{_pct(m.get('f1'))}</td></tr>")
    winner = report.get("winner")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tuneloop auto</title>"
            f"<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}}td,th{{border:1px solid #ccc;"
            f"padding:3px 8px}}table{{border-collapse:collapse}}</style></head><body><h1>tuneloop auto</h1>"
            f"<p>Data <code>{html.escape(report['data'])}</code>, budget {report['budget_minutes']:g} min "
            f"(used {report.get('wall_minutes', '?')}), memory {report['memory_gb']} GB, model "
            f"<code>{html.escape(report['model'])}</code>.</p>"
            f"<p>Winner: <b>{html.escape(json.dumps(winner))}</b></p>"
            f"<h2>Test split scores</h2><table><tr><th>formulation</th><th>model</th><th>accuracy</th>"
            f"<th>macro F1</th></tr>{rows}</table><h2>Why each choice</h2>{decisions}</body></html>")


def _pct(value) -> str:
    return "" if value is None else f"{value:.1%}"
