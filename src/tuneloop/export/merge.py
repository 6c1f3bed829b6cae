"""Load what is to be exported as one plain model: an adapter merged into its full-precision base.

The base is loaded fresh in float32 (never the bf16 or quantised copy training may have used), the
adapter applied, and the logits of the adapter model and the merged model compared on a few probe
prompts. Merging is exact in theory; a drift beyond the tolerance means the adapter did not load or
merge as trained (wrong base, unsupported layer type), and exporting it would ship a different model.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.chat.template import render_prompt_ids
from tuneloop.errors import UserError
from tuneloop.models.generation import generate_ids
from tuneloop.models.loading import load_model, load_tokenizer, resolve_model

# Fixed conversations whose logits are compared between model forms (any text would do; these also
# exercise the chat template and the system turn).
PROBE_CONVERSATIONS = (
    [{"role": "user", "content": "Hello! What can you help me with?"}],
    [{"role": "system", "content": "You are a support assistant."},
     {"role": "user", "content": "How long do I have to return an item?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
)
MERGE_TOLERANCE = 1e-3


class ExportCheckFailed(RuntimeError):
    """A written export does not reproduce the model it came from (a bug, not a user error)."""


@dataclass
class MergedModel:
    model: object  # a transformers PreTrainedModel, in eval mode, float32
    tokenizer: object
    reference: str
    base_path: str
    adapter_path: str | None
    merge_max_abs_diff: float | None  # None when there was no adapter to merge


def probe_batch(tokenizer, conversations=PROBE_CONVERSATIONS):
    """Left-padded ids and attention mask of the probe prompts (rendered by the one chat template)."""
    import torch

    prompts = [render_prompt_ids(tokenizer, list(c)) for c in conversations]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def probe_logits(model, ids, mask):
    """Logits at the real (non-padding) positions, float32, as one flat tensor."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return logits[mask.bool()]


def greedy_ids(model, tokenizer, max_new_tokens: int = 12) -> list[list[int]]:
    """Greedy continuations of the probe prompts: what "answers the same" is checked on."""

    prompts = [render_prompt_ids(tokenizer, list(c)) for c in PROBE_CONVERSATIONS]
    return generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens)


def max_abs_diff(a, b) -> float:
    return float((a - b).abs().max())


def load_merged(reference, tolerance: float = MERGE_TOLERANCE) -> MergedModel:
    """The model behind ``reference`` with any adapter merged, checked against the unmerged model."""
    import torch

    resolved = resolve_model(reference)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved, dtype=torch.float32)
    diff = None
    if resolved.adapter is not None:
        ids, mask = probe_batch(tokenizer)
        before = probe_logits(model, ids, mask)
        model = model.merge_and_unload()
        model.eval()
        diff = max_abs_diff(before, probe_logits(model, ids, mask))
        if not diff <= tolerance:  # written this way so that NaN fails too
            raise UserError(
                f"merged model drifts from the adapter model: max |logit difference| {diff:.2e} > {tolerance:g}",
                where=str(reference),
                hint="check that the run's base model (tuneloop_base.json) is the one it was trained on",
            )
    return MergedModel(model, tokenizer, str(reference), str(resolved.path),
                       str(resolved.adapter) if resolved.adapter else None, diff)
