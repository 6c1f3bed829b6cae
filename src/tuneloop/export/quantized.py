"""``--format quantized`` and ``--quantize int4|int8``: the integer model, for CPUs and edge devices.

Both use the torchao scheme of :func:`tuneloop.models.quantized.base_config` (int4/int8 weights with
int8 dynamic activations by default) for the decoder linears. ``--format quantized`` uses the scheme a
QAT run was trained for (its recipe's ``quantization_aware``); ``--quantize`` applies post-training
quantization to any run or model. Either way the export also stores the embedding table as int8 (one
scale per row; a tied LM head shares it and is saved once) and the decoder's scales in bfloat16: that
is what brings SmolLM2-135M under 150 MB, since torchao's CPU layout stores int4 values one per byte
(its packed int4 layouts are CUDA/XPU kernels). int4 and int8 exports are therefore the same size on
disk; int4 is the coarser rounding.

The directory is a plain Hugging Face model quantized through transformers' ``TorchAoConfig``:
``config.json`` (with its ``quantization_config``), ``model.safetensors`` (torchao tensors flattened
into safetensors: data only, nothing executable), tokenizer, chat template, ``generation_config.json``
and ``tuneloop_quantization.json`` (the scheme, for tuneloop's records). Plain
``AutoModelForCausalLM.from_pretrained(DIR)`` loads it (torchao installed), and so do ``eval`` and
``serve`` (through :func:`tuneloop.models.quantized.load_quantized`, which refuses the earlier pickle
format, ``quantized_model.pt``, instead of unpickling it: opening a pickle runs whatever code it names).
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.export.merge import ExportCheckFailed, MergedModel, max_abs_diff, probe_batch, probe_logits
from tuneloop.models.quantized import (EXPORT_SCALE_DTYPE, QUANT_FILE, base_config, embedding_config,
                                       embedding_module_names, load_quantized, quantize_model, scheme)
from tuneloop.paths import write_json_atomic


def scheme_from_run(run_dir) -> dict | None:
    """The ``quantization_aware`` section of a run's resolved recipe, if the run used QAT."""
    import yaml

    path = Path(run_dir) / "recipe.resolved.yaml"
    if not path.is_file():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("quantization_aware")


def write_quantized(merged: MergedModel, out_dir: Path, quantize: str | None = None,
                    group_size: int = 32, **options) -> dict:
    import shutil

    if quantize:
        qa, how = scheme(quantize, group_size=group_size), "post-training"
    else:
        found = scheme_from_run(merged.reference)
        if found is None:
            raise UserError(f"{merged.reference} was not trained with quantization_aware",
                            hint="for post-training quantization use --quantize int4 (or int8)")
        qa, how = scheme(**found), "quantization-aware"
    float_logits = _probe(merged)
    tokenizer = merged.tokenizer
    # transformers quantizes while loading (TorchAoConfig), and only a model it quantized saves with
    # its quantization_config; so the float model goes through a scratch directory once.
    scratch = out_dir / ".float.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    merged.model.config.pad_token_id = tokenizer.pad_token_id
    merged.model.save_pretrained(scratch, safe_serialization=True)
    embeddings = embedding_module_names(merged.model)
    # the scheme as tuneloop applies it (QAT's decoder arithmetic, plus int8 embeddings and bf16 scales)
    reference = quantize_model(merged.model, qa, embeddings=True, scale_dtype=EXPORT_SCALE_DTYPE)
    try:
        model = _load_with_torchao(scratch, qa, embeddings)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model.config._name_or_path = ""
    _save_without_tied_head(model, out_dir)
    tokenizer.save_pretrained(out_dir)
    stored = qa.model_dump() | {"embeddings": "int8", "scale_dtype": EXPORT_SCALE_DTYPE}
    write_json_atomic(out_dir / QUANT_FILE, stored | {"trained": how})
    reloaded = load_quantized(out_dir)
    ids, mask = probe_batch(tokenizer)
    quantized_logits = probe_logits(reference, ids, mask)
    diff = max_abs_diff(quantized_logits, probe_logits(reloaded, ids, mask))
    if diff > 1e-4:
        raise ExportCheckFailed(f"{out_dir}: the reloaded quantized model differs by {diff:.2e}")
    return {"quantization": stored, "trained": how, "reload_max_abs_diff": diff,
            "float_vs_quantized_max_abs_logit_diff": max_abs_diff(float_logits, quantized_logits)}


def _load_with_torchao(path: Path, qa, embeddings: tuple[list[str], list[str]]):
    """Quantize while loading: decoder linears by the scheme, embeddings (and an untied head) int8."""
    import torch
    from torchao.quantization import FqnToConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    inputs, heads = embeddings
    by_name = {name: embedding_config() for name in inputs + heads}
    by_name["_default"] = base_config(qa, EXPORT_SCALE_DTYPE)
    # include_input_output_embeddings makes transformers consider nn.Embedding at all; a tied head is
    # not in the checkpoint, so it is not quantized twice but tied to the quantized table after loading
    config = TorchAoConfig(FqnToConfig(by_name), include_input_output_embeddings=True)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=torch.float32)


def _save_without_tied_head(model, out_dir: Path) -> None:
    """Save with a tied LM head left out: transformers drops a tied copy only for plain tensors, so the
    flattened torchao tensors of the head would be written twice (28 MB for SmolLM2), and loading
    then refuses the tie (it compares the two copies with an op torchao's tensors lack)."""
    head, table = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and head.weight is table.weight
    if tied:
        head.weight = None  # a parameter set to None is left out of state_dict()
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        if tied:
            head.weight = table.weight


def _probe(merged: MergedModel):
    ids, mask = probe_batch(merged.tokenizer)
    return probe_logits(merged.model, ids, mask)

