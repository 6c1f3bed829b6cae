"""Sequence classifiers on disk: what a classifier is, how it loads, and its class probabilities.

Two layouts hold one (both written by tuneloop):

- a classifier *run* (``tuneloop auto`` / :func:`tuneloop.tune.classifier.train_classifier`):
  ``adapter/`` (LoRA + head, PEFT format) and ``labels.json`` (labels, base model, max_len);
- its *export* (``tuneloop export RUN_DIR``): a plain Hugging Face directory of a merged
  ``*ForSequenceClassification`` model, ``id2label``/``label2id`` in ``config.json``, the tokenizer, and
  ``tuneloop_classifier.json`` (labels, max_len). Plain transformers loads it:
  ``AutoModelForSequenceClassification.from_pretrained(DIR)``.

:func:`load_classifier` loads either; :func:`class_probabilities` scores texts the way training
evaluated them (the query text alone, truncated to the training ``max_len``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.models.loading import ResolvedModel, cannot_load, load_tokenizer, resolve_model

RUN_LABELS = "labels.json"
EXPORT_INFO = "tuneloop_classifier.json"


@dataclass
class LoadedClassifier:
    model: object  # a transformers *ForSequenceClassification (or its PeftModel), eval mode, float32
    tokenizer: object
    labels: list[str]  # index -> label, the head's output order
    max_len: int  # inputs are truncated to this many tokens, as in training and evaluation


def is_classifier_run(path: str | Path) -> bool:
    path = Path(path)
    return (path / RUN_LABELS).is_file() and (path / "adapter" / "adapter_config.json").is_file()


def is_classifier_export(path: str | Path) -> bool:
    """A Hugging Face directory whose architecture is a sequence classifier."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def is_classifier(path: str | Path) -> bool:
    return is_classifier_run(path) or is_classifier_export(path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"not valid JSON ({e})", where=str(path),
                        hint="restore the file, or re-run `tuneloop auto` / `tuneloop export`") from None


def _base_classifier(resolved_path: Path, labels: list[str]):
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(
            resolved_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise cannot_load(resolved_path, "classifier's base model", e) from None


def load_classifier_run(run_dir: str | Path, merge: bool = False) -> LoadedClassifier:
    """The run's LoRA + head on its base (merged into one plain model when ``merge``)."""
    from peft import PeftModel

    run_dir = Path(run_dir)
    if not is_classifier_run(run_dir):
        raise UserError(f"{run_dir} is not a classifier run (no {RUN_LABELS} and adapter/)",
                        hint="train one with `tuneloop auto` on classification data")
    info = _read_json(run_dir / RUN_LABELS)
    labels = [str(label) for label in info["labels"]]
    resolved = resolve_model(info["base_model"])
    tokenizer = load_tokenizer(resolved)
    base = _base_classifier(resolved.path, labels)
    base.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return LoadedClassifier(model, tokenizer, labels, int(info["max_len"]))


def load_classifier_export(path: str | Path) -> LoadedClassifier:
    import torch
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise cannot_load(path, "classifier", e) from None
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    labels = [id2label[i] for i in range(len(id2label))]
    info = _read_json(path / EXPORT_INFO) if (path / EXPORT_INFO).is_file() else {}
    context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    tokenizer = load_tokenizer(ResolvedModel(str(path), path))
    pad = getattr(model.config, "pad_token_id", None)
    if pad is not None and tokenizer.pad_token_id != pad:
        # The head reads the last token that is not config.pad_token_id: padding must use that id.
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    model.eval()
    return LoadedClassifier(model, tokenizer, labels, int(info.get("max_len") or context))


def load_classifier(path: str | Path) -> LoadedClassifier:
    """A classifier run or export directory, loaded (a run's adapter stays unmerged)."""
    if is_classifier_export(path):
        return load_classifier_export(path)
    return load_classifier_run(path)


def encode(tokenizer, texts: list[str], max_len: int):
    return tokenizer(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")


def classifier_logits(model, tokenizer, texts: list[str], max_len: int):
    """Float32 logits, one row per text (no autocast: the same numbers on every machine)."""
    import torch

    with torch.inference_mode():
        return model(**encode(tokenizer, texts, max_len)).logits.float()


def class_probabilities(classifier: LoadedClassifier, texts: list[str]) -> list[list[float]]:
    """Softmax over the labels for each text, in label order."""
    logits = classifier_logits(classifier.model, classifier.tokenizer, texts, classifier.max_len)
    return logits.softmax(-1).tolist()


def token_counts(tokenizer, texts: list[str], max_len: int) -> list[tuple[int, bool]]:
    """(tokens the model reads, whether the text was truncated to ``max_len``) per text."""
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    return [(min(n, max_len), n > max_len) for n in lengths]
