"""Which model ids a server answers to: one base model and any number of LoRA adapters on it.

``--model M`` names the base (or an adapter run, whose base is then served too); ``--model NAME=M``
adds more, each under its own id. All adapters must sit on the same base, because they share one
PEFT model in memory (``load_adapter`` under internal names ``a0``, ``a1``, ...; the engine switches
with ``set_adapter`` per batch and ``disable_adapter()`` for the base).

Safety: a request can only pick one of these registered ids. Nothing in a request is ever turned
into a path, so names like ``../x`` or ``/etc/passwd`` are refused outright (400) and any other
unknown name is a 404.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.models.estimate import bf16_supported
from tuneloop.models.loading import ResolvedModel, cannot_load, load_tokenizer, resolve_model

# Served ids: letters, digits and . _ : @ + - ; no path separators, never "..".
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_NAMED = re.compile(r"([A-Za-z0-9][A-Za-z0-9._:@+-]{0,127})=(.+)")


@dataclass(frozen=True)
class ServedModel:
    id: str
    reference: str  # what the user passed to --model
    adapter_path: Path | None = None
    adapter_name: str | None = None  # PEFT's internal name; None for the base


@dataclass
class ModelTable:
    base_path: Path
    models: dict[str, ServedModel] = field(default_factory=dict)

    @property
    def base_id(self) -> str:
        return next(m.id for m in self.models.values() if m.adapter_path is None)

    def adapters(self) -> list[ServedModel]:
        return [m for m in self.models.values() if m.adapter_path is not None]


def looks_like_path(name: str) -> bool:
    """True for names that try to point at files: "..", absolute, home or Windows paths, NUL."""
    return (".." in name or "\\" in name or "\x00" in name or name.startswith(("/", "~"))
            or re.match(r"[A-Za-z]:[\\/]", name) is not None)


def default_id(reference: str) -> str:
    """The id a model gets without NAME=: a catalog name or hub id as typed, else the file's name."""
    path = Path(reference).expanduser()
    if path.exists():
        name = path.stem if path.suffix == ".gguf" else path.resolve().name
    else:
        name = reference
    return re.sub(r"[^A-Za-z0-9._:@+/-]", "-", name).strip("-") or "model"


def parse_option(option: str) -> tuple[str | None, str]:
    """``NAME=M`` -> (NAME, M); ``M`` -> (None, M)."""
    match = _NAMED.fullmatch(option.strip())
    if match and not Path(option).exists():
        return match.group(1), match.group(2)
    return None, option.strip()


def plan_models(options: list[str]) -> ModelTable:
    """Resolve every --model option (no weights loaded) into the table of served ids."""
    if not options:
        raise UserError("no model to serve", where="--model", hint="e.g. --model smollm2-135m-instruct")
    resolved = []
    for option in options:
        name, reference = parse_option(option)
        if name is not None and not MODEL_ID.fullmatch(name):
            raise UserError(f"model id {name!r} may only use letters, digits and . _ : @ + -",
                            where="--model")
        resolved.append((name, reference, resolve_model(reference)))
    base = resolved[0][2]
    table = ModelTable(base.path)
    if base.adapter is not None:  # serving an adapter run: its base is served too
        _add(table, ServedModel(default_id(_base_reference(base)), _base_reference(base)))
    for index, (name, reference, model) in enumerate(resolved):
        _check_same_base(model, base, reference)
        if model.adapter is None:
            if not any(m.adapter_path is None for m in table.models.values()):
                _add(table, ServedModel(name or default_id(reference), reference))
            continue
        _add(table, ServedModel(name or default_id(reference), reference, model.adapter, f"a{index}"))
    return table


def _base_reference(model: ResolvedModel) -> str:
    return str(model.path)


def _check_same_base(model: ResolvedModel, base: ResolvedModel, reference: str) -> None:
    if Path(model.path).resolve() != Path(base.path).resolve():
        raise UserError(
            f"{reference} is on base model {model.path}, but this server's base is {base.path}",
            where="--model",
            hint="one server holds one base model with its adapters; start another server for another base")


def _add(table: ModelTable, served: ServedModel) -> None:
    if served.id in table.models:
        raise UserError(f"model id {served.id!r} is used twice", where="--model",
                        hint="give each model its own id with --model NAME=M")
    table.models[served.id] = served


def serving_dtype():
    """bf16 weights where the hardware multiplies bf16 natively (half the bytes each token reads), else fp32."""
    import torch

    return torch.bfloat16 if bf16_supported() else torch.float32


def load_served(table: ModelTable, dtype=None):
    """The base model with every adapter loaded into one PeftModel, and the tokenizer."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(table.base_path, dtype=dtype or serving_dtype())
    except (OSError, ValueError) as e:  # missing weights, damaged config.json, unknown architecture
        raise cannot_load(Path(table.base_path), "model", e) from None
    adapters = table.adapters()
    if adapters:
        from peft import PeftModel

        first, *rest = adapters
        model = PeftModel.from_pretrained(model, first.adapter_path, adapter_name=first.adapter_name)
        for served in rest:
            model.load_adapter(served.adapter_path, adapter_name=served.adapter_name)
    model.eval()
    return model, load_tokenizer(ResolvedModel(str(table.base_path), table.base_path))
