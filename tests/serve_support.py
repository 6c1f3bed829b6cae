"""Helpers for the serving tests: LoRA adapter runs on the tiny model, made directly with PEFT."""

from __future__ import annotations

import json
from pathlib import Path


def make_adapter_run(base_dir: Path, run_dir: Path, seed: int) -> Path:
    """A run directory (``adapter/`` + ``tuneloop_base.json``) whose LoRA really changes the output.

    PEFT initialises lora_B to zero (an adapter that does nothing), so B gets random values here.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (run_dir / "adapter" / "adapter_config.json").is_file():
        return run_dir
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"]))
    generator = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.5
    peft_model.save_pretrained(run_dir / "adapter")
    (run_dir / "tuneloop_base.json").write_text(json.dumps({"base_model": str(base_dir)}))
    return run_dir
