"""The integer-model format: quantize a float model with torchao, and the directory that holds one.

One module for both sides of the format, so that ``models`` (which loads such a directory for
``eval`` and ``serve``), ``train.qat`` (which trains for it) and ``export`` (which writes it) all
depend on it and none of them on each other.

A quantized directory is a plain Hugging Face model quantized through transformers'
``TorchAoConfig``: ``config.json`` (with its ``quantization_config``), ``model.safetensors`` (torchao
tensors flattened into safetensors: data only), tokenizer and chat template, ``generation_config.json``
and ``tuneloop_quantization.json`` (the scheme). ``AutoModelForCausalLM.from_pretrained`` loads it.
Decoder linears are quantized (int4/int8 weights, per-group, with int8 dynamic activations by
default); the LM head, tied to the embeddings in the small models, stays in floating point.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.config.recipe import QuantizationAwareConfig
from tuneloop.errors import UserError

QUANT_FILE = "tuneloop_quantization.json"
LEGACY_PICKLE = "quantized_model.pt"  # the pickle format before 2026-12-02; refused, see load_quantized


def scheme(weights: str = "int4", activations: str = "int8", group_size: int = 32) -> QuantizationAwareConfig:
    return QuantizationAwareConfig(weights=weights, activations=activations, group_size=group_size)


def base_config(qa):
    """The torchao post-training config that the deployed model uses (CPU-friendly kernels)."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    dtype = {"int4": torch.int4, "int8": torch.int8}[qa.weights]
    if qa.activations == "int8":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=PerGroup(qa.group_size))
    return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerGroup(qa.group_size))


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


def quantize_model(model, qa):
    """The real integer model: decoder linears quantized with torchao (in place; returns the model)."""
    from torchao.quantization import quantize_

    check_group_size(model, qa)
    quantize_(model, base_config(qa), filter_fn=is_decoder_linear)
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
