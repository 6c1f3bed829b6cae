"""Export a classifier run (LoRA + linear head) as one plain transformers sequence classifier.

The run's adapter is merged into a freshly loaded float32 base, the merged model's logits are
compared with the adapter model's on probe texts, and the result is written as a Hugging Face
directory (``model.safetensors``, ``config.json`` with ``id2label``/``label2id``, the tokenizer) plus
``tuneloop_classifier.json`` (labels, the training max_len that inputs are truncated to). It is then
loaded back with plain ``AutoModelForSequenceClassification`` and compared again. ``export_model``
(``export/__init__.py``) writes into a temporary directory and renames it, so a failure leaves nothing.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.export.merge import MERGE_TOLERANCE, ExportCheckFailed, max_abs_diff
from tuneloop.export.hf_dir import RELOAD_TOLERANCE
from tuneloop.models.classifier import (EXPORT_INFO, RUN_LABELS, LoadedClassifier, classifier_logits,
                                        load_classifier_run)
from tuneloop.paths import write_json_atomic

# Texts of different lengths (so padding is exercised); any would do.
PROBE_TEXTS = ("when will my card arrive", "hello", "I was charged twice for the same purchase yesterday, why?")


def merge_classifier(run_dir: str | Path) -> tuple[LoadedClassifier, float]:
    """The run's merged classifier and the max |logit difference| merged vs adapter model."""
    loaded = load_classifier_run(run_dir)
    before = classifier_logits(loaded.model, loaded.tokenizer, list(PROBE_TEXTS), loaded.max_len)
    loaded.model = loaded.model.merge_and_unload()
    loaded.model.eval()
    diff = max_abs_diff(before, classifier_logits(loaded.model, loaded.tokenizer, list(PROBE_TEXTS), loaded.max_len))
    if not diff <= MERGE_TOLERANCE:  # written this way so that NaN fails too
        raise UserError(f"merged classifier drifts from the adapter model: max |logit difference| {diff:.2e}",
                        where=str(run_dir), hint=f"check the base model named in {RUN_LABELS}")
    return loaded, diff


def write_classifier_dir(loaded: LoadedClassifier, out_dir: Path, base_model: str) -> dict:
    """Save the merged classifier into ``out_dir``; returns what the reload check measured."""
    model, tokenizer = loaded.model, loaded.tokenizer
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config._name_or_path = ""  # the export stands alone
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    write_json_atomic(out_dir / EXPORT_INFO, {"labels": loaded.labels, "max_len": loaded.max_len,
                                              "base_model": base_model})
    return check_classifier_reload(loaded, out_dir)


def check_classifier_reload(loaded: LoadedClassifier, out_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = list(PROBE_TEXTS)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    same_ids = loaded.tokenizer(texts)["input_ids"] == reloaded_tokenizer(texts)["input_ids"]
    if not same_ids or reloaded_tokenizer.pad_token_id != loaded.tokenizer.pad_token_id:
        raise ExportCheckFailed(f"{out_dir}: the exported tokenizer encodes the probe texts differently")
    reloaded = AutoModelForSequenceClassification.from_pretrained(out_dir, dtype=torch.float32).eval()
    labels = [reloaded.config.id2label[i] for i in range(reloaded.config.num_labels)]
    if labels != loaded.labels:
        raise ExportCheckFailed(f"{out_dir}: config.json's id2label {labels[:5]} differs from the run's labels")
    diff = max_abs_diff(classifier_logits(loaded.model, loaded.tokenizer, texts, loaded.max_len),
                        classifier_logits(reloaded, reloaded_tokenizer, texts, loaded.max_len))
    if not diff <= RELOAD_TOLERANCE:
        raise ExportCheckFailed(f"{out_dir}: the exported classifier's logits differ by {diff:.2e}")
    return {"task": "classification", "labels": len(labels), "reload_max_abs_diff": diff}
