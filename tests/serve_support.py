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


def make_classifier_dir(base_dir: Path, out_dir: Path, labels: tuple[str, ...], seed: int = 0) -> Path:
    """A sequence classifier in the export layout (random head, no training): for tests of the route's
    shapes, where what the labels mean does not matter."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "tuneloop_classifier.json").write_text(json.dumps({"labels": list(labels), "max_len": 32}))
    return out_dir
