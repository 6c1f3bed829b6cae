"""Memory and time estimates for fine-tuning a catalog model on this machine, from its architecture.

Memory = runtime + weights + gradients + optimizer state + activations + loss buffers, each term a
small function below so ``models estimate`` can show the breakdown. The constants are for tuneloop's
own trainer (bf16 autocast, LoRA base weights frozen, loss computed only at supervised positions) and
are checked against measured peaks by ``benchmarks/estimate_vs_measured.py``.

Time per 1k tokens = training FLOPs (about 6N per token for full fine-tuning, 4N for LoRA/QLoRA since
frozen weights need no weight gradients, plus attention) / (measured matmul peak x expected MFU).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from tuneloop.models.catalog import ModelCard, layer_linear_shapes
from tuneloop.paths import tuneloop_home, write_json_atomic

GB = 1024**3
RUNTIME_BYTES = 0.55 * GB  # Python, torch, transformers and tokenizer, measured as idle RSS after import
EXPECTED_MFU = {"cpu": 0.30, "cuda": 0.40}
# Values kept per token per layer for backward, in units of hidden / intermediate size, times the
# compute dtype's bytes. Calibrated against tuneloop's trainer: LoRA r16 on SmolLM2-135M, 8 x 512
# tokens, fp32 on a 2-core CPU, peak RSS 14.8 GB (benchmarks/estimate_vs_measured.py).
ACT_PER_HIDDEN = 24
ACT_PER_INTERMEDIATE = 10


@dataclass
class Estimate:
    model: str
    method: str
    seq_len: int
    batch_size: int
    trainable_parameters: int
    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    runtime_gb: float
    total_gb: float
    flops_per_token: float
    peak_tflops: float
    device: str
    seconds_per_1k_tokens: float

    def as_dict(self) -> dict:
        return asdict(self)


def lora_parameters(card: ModelCard, r: int = 16, targets: tuple[str, ...] | None = None) -> int:
    shapes = layer_linear_shapes(card)
    names = targets or tuple(shapes)
    return card.layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names if n in shapes)


def trainable_parameters(card: ModelCard, method: str, r: int = 16) -> int:
    return card.parameters if method == "full" else lora_parameters(card, r)


def weight_bytes(card: ModelCard, method: str) -> float:
    if method == "qlora":  # 4-bit blocks plus scales; embeddings and norms stay 16-bit
        embed = card.vocab * card.hidden * (1 if card.tied_embeddings else 2)
        return (card.parameters - embed) * 0.56 + embed * 2
    return card.parameters * 4.0  # fp32 master weights on CPU (bf16 only inside autocast)


def activation_bytes(card: ModelCard, method: str, seq_len: int, batch_size: int,
                     dtype_bytes: int = 4) -> float:
    tokens = seq_len * batch_size
    per_token_layer = dtype_bytes * (ACT_PER_HIDDEN * card.hidden + ACT_PER_INTERMEDIATE * card.intermediate)
    layers = tokens * card.layers * per_token_layer
    # Loss at supervised positions only, in chunks: logits for at most ~half the tokens, fp32 + grad.
    logits = tokens * 0.5 * card.vocab * 4 * 2
    return layers + logits


def matmul_peak_tflops(device: str = "cpu") -> float:
    """The machine's matmul peak (bf16 where supported), measured once and cached in TUNELOOP_HOME."""

    cache = tuneloop_home() / "matmul_peak.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if device in cached:
            return cached[device]
    import torch

    n = 2048 if device == "cpu" else 8192
    dtype = torch.bfloat16 if device == "cuda" or bf16_supported() else torch.float32
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(4):  # best of a few: a busy machine only ever makes a run slower
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    tflops = 2 * n**3 / best / 1e12
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    cached[device] = round(tflops, 4)
    write_json_atomic(cache, cached)
    return tflops


def bf16_supported() -> bool:
    """bf16 matmuls run natively (AMX/AVX512-BF16 on CPU, or a CUDA GPU with bf16)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def estimate(card: ModelCard, method: str, seq_len: int, batch_size: int, r: int = 16,
             device: str | None = None, measure_peak: bool = True) -> Estimate:
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    trainable = trainable_parameters(card, method, r)
    weights = weight_bytes(card, method)
    grads = trainable * 4.0
    optimizer = trainable * 8.0  # AdamW: two fp32 moments
    # Activations are kept in the compute dtype: bf16 where the hardware has it, else fp32.
    acts = activation_bytes(card, method, seq_len, batch_size, 2 if device == "cuda" or _bf16_cached() else 4)
    total = RUNTIME_BYTES + weights + grads + optimizer + acts
    n = card.non_embedding_parameters
    flops = (6 if method == "full" else 4) * n + 6 * card.layers * seq_len * card.hidden
    peak = matmul_peak_tflops(device) if measure_peak else 0.0
    seconds = flops * 1000 / (peak * 1e12 * EXPECTED_MFU.get(device, 0.3)) if peak else float("nan")
    return Estimate(card.name, method, seq_len, batch_size, trainable, weights / GB, grads / GB,
                    optimizer / GB, acts / GB, RUNTIME_BYTES / GB, total / GB, float(flops), peak,
                    device, seconds)


def _bf16_cached() -> bool:
    global _BF16
    if _BF16 is None:
        _BF16 = bf16_supported()
    return _BF16


_BF16: bool | None = None
