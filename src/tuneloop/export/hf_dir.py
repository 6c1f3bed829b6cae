"""``--format safetensors``: a standalone Hugging Face directory that plain transformers loads.

The directory holds ``model.safetensors``, ``config.json``, ``generation_config.json`` (EOS = the chat
template's end-of-turn token, so ``generate`` stops where training taught the model to stop), the
tokenizer files and ``chat_template.jinja``. After writing, the directory is loaded back with plain
``AutoModelForCausalLM``/``AutoTokenizer`` and compared with the in-memory model: same prompt ids, same
logits, same greedy answers. The caller writes into a temporary directory and renames it, so a
failed export leaves nothing.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.export.merge import (ExportCheckFailed, MergedModel, greedy_ids, max_abs_diff, probe_batch,
                                   probe_logits)

RELOAD_TOLERANCE = 1e-4


def write_hf_dir(merged: MergedModel, out_dir: Path) -> dict:
    """Save ``merged`` into ``out_dir``; returns what the reload check measured."""
    model, tokenizer = merged.model, merged.tokenizer
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    # Drop the run-time reference to where the base was loaded from: the export stands alone.
    model.config._name_or_path = ""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return check_reload(merged, out_dir)


def check_reload(merged: MergedModel, out_dir: Path) -> dict:
    """Load ``out_dir`` with plain transformers and compare prompt ids and logits with ``merged``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    ids, mask = probe_batch(merged.tokenizer)
    reloaded_ids, _ = probe_batch(reloaded_tokenizer)
    if not torch.equal(ids, reloaded_ids):
        raise ExportCheckFailed(f"{out_dir}: the exported tokenizer renders prompts to different token ids")
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    diff = max_abs_diff(probe_logits(merged.model, ids, mask), probe_logits(reloaded, ids, mask))
    if not diff <= RELOAD_TOLERANCE:
        raise ExportCheckFailed(f"{out_dir}: the exported model's logits differ from the merged model's "
                                f"by {diff:.2e}")
    if greedy_ids(reloaded, reloaded_tokenizer) != greedy_ids(merged.model, merged.tokenizer):
        raise ExportCheckFailed(f"{out_dir}: the exported model answers differently (greedy)")
    return {"reload_max_abs_diff": diff, "reload_same_greedy_answers": True}
