"""Quantization-aware training (QAT) and the integer model it is trained for, on torchao.

During training every linear layer of the decoder sees its weights (and, with ``activations: int8``,
its inputs) rounded the way the deployed model will round them, with straight-through gradients, so
the fine-tune learns weights that survive quantization. After training, :func:`tuneloop.models.quantized.quantize_model` turns
the float model into the real integer one; post-training quantization (``export --quantize``) is the
same function applied to a model trained without QAT, which is the baseline QAT has to beat.

- ``full``: torchao's ``QATConfig(base, step="prepare")`` swaps each ``nn.Linear`` for a
  fake-quantized one; :func:`strip_fake_quant` swaps them back before saving.
- ``lora``: what gets deployed is the *merged* weight ``W + s * B @ A`` quantized, so the forward pass
  fake-quantizes that sum (not ``W`` alone plus an unquantized adapter, which would train for a model
  that is never served). LoRA dropout is not applied under QAT.

The LM head (tied to the embeddings in the small models) stays in floating point.
"""

from __future__ import annotations

import types

import torch

from tuneloop.models.quantized import base_config, check_group_size, is_decoder_linear


def prepare_full(model, qa) -> None:
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    check_group_size(model, qa)
    quantize_(model, QATConfig(base_config(qa), step="prepare"), filter_fn=is_decoder_linear)


def strip_fake_quant(model) -> None:
    """Swap fake-quantized linears back to plain ones (same weights) so the model saves normally."""
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, FakeQuantizedLinear):
                setattr(module, child_name, child.to_linear())


def _fake_quantizers(qa):
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    weight_dtype = {"int4": torch.int4, "int8": torch.int8}[qa.weights]
    weight = IntxFakeQuantizer(IntxFakeQuantizeConfig(weight_dtype, group_size=qa.group_size, is_symmetric=True))
    if qa.activations == "none":
        return weight, None
    activation = IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int8, granularity="per_token", is_symmetric=False))
    return weight, activation


def _merged_fake_quant_forward(self, x, *args, **kwargs):
    adapter = self.active_adapters[0]
    delta = (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]
    weight = self.base_layer.weight
    merged = self._tuneloop_weight_fq(weight.to(delta.dtype) + delta)
    if self._tuneloop_act_fq is not None:
        x = self._tuneloop_act_fq(x)
    return torch.nn.functional.linear(x, merged.to(x.dtype), self.base_layer.bias)


def prepare_lora(peft_model, qa) -> int:
    """Make every LoRA linear fake-quantize its merged weight; returns how many layers changed."""
    check_group_size(peft_model, qa)
    changed = 0
    for _, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and len(module.lora_A):
            module._tuneloop_weight_fq, module._tuneloop_act_fq = _fake_quantizers(qa)
            module.forward = types.MethodType(_merged_fake_quant_forward, module)
            changed += 1
    return changed


def prepare(model, recipe) -> None:
    """Apply QAT to a model set up for ``recipe`` (no-op without ``quantization_aware``)."""
    qa = recipe.quantization_aware
    if qa is None:
        return
    if recipe.method == "full":
        prepare_full(model, qa)
    else:
        prepare_lora(model, qa)
