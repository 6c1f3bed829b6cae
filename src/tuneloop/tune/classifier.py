"""A sequence-classification head on the LM: LoRA on the decoder plus a linear head, trained as a classifier.

For labelled data this beats generating the label's name: one forward pass scores every class, the
loss is plain cross-entropy over the classes, and a prediction is always a valid label. The head
reads the last real token's hidden state (transformers' ``*ForSequenceClassification``), the input
is the query text alone (no chat template: shorter rows, same signal).

    run_dir/ adapter/ (LoRA + head, PEFT format)  labels.json  metrics.jsonl  summary.json
             eval.json  predictions.jsonl

``train_classifier`` stops at ``max_seconds`` if given (the budget), keeping the best checkpoint by
validation accuracy; ``load_classifier`` loads it back (:mod:`tuneloop.models.classifier`: the run or its export);
``tuneloop export RUN_DIR`` merges it into a plain transformers classifier that ``serve`` answers
``POST /v1/classify`` with.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.evaluate.metrics import classification_scores
from tuneloop.models.classifier import load_classifier as load_any_classifier
from tuneloop.models.estimate import bf16_supported
from tuneloop.models.loading import load_tokenizer, resolve_model
from tuneloop.paths import make_dir, read_jsonl, write_json_atomic, write_jsonl_atomic


@dataclass
class ClassifierSettings:
    model: str = "smollm2-135m-instruct"
    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    learning_rate: float = 1e-3  # the best of 3e-4, 1e-3, 3e-3 on Banking77 (benchmarks/results/tune_auto_banking77.json)
    head_learning_rate: float = 3e-3  # the head starts from random: it may move faster than LoRA
    batch_size: int = 16
    epochs: float = 3
    max_len: int = 64
    eval_every: int = 60
    bucket_batches: int = 8  # batches drawn together and sorted by length (:func:`length_bucketed_batches`)
    seed: int = 0
    max_seconds: float | None = None
    max_steps: int | None = None
    extra: dict = field(default_factory=dict)


def text_and_label(record: dict) -> tuple[str, str]:
    """A prepared classification record (chat shape + label) -> (the user's text, its label)."""
    if "label" not in record:
        raise UserError(f"{record.get('source', 'record')}: no label", hint="prepare with --task classification")
    if "text" in record:
        return str(record["text"]), str(record["label"])
    users = [m["content"] for m in record.get("messages", []) if m["role"] == "user"]
    return (users[-1] if users else ""), str(record["label"])


def read_split(path: str | Path) -> tuple[list[str], list[str]]:
    pairs = [text_and_label(r) for r in read_jsonl(path)]
    return [t for t, _ in pairs], [label for _, label in pairs]


def _encode(tokenizer, texts: list[str], max_len: int):
    return tokenizer(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")


def build_model(settings: ClassifierSettings, labels: list[str]):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    resolved = resolve_model(settings.model)
    tokenizer = load_tokenizer(resolved)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolved.path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    config = LoraConfig(task_type="SEQ_CLS", r=settings.r, lora_alpha=settings.alpha,
                        lora_dropout=settings.dropout, target_modules="all-linear")
    return get_peft_model(model, config), tokenizer


def _optimizer(model, settings: ClassifierSettings):
    import torch

    head = [p for n, p in model.named_parameters() if p.requires_grad and "score" in n]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "score" not in n]
    return torch.optim.AdamW([{"params": lora, "lr": settings.learning_rate},
                              {"params": head, "lr": settings.head_learning_rate}], weight_decay=0.0)


def _set_threads() -> None:
    """TUNELOOP_NUM_THREADS if set (one thread beats two on a crowded machine), else torch's default."""
    import os

    import torch

    if os.environ.get("TUNELOOP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["TUNELOOP_NUM_THREADS"]))


def _autocast():
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_supported())


def length_bucketed_batches(lengths: list[int], batch_size: int, seed: int, bucket_batches: int = 8) -> list[list[int]]:
    """One epoch of shuffled batches whose rows have similar lengths, in shuffled order.

    A batch is padded to its longest row: Banking77 queries are 14 tokens on average but up to 91,
    so a random batch of 16 is mostly padding (padded to ~40). Drawing ``bucket_batches`` batches'
    worth of rows at random and sorting those by length keeps the randomness and drops most padding.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * max(1, bucket_batches)
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def predict_ids(model, tokenizer, texts: list[str], max_len: int, batch_size: int = 64) -> list[int]:
    """The predicted class index per text, in order (batched by length: little padding)."""
    import torch

    was_training = model.training
    model.eval()
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = [0] * len(texts)
    with torch.no_grad(), _autocast():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = _encode(tokenizer, [texts[i] for i in rows], max_len)
            for i, label in zip(rows, model(**batch).logits.argmax(-1).tolist()):
                out[i] = label
    model.train(was_training)
    return out


def accuracy(predicted: list[int], truth: list[int]) -> float:
    return sum(p == t for p, t in zip(predicted, truth)) / max(1, len(truth))


def train_classifier(train_path, validation_path, run_dir, settings: ClassifierSettings,
                     on_evaluate=None) -> dict:
    """Train the head; returns the summary (best validation accuracy, steps, seconds)."""
    import torch
    from tqdm.auto import tqdm

    started = time.time()
    texts, names = read_split(train_path)
    val_texts, val_names = read_split(validation_path)
    labels = sorted(set(names))
    unknown = sorted(set(val_names) - set(labels))
    if unknown:
        raise UserError(f"{validation_path}: labels not in the training split: {', '.join(unknown[:5])}",
                        hint="prepare the data with `tuneloop data prepare --task classification` (stratified)")
    index = {label: i for i, label in enumerate(labels)}
    y, val_y = [index[n] for n in names], [index[n] for n in val_names]
    torch.manual_seed(settings.seed)
    _set_threads()
    model, tokenizer = build_model(settings, labels)
    optimizer = _optimizer(model, settings)
    steps_per_epoch = math.ceil(len(texts) / settings.batch_size)
    total = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    run_dir = make_dir(run_dir, "classifier run directory")
    metrics, best, step = [], {"accuracy": -1.0, "step": 0}, 0
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=settings.max_len)["input_ids"]]
    batches: list[list[int]] = []
    bar = tqdm(total=total, desc="train classifier", unit="step", dynamic_ncols=True)
    model.train()
    stop = False
    while step < total and not stop:
        if not batches:
            batches = length_bucketed_batches(lengths, settings.batch_size, settings.seed + step,
                                              settings.bucket_batches)
        batch_ids = batches.pop()
        elapsed = time.time() - started
        lr_scale = lr_scale_at(step, training_progress(step, total, elapsed, settings.max_seconds))
        for group, base in zip(optimizer.param_groups, (settings.learning_rate, settings.head_learning_rate)):
            group["lr"] = base * lr_scale
        batch = _encode(tokenizer, [texts[i] for i in batch_ids], settings.max_len)
        with _autocast():
            loss = model(**batch, labels=torch.tensor([y[i] for i in batch_ids])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = {"step": step, "loss": round(float(loss.detach()), 5)}
        out_of_time = settings.max_seconds is not None and time.time() - started >= settings.max_seconds
        if step % settings.eval_every == 0 or step == total or out_of_time:
            record["validation_accuracy"] = accuracy(predict_ids(model, tokenizer, val_texts, settings.max_len), val_y)
            if record["validation_accuracy"] > best["accuracy"]:
                best = {"accuracy": record["validation_accuracy"], "step": step}
                model.save_pretrained(run_dir / "adapter")
            stop = bool(on_evaluate and on_evaluate(step, record)) or out_of_time
        metrics.append(record)
        bar.update(1)
        bar.set_postfix({k: v for k, v in record.items() if k != "step"}, refresh=False)
    bar.close()
    tokenizer.save_pretrained(run_dir / "adapter")
    write_labels(run_dir, labels, settings)
    write_jsonl_atomic(run_dir / "metrics.jsonl", metrics)
    summary = {"best_validation_accuracy": best["accuracy"], "best_step": best["step"], "steps": step,
               "planned_steps": total, "epochs_done": round(step / steps_per_epoch, 3),
               "seconds": round(time.time() - started, 1), "labels": len(labels),
               "train_examples": len(texts), "settings": asdict(settings)}
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def write_labels(run_dir, labels: list[str], settings: ClassifierSettings) -> None:
    """``labels.json`` of a classifier run: what loading (and an untrained-head baseline) needs."""
    write_json_atomic(Path(run_dir) / "labels.json", {"labels": labels, "base_model": settings.model,
                                                      "max_len": settings.max_len})


def with_learning_rate(settings: ClassifierSettings, learning_rate: float, **changes) -> ClassifierSettings:
    """``settings`` at another LoRA learning rate, the head's scaled with it (same ratio)."""
    ratio = settings.head_learning_rate / settings.learning_rate
    return ClassifierSettings(**(asdict(settings) | {"learning_rate": learning_rate,
                                                     "head_learning_rate": learning_rate * ratio} | changes))


def training_progress(step: int, total: int, elapsed_s: float, max_seconds: float | None) -> float:
    """How far training is, 0 to 1: by steps, or by time when a time budget will end it sooner.

    ``auto`` plans 100 epochs and stops at its time share: a schedule over the planned steps would
    never leave its peak learning rate; over the time it decays to the end of the share.
    """
    by_steps = step / max(1, total)
    return min(1.0, max(by_steps, elapsed_s / max_seconds if max_seconds else 0.0))


def lr_scale_at(step: int, progress: float, warmup: int = 10) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to 10% over ``progress``: the random
    head needs a few gentle steps first."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def load_classifier(run_dir: str | Path):
    """(model, tokenizer, labels, max_len) of a trained classifier run directory or its export."""
    loaded = load_any_classifier(run_dir)
    return loaded.model, loaded.tokenizer, loaded.labels, loaded.max_len


def evaluate_classifier(run_dir, test_path, out_dir=None, untrained: bool = False,
                        settings: ClassifierSettings | None = None, max_samples: int | None = None) -> dict:
    """Accuracy and macro F1 on ``test_path`` (the SPEC metric names); ``predictions.jsonl`` beside.

    ``untrained``: the same architecture before training (random head), the classifier's base line.
    ``max_samples``: only the first that many records.
    """
    import numpy as np

    texts, names = read_split(test_path)
    texts, names = texts[:max_samples], names[:max_samples]
    if untrained:
        train_labels = json.loads((Path(run_dir) / "labels.json").read_text())["labels"]
        model, tokenizer = build_model(settings or ClassifierSettings(), train_labels)
        labels, max_len = train_labels, (settings or ClassifierSettings()).max_len
    else:
        model, tokenizer, labels, max_len = load_classifier(run_dir)
    index = {label: i for i, label in enumerate(labels)}
    truth = [index.get(n, -1) for n in names]
    started = time.perf_counter()
    predicted = predict_ids(model, tokenizer, texts, max_len)
    seconds = time.perf_counter() - started
    known = [i for i, t in enumerate(truth) if t >= 0]  # a test label never trained counts as wrong
    scores = classification_scores(np.array([truth[i] for i in known]), np.array([predicted[i] for i in known]),
                                   len(labels))
    scores["accuracy"] = sum(predicted[i] == truth[i] for i in known) / max(1, len(truth))
    result = {"model": str(run_dir) + (" (untrained head)" if untrained else ""), "data": str(test_path),
              "n": len(texts), "metrics": scores | {"samples_per_s": round(len(texts) / seconds, 1)}}
    if out_dir is not None:
        out_dir = make_dir(out_dir, "--out")
        name = "predictions.untrained.jsonl" if untrained else "predictions.jsonl"
        write_jsonl_atomic(Path(out_dir) / name, [
            {"text": t, "label": n, "prediction": labels[p], "correct": labels[p] == n}
            for t, n, p in zip(texts, names, predicted)])
    return result


# The head's learning-rate study (``auto`` runs it when the budget affords it, see plan_head_study).
HEAD_STUDY_TRIALS = 4  # trial 0 is the prior (ClassifierSettings.learning_rate)
HEAD_STUDY_SHARE = 0.4  # of the classifier's time; the rest trains the winner
HEAD_STUDY_MIN_EPOCHS = 5.0  # the share must hold this many epochs: 3 for the final run, 0.5 a trial


def plan_head_study(share_s: float, epoch_s: float) -> tuple[bool, str]:
    """Whether the classifier's time share affords a learning-rate study, and why (for the report)."""
    needed = HEAD_STUDY_MIN_EPOCHS * epoch_s
    if share_s >= needed:
        return True, (f"a learning-rate study of {HEAD_STUDY_TRIALS} trials ({HEAD_STUDY_SHARE:.0%} of the "
                      f"{share_s / 60:.1f} min share, ~{epoch_s / 60:.1f} min an epoch): the share holds "
                      f"{share_s / epoch_s:.1f} epochs, at least {HEAD_STUDY_MIN_EPOCHS:g} needed")
    return False, (f"no learning-rate study: the {share_s / 60:.1f} min share holds {share_s / epoch_s:.1f} "
                   f"epochs at ~{epoch_s / 60:.1f} min an epoch, and a study needs {HEAD_STUDY_MIN_EPOCHS:g} "
                   f"(a budget of ~{needed / share_s:.1f}x this one); the whole share trains one run "
                   f"at the prior learning rate")


def head_study(train_path, validation_path, out_dir, base: ClassifierSettings, seconds: float) -> dict:
    """An Optuna study of the head's learning rate (LoRA's; the head's is 3x) within ``seconds``.

    TPE (seeded) with the median pruner on validation accuracy; trial 0 is the prior, so the best
    is never worse on validation than the default. Each trial trains for ``seconds`` / trials.
    Returns ``{"learning_rate", "validation_accuracy", "trials": [...]}``.
    """
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir = make_dir(out_dir, "classifier study directory")
    study = optuna.create_study(  # in memory: the trials' run directories and the returned list are the record
        direction="maximize", sampler=optuna.samplers.TPESampler(n_startup_trials=2, seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    study.enqueue_trial({"learning_rate": base.learning_rate})
    trial_s = seconds / HEAD_STUDY_TRIALS
    texts, _ = read_split(train_path)
    steps_per_trial_guess = max(8, math.ceil(len(texts) / base.batch_size / 2))

    def objective(trial):
        lr = trial.suggest_float("learning_rate", base.learning_rate / 5, base.learning_rate * 5, log=True)
        settings = with_learning_rate(base, lr, max_seconds=trial_s, eval_every=max(4, steps_per_trial_guess // 4))

        def on_evaluate(step, record):
            trial.report(record["validation_accuracy"], step)
            return trial.should_prune()

        summary = train_classifier(train_path, validation_path, out_dir / f"trial-{trial.number}", settings,
                                   on_evaluate=on_evaluate)
        trial.set_user_attr("steps", summary["steps"])
        if trial.should_prune():
            raise optuna.TrialPruned()
        return summary["best_validation_accuracy"]

    study.optimize(objective, n_trials=HEAD_STUDY_TRIALS, timeout=seconds)
    trials = [{"number": t.number, "state": t.state.name, "learning_rate": t.params.get("learning_rate"),
               "validation_accuracy": t.value, "steps": t.user_attrs.get("steps")} for t in study.trials]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value) if done else None
    return {"learning_rate": best.params["learning_rate"] if best else base.learning_rate,
            "validation_accuracy": best.value if best else None, "trials": trials}
