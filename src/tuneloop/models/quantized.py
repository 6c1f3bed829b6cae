"""The integer-model format: quantize a float model with torchao, and the directory that holds one.

One module for both sides of the format, so that ``models`` (which loads such a directory for
``eval`` and ``serve``), ``train.qat`` (which trains for it) and ``export`` (which writes it) all
depend on it and none of them on each other.

A quantized directory is a plain Hugging Face model quantized through transformers'
``TorchAoConfig``: ``config.json`` (with its ``quantization_config``), ``model.safetensors`` (torchao
tensors flattened into safetensors: data only), tokenizer and chat template, ``generation_config.json``
and ``tuneloop_quantization.json`` (the scheme). ``AutoModelForCausalLM.from_pretrained`` loads it.
Decoder linears are quantized (int4/int8 weights, per-group, with int8 dynamic activations by
default). An export also quantizes the embedding table (int8, one scale per row, weight-only) and
stores the decoder's scales in bfloat16 (:data:`EXPORT_SCALE_DTYPE`): in SmolLM2-135M the tied
49152x576 table is a fifth of the weights, and torchao's CPU layout keeps int4 values unpacked in
int8, so without both the export stays above 150 MB. A tied LM head keeps sharing the quantized
table (one copy on disk; the per-row scales are per output channel of the head); an untied head
gets the same int8 per-row scheme. QAT trains the decoder linears only, with float32 scales.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.config.recipe import QuantizationAwareConfig
from tuneloop.errors import UserError

QUANT_FILE = "tuneloop_quantization.json"
LEGACY_PICKLE = "quantized_model.pt"  # the pickle format before 2026-12-02; refused, see load_quantized


def scheme(weights: str = "int4", activations: str = "int8", group_size: int = 32) -> QuantizationAwareConfig:
    return QuantizationAwareConfig(weights=weights, activations=activations, group_size=group_size)


EXPORT_SCALE_DTYPE = "bfloat16"  # decoder scales on disk: 2 bytes per group instead of 4


def base_config(qa, scale_dtype: str | None = None):
    """The torchao post-training config for the decoder linears (CPU-friendly kernels).

    ``scale_dtype`` None keeps the weights' dtype for the per-group scales (what QAT trains with).
    """
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    dtype = {"int4": torch.int4, "int8": torch.int8}[qa.weights]
    scales = getattr(torch, scale_dtype) if scale_dtype else None
    if qa.activations == "int8":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=PerGroup(qa.group_size),
                                                     weight_scale_dtype=scales)
    return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerGroup(qa.group_size), scale_dtype=scales)


def embedding_config():
    """int8, one scale per row, weight-only: a row is a token's embedding and, for a tied LM head,
    the weights of one output logit, so the same scales serve the lookup and the head's matmul."""
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis

    return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))


def embedding_module_names(model) -> tuple[list[str], list[str]]:
    """Module names of the input embeddings and of an untied LM head (empty when tied or absent)."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    tied = outputs is not None and outputs.weight is inputs.weight
    names = {id(m): name for name, m in model.named_modules()}
    return [names[id(inputs)]], [] if tied or outputs is None else [names[id(outputs)]]


def is_decoder_linear(module, name: str) -> bool:
    import torch

    # Adapter matrices (lora_A/lora_B) are not deployed as such: they are merged into the base first.
    return isinstance(module, torch.nn.Linear) and not name.endswith("lm_head") and ".lora_" not in name


def check_group_size(model, qa) -> None:
    for name, module in model.named_modules():
        if is_decoder_linear(module, name) and module.in_features % qa.group_size:
            raise UserError(f"quantization_aware.group_size: {qa.group_size} does not divide the input "
                            f"size {module.in_features} of {name}",
                            hint="use a power of two such as 32 that divides the model's hidden sizes")


def quantize_model(model, qa, embeddings: bool = False, scale_dtype: str | None = None):
    """The real integer model: decoder linears quantized with torchao (in place; returns the model).

    ``embeddings`` also quantizes the embedding table (and an untied LM head) with
    :func:`embedding_config`, as an export does; a tied head is re-pointed at the quantized table.
    """
    from torchao.quantization import quantize_

    check_group_size(model, qa)
    quantize_(model, base_config(qa, scale_dtype), filter_fn=is_decoder_linear)
    if embeddings:
        inputs, heads = embedding_module_names(model)
        tied = not heads and model.get_output_embeddings() is not None
        quantize_(model, embedding_config(), filter_fn=lambda module, name: name in inputs + heads)
        if tied:
            model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model


def is_quantized_dir(path: Path) -> bool:
    return (Path(path) / QUANT_FILE).is_file()


def load_quantized(path: Path):
    """The quantized model, by plain transformers; the old pickle format is refused, never unpickled."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / LEGACY_PICKLE).is_file() and not (path / "model.safetensors").is_file():
        raise UserError(f"{path / LEGACY_PICKLE} is a pickle (tuneloop's earlier quantized format); "
                        "opening a pickle can run any code it names, so tuneloop does not load it",
                        where=str(path), hint="re-export the model from its run: tuneloop export RUN_DIR "
                        "--format quantized (or --quantize int4) --out DIR writes safetensors")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"cannot load the quantized model: {first}", where=str(path),
                        hint="re-export it with `tuneloop export RUN_DIR --format quantized --out DIR`") from None
    return model.eval()
