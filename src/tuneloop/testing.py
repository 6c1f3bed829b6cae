"""Test and benchmark helpers: a tiny random model with the real SmolLM2 tokenizer.

``build_tiny_model(dir)`` writes a 2-layer Llama (hidden 64) that loads through the same code paths as
any model, so tests of training, evaluation, serving and export run in seconds.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.models.loading import load_tokenizer


def build_tiny_model(out_dir: str | Path, seed: int = 0, layers: int = 2, hidden: int = 64,
                     init_std: float = 0.02) -> Path:
    """``init_std``: the weights' initial spread (transformers' default 0.02; 0.1 learns a task that
    needs attention to far-back tokens in tens of steps instead of hundreds)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=init_std,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
