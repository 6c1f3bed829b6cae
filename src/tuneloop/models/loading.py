"""Turn any model reference into a loaded model and tokenizer.

A reference ``M`` may be a catalog name, a hub id, a local Hugging Face directory, a ``.gguf`` file,
a tuneloop run directory (its ``adapter/`` on its base model, or its full ``model/``) or a registry
version ``registry:NAME@ALIAS`` / ``registry:NAME@VERSION``.
:func:`resolve_model` maps it to files without loading anything; :func:`load_model` and
:func:`load_tokenizer` load them. Nothing touches the network unless the user names a hub model that
is not in the local store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tuneloop.chat.template import select_chat_template
from tuneloop.errors import UserError, did_you_mean
from tuneloop.models import catalog, store
from tuneloop.models.quantized import is_quantized_dir, load_quantized
from tuneloop.paths import model_store
from tuneloop.registry.reference import is_registry_reference, resolve_reference


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are: a full HF directory, plus an optional PEFT adapter on top."""

    reference: str
    path: Path
    adapter: Path | None = None

    @property
    def tokenizer_path(self) -> Path:
        if self.adapter is not None and (self.adapter / "tokenizer_config.json").is_file():
            return self.adapter
        return self.path


def _resolve_run_dir(path: Path) -> ResolvedModel | None:
    """A run directory: ``model/`` (full fine-tune) or ``adapter/`` on the base named in it."""
    if store.is_hf_dir(path / "model"):
        return ResolvedModel(str(path), path / "model")
    adapter = path / "adapter" if (path / "adapter" / "adapter_config.json").is_file() else None
    if adapter is None and (path / "adapter_config.json").is_file():
        adapter = path
    if adapter is None:
        return None
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"not valid JSON ({e})", where=str(adapter / "adapter_config.json"),
                        hint="the run's adapter is damaged; re-run training or restore the file") from None
    if not any((adapter / name).is_file() for name in ADAPTER_WEIGHTS):
        raise UserError(f"the adapter has no weights ({' or '.join(ADAPTER_WEIGHTS)})", where=str(adapter),
                        hint="the run did not finish or the file was removed; re-run training")
    base_ref = _base_reference(path, config)
    try:
        base = resolve_model(base_ref)
    except UserError as e:
        raise UserError(f"the run's base model is unavailable: {e.message}", where=str(path),
                        hint="restore the base model, or fix base_model in the run's tuneloop_base.json") from None
    return ResolvedModel(str(path), base.path, adapter)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _base_reference(run_dir: Path, adapter_config: dict) -> str:
    # The run's own record of its base model wins over PEFT's (which may be a temporary path).
    for meta in (run_dir / "tuneloop_base.json", run_dir.parent / "tuneloop_base.json"):
        if meta.is_file():
            try:
                return json.loads(meta.read_text(encoding="utf-8"))["base_model"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                raise UserError('not a JSON object with "base_model"', where=str(meta),
                                hint='restore it, e.g. {"base_model": "smollm2-135m-instruct"}') from None
    base = adapter_config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{run_dir}: adapter does not name its base model",
                        hint="set base_model_name_or_path in adapter_config.json")
    return base


def resolve_model(reference: str | Path) -> ResolvedModel:
    ref = str(reference).strip()
    if not ref:
        raise UserError("empty model name", hint=f"use a catalog name such as {catalog.EMBEDDED}")
    if is_registry_reference(ref):  # registry:NAME@ALIAS: the version's run directory, read now
        return resolve_model(resolve_reference(ref).path)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        target = model_store() / store.store_name(path.stem)
        if not store.is_hf_dir(target):
            store.convert_gguf(path.resolve(), target, source=str(path))
        return ResolvedModel(ref, target)
    if path.is_dir():
        if store.is_hf_dir(path) and not (path / "adapter_config.json").is_file():
            return ResolvedModel(ref, path)
        resolved = _resolve_run_dir(path)
        if resolved is not None:
            return resolved
        raise UserError(f"{path} is a directory but not a model or a run",
                        hint="expected config.json (a model), or adapter/ or model/ (a tuneloop run)")
    card = catalog.find_card(ref)
    if card is not None and card.name == catalog.EMBEDDED:
        return ResolvedModel(ref, store.ensure_embedded())
    name = card.name if card else store.store_name(ref)
    local = model_store() / name
    if store.is_hf_dir(local):
        return ResolvedModel(ref, local)
    if card is not None:
        return ResolvedModel(ref, store.download_hub_model(card.hub_id, local))
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref) and not path.exists():
        return ResolvedModel(ref, store.download_hub_model(ref, local))
    guess = did_you_mean(ref.lower(), catalog.BY_NAME)
    raise UserError(
        f"model {ref!r} not found: not a catalog name, a hub id (org/name), a directory or a .gguf file"
        + (f"; did you mean '{guess}'?" if guess else ""),
        hint="`tuneloop models list` shows the catalog",
    )


def cannot_load(path: Path, what: str, error: Exception) -> UserError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return UserError(f"cannot load the {what}: {first}", where=str(path),
                     hint="a model directory needs config.json, weights (*.safetensors) and tokenizer files; "
                          "re-download or re-export it")


def load_tokenizer(reference: str | Path | ResolvedModel, chat_template: str | None = None):
    """The tokenizer, with a pad token distinct from EOS where the vocabulary has one.

    ``chat_template``: a recipe's choice (``model``, ``chatml`` or a Jinja file), see
    :func:`tuneloop.chat.template.select_chat_template`.
    """
    resolved = reference if isinstance(reference, ResolvedModel) else resolve_model(reference)
    from transformers import AutoTokenizer  # after resolving: an unknown name fails without this import

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_path)
    except (OSError, ValueError) as e:  # missing or damaged tokenizer files in a local directory
        raise cannot_load(resolved.tokenizer_path, "tokenizer", e) from None
    pad = store.choose_pad_token(tokenizer)
    if pad is not None:
        tokenizer.pad_token = pad
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # last resort; masks must come from attention_mask

    select_chat_template(tokenizer, chat_template)
    return tokenizer


def load_model(reference: str | Path | ResolvedModel, dtype=None, merge_adapter: bool = False,
               device: str | None = None):
    """The model in eval mode; a run directory's adapter is applied (merged when asked)."""
    import torch
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar for a one-second load is noise
    resolved = reference if isinstance(reference, ResolvedModel) else resolve_model(reference)
    if is_quantized_dir(resolved.path):  # `export --format quantized`
        return load_quantized(resolved.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype or torch.float32)
    except (OSError, ValueError) as e:  # missing weights, damaged config.json, unknown architecture
        raise cannot_load(resolved.path, "model", e) from None
    if resolved.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    if device:
        model.to(device)
    model.eval()
    return model


def load_model_and_tokenizer(reference, dtype=None, merge_adapter: bool = False, device=None):
    resolved = reference if isinstance(reference, ResolvedModel) else resolve_model(reference)
    return load_model(resolved, dtype, merge_adapter, device), load_tokenizer(resolved)


def card_for(reference: str) -> catalog.ModelCard:
    """The catalog card, or one built from the config of any model reference (dir, .gguf, hub id)."""
    card = catalog.find_card(reference)
    if card is not None:
        return card
    config_path = resolve_model(reference).path / "config.json"
    try:
        return catalog.card_from_config(str(reference), json.loads(config_path.read_text()))
    except (KeyError, ValueError) as e:
        raise UserError(f"{config_path}: cannot read the architecture ({e})",
                        hint="estimates need a decoder config with layers, hidden and head sizes") from None
