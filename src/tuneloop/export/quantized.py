"""``--format quantized`` and ``--quantize int4|int8``: the integer model, for CPUs and edge devices.

Both go through :func:`tuneloop.models.quantized.quantize_model` (torchao, int4/int8 weights with int8
dynamic activations by default). ``--format quantized`` uses the scheme a QAT run was trained for (its
recipe's ``quantization_aware``); ``--quantize`` applies post-training quantization to any run or model.
The directory holds ``config.json``, tokenizer and chat template, ``generation_config.json``,
``quantized_model.pt`` (torchao tensors) and ``tuneloop_quantization.json``; tuneloop's ``eval`` and
``serve`` load it through :func:`tuneloop.models.quantized.load_quantized`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.export.merge import ExportCheckFailed, MergedModel, max_abs_diff, probe_batch, probe_logits
from tuneloop.models.quantized import QUANT_FILE, WEIGHTS_FILE, load_quantized, quantize_model, scheme


def scheme_from_run(run_dir) -> dict | None:
    """The ``quantization_aware`` section of a run's resolved recipe, if the run used QAT."""
    import yaml

    path = Path(run_dir) / "recipe.resolved.yaml"
    if not path.is_file():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("quantization_aware")


def write_quantized(merged: MergedModel, out_dir: Path, quantize: str | None = None,
                    group_size: int = 32, **options) -> dict:
    import torch

    if quantize:
        qa, how = scheme(quantize, group_size=group_size), "post-training"
    else:
        found = scheme_from_run(merged.reference)
        if found is None:
            raise UserError(f"{merged.reference} was not trained with quantization_aware",
                            hint="for post-training quantization use --quantize int4 (or int8)")
        qa, how = scheme(**found), "quantization-aware"
    float_logits = _probe(merged)
    model, tokenizer = quantize_model(merged.model, qa), merged.tokenizer
    model.config._name_or_path = ""
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
    (out_dir / QUANT_FILE).write_text(json.dumps(qa.model_dump() | {"trained": how}, indent=2))
    reloaded = load_quantized(out_dir)
    ids, mask = probe_batch(tokenizer)
    diff = max_abs_diff(probe_logits(model, ids, mask), probe_logits(reloaded, ids, mask))
    if diff > 1e-4:
        raise ExportCheckFailed(f"{out_dir}: the reloaded quantized model differs by {diff:.2e}")
    return {"quantization": qa.model_dump(), "trained": how, "reload_max_abs_diff": diff,
            "float_vs_quantized_max_abs_logit_diff": max_abs_diff(float_logits, probe_logits(model, ids, mask))}


def _probe(merged: MergedModel):
    ids, mask = probe_batch(merged.tokenizer)
    return probe_logits(merged.model, ids, mask)
