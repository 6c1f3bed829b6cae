"""Model set-up per training method: which weights train, in which dtype, on which device.

``full`` trains every weight (fp32 master weights). ``lora`` and ``dora`` add PEFT adapters (fp32)
on a frozen base, which is stored in bf16 when the run computes in bf16 (half the memory, and the
autocast would cast it to bf16 anyway). ``qlora`` loads the base in 4-bit NF4 through bitsandbytes,
which needs a CUDA GPU. Preference methods reuse :func:`setup_model` with their own loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tuneloop.config.recipe import ADAPTER_METHODS
from tuneloop.errors import UserError, did_you_mean
from tuneloop.models.estimate import bf16_supported
from tuneloop.train.dropout import use_fast_dropout
from tuneloop.train.fused_lora import fuse_lora


@dataclass
class Precision:
    """``autocast``: dtype the matmuls run in (None = fp32); ``base_dtype``: frozen weights' storage."""

    name: str
    autocast: torch.dtype | None
    base_dtype: torch.dtype


@dataclass
class PreparedModel:
    model: torch.nn.Module
    method: str
    trainable_parameters: int
    total_parameters: int
    targeted_modules: dict[str, int] = field(default_factory=dict)  # module name -> how many layers

    def describe(self) -> str:
        share = 100 * self.trainable_parameters / max(1, self.total_parameters)
        text = (f"method {self.method}: {self.trainable_parameters:,} trainable of "
                f"{self.total_parameters:,} parameters ({share:.2f}%)")
        if self.targeted_modules:
            text += "; adapters on " + ", ".join(f"{k} x{v}" for k, v in self.targeted_modules.items())
        return text


def resolve_precision(requested: str, device: torch.device, method: str) -> Precision:
    """``auto`` = bf16 autocast where the hardware runs bf16 matmuls natively, else fp32."""

    if requested == "fp16" and device.type != "cuda":
        raise UserError("train.precision: fp16 needs a CUDA GPU", hint="use auto, bf16 or fp32 on CPU")
    if requested == "auto":
        requested = "bf16" if bf16_supported() else "fp32"
    elif requested == "bf16" and device.type == "cpu" and not bf16_supported():
        import sys

        print("warning: train.precision bf16 on a CPU without AVX512-BF16/AMX: bf16 matmuls are emulated "
              "and can be 100x slower than fp32; precision: auto picks fp32 here", file=sys.stderr)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[requested]
    # Frozen weights may live in the compute dtype; trainable ones always stay fp32.
    base = autocast if (autocast is not None and method in ADAPTER_METHODS) else torch.float32
    return Precision(requested, autocast, base)


def setup_model(recipe, model_path, precision: Precision, device: torch.device) -> PreparedModel:
    from transformers import AutoModelForCausalLM

    method = recipe.method
    if method == "qlora":
        model = _load_4bit(model_path, precision, device)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=precision.base_dtype)
        model.to(device)
    targeted = {}
    if method in ADAPTER_METHODS:
        model, targeted = _add_adapters(model, recipe)
    elif method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    if recipe.train.neftune_alpha:
        add_neftune_noise(model, recipe.train.neftune_alpha)
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    if uses_fused_lora(recipe):
        fuse_lora(model)
    if recipe.train.compile:
        compile_layers(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return PreparedModel(model, method, trainable, total, targeted)


def uses_fused_lora(recipe) -> bool:
    """Fused LoRA linears (train/fused_lora.py) for plain LoRA; not under QAT, which replaces the same
    forwards with its fake-quantized one (train/qat.py), nor under FSDP2, which shards the base weights
    the fused groups concatenate, nor with train.compile, whose graphs cannot trace the groups'
    sharing of one input (Python state between calls): the compiled-layers test failed with both on."""
    t = recipe.train
    return (t.fused_lora and not t.compile and recipe.method == "lora" and recipe.quantization_aware is None
            and recipe.distributed.strategy != "fsdp")


def add_neftune_noise(model, alpha: float):
    """NEFTune (Jain et al., 2023): while the model trains, its input embeddings get uniform noise in
    +-alpha/sqrt(L*d), L the row's length in tokens and d the hidden size, as in TRL and transformers
    (a padding-free packed row counts as one row). Drawn from torch's global generator, which
    checkpoints save, so a resumed run draws the same noise. Returns the hook's handle."""

    def noisy(module, inputs, output):
        if not module.training:
            return output
        scale = alpha / (output.size(-2) * output.size(-1)) ** 0.5
        return output + torch.empty_like(output).uniform_(-scale, scale)

    return model.get_input_embeddings().register_forward_hook(noisy)


def compile_layers(model) -> int:
    """``torch.compile`` every decoder layer (dynamic shapes); returns how many.

    Per layer rather than the whole model: the packed-attention bucketing and the chunked loss are
    data-dependent Python that would break one big graph, while the layers are all the same code, so
    they share one compiled graph. Measured on the embedded model (2-core CPU, bf16): steady steps
    ~8% faster, after ~40 s of compilation on the first steps.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(base.get_decoder(), "layers", None)
    if layers is None:
        raise UserError("train.compile: this model has no list of decoder layers to compile",
                        hint="set train.compile: false")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def _load_4bit(model_path, precision: Precision, device: torch.device):
    if device.type != "cuda":
        raise UserError("method qlora needs a CUDA GPU (4-bit weights through bitsandbytes)",
                        hint="on this machine use method: lora (same adapters, base kept in bf16/fp32)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("method qlora needs bitsandbytes", hint="pip install 'tuneloop[gpu]'") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=precision.autocast or torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=quant,
                                                 device_map={"": device.index or 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def linear_module_names(model) -> list[str]:
    """Distinct last-name components of the model's Linear layers (q_proj, v_proj, ...)."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear")}
    return sorted(n for n in names if n)


def _add_adapters(model, recipe):
    from peft import LoraConfig, get_peft_model

    lora = recipe.lora
    targets = lora.target_modules
    if isinstance(targets, list):
        available = linear_module_names(model)
        for name in targets:
            if name not in available:
                guess = did_you_mean(name, available)
                raise UserError(
                    f"lora.target_modules: no module named {name!r} in this model"
                    + (f"; did you mean '{guess}'?" if guess else ""),
                    hint=f"available: {', '.join(available)} (or all-linear)")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets, use_dora=recipe.method == "dora",
                        bias="none", task_type="CAUSAL_LM")
    # Adapter init draws from torch's RNG: seeding here makes it reproducible (deterministic mode).
    torch.manual_seed(recipe.train.seed)
    model = get_peft_model(model, config)
    use_fast_dropout(model)  # same dropout, a cheaper mask on CPU (train/dropout.py)
    for p in model.parameters():  # adapters train in fp32 even on a bf16 base
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    targeted: dict[str, int] = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and len(getattr(module, "lora_A", {})):
            short = name.rsplit(".", 1)[-1]
            targeted[short] = targeted.get(short, 0) + 1
    return model, targeted
