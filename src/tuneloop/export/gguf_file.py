"""``--format gguf``: one ``.gguf`` file (llama.cpp's format) with the tokenizer and chat template inside.

Written with the ``gguf`` package's ``GGUFWriter``, laid out the way llama.cpp's
``convert_hf_to_gguf.py`` lays out a Llama model, so that transformers' GGUF loader (and llama.cpp,
Ollama, LM Studio) read it:

* tensors under llama.cpp's names (``blk.N.attn_q.weight``...), taken from ``gguf``'s own name map;
  the q and k projections are permuted into llama.cpp's rotary layout (transformers' loader undoes
  exactly this permutation); tied embeddings are written once (no ``output.weight``);
* ``f32`` (exact) or ``f16`` (half the size; 1-D norm weights stay f32 as llama.cpp keeps them);
* the byte-level BPE tokenizer as metadata: tokens in id order, merges, token types (special tokens
  as CONTROL so they are never split), BOS/EOS/UNK/PAD ids, the pre-tokenizer name, the chat template.

After writing, the file is read back with ``from_pretrained(dir, gguf_file=...)`` and compared with the
in-memory model: prompt ids equal, logits within a tolerance that depends on the dtype, and (for f32)
the same greedy answers. Reading back costs ~30-60 s on 2 cores whatever the model size: the gguf
reader parses the 49k-token vocabulary element by element.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.export.merge import (ExportCheckFailed, MergedModel, greedy_ids, max_abs_diff, probe_batch,
                                   probe_logits)
from tuneloop.models.store import store_info
from tuneloop.paths import write_text_atomic

GGUF_FILE = "model.gguf"
# Logit tolerance of the read-back check: f32 is a bit-exact copy; f16 rounds every weight.
READBACK_TOLERANCE = {"f32": 1e-4, "f16": 0.5, "q8_0": 2.0}
# model_type -> whether q/k are permuted into llama.cpp's rotary layout. Add an architecture here
# once its metadata keys and tensor layout are checked against transformers' GGUF loader.
SUPPORTED_ARCHITECTURES = {"llama": True}


def write_gguf(merged: MergedModel, out_dir: Path, dtype: str = "f32") -> dict:
    """Write ``out_dir/model.gguf`` from ``merged`` and check it reads back as the same model."""
    import gguf

    config = merged.model.config
    _check_supported(config)
    path = out_dir / GGUF_FILE
    writer = gguf.GGUFWriter(path, config.model_type)
    _add_model_metadata(writer, config, dtype)
    _add_tokenizer_metadata(writer, merged, vocab_rows=config.vocab_size)
    for name, array in gguf_tensors(merged.model, dtype):
        if dtype == "q8_0" and array.ndim == 2 and array.shape[-1] % 32 == 0:
            # Q8_0: blocks of 32 weights, one f16 scale each (llama.cpp's 8-bit type); norms stay f32
            # (the byte array's shape gives the logical one: 34 bytes per 32 weights)
            writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    write_modelfile(out_dir, merged.tokenizer)
    return check_readback(merged, out_dir, dtype)


def write_modelfile(out_dir: Path, tokenizer) -> Path:
    """An Ollama ``Modelfile`` beside the GGUF: ``ollama create NAME -f Modelfile`` imports it.

    Ollama reads the chat template from the GGUF's metadata; the stop token is the template's end
    of turn, so answers end where training taught them to.
    """
    lines = [f"FROM ./{GGUF_FILE}"]
    if tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    path = out_dir / "Modelfile"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _check_supported(config) -> None:
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)} models, not {config.model_type!r}",
            hint="export --format safetensors, then run llama.cpp's convert_hf_to_gguf.py on the directory",
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"GGUF export does not write rope scaling ({rope.get('rope_type')!r})",
                        hint="export --format safetensors and convert it with llama.cpp")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UserError("GGUF export of Llama models with bias terms is not supported",
                        hint="export --format safetensors and convert it with llama.cpp")


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _add_model_metadata(writer, config, dtype: str) -> None:
    import gguf

    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name("tuneloop export")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_vocab_size(config.vocab_size)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    writer.add_file_type(int(file_type))


def permute_for_llama_cpp(weight, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's q/k layout: within each head, rotary pairs interleaved instead of split in halves.

    The same as ``permute`` in llama.cpp's convert_hf_to_gguf.py; transformers'
    ``LlamaTensorProcessor._reverse_permute_weights`` is its inverse.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape))


def gguf_tensors(model, dtype: str):
    """``(gguf_name, numpy array)`` for every tensor to write, in state-dict order."""
    import gguf
    import numpy as np

    config = model.config
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == config.model_type)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    permute_qk = SUPPORTED_ARCHITECTURES[config.model_type]
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd.weight; a missing output.weight signals the tie
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise ExportCheckFailed(f"no GGUF name for tensor {hf_name}")
        array = tensor.detach().float().cpu().numpy()
        if permute_qk and stem.endswith("self_attn.q_proj"):
            array = permute_for_llama_cpp(array, config.num_attention_heads)
        elif permute_qk and stem.endswith("self_attn.k_proj"):
            array = permute_for_llama_cpp(array, config.num_attention_heads, config.num_key_value_heads)
        if dtype == "f16" and array.ndim > 1:
            array = array.astype(np.float16)
        yield f"{gguf_name}.{suffix}", np.ascontiguousarray(array)


def _add_tokenizer_metadata(writer, merged: MergedModel, vocab_rows: int) -> None:
    tokenizer = merged.tokenizer
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(backend.get("decoder")):
        raise UserError("GGUF export supports byte-level BPE tokenizers (GPT-2 style) only",
                        hint="export --format safetensors and convert it with llama.cpp")
    tokens, types = token_table(tokenizer, vocab_rows)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(backend, merged.base_path))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(token_id)
    # llama.cpp prepends BOS to every prompt only if the tokenizer does so itself (SmolLM's does not:
    # its chat template writes the special tokens).
    plain, with_special = (tokenizer("x", add_special_tokens=flag)["input_ids"] for flag in (False, True))
    writer.add_add_bos_token(len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id)
    writer.add_chat_template(tokenizer.chat_template)


def token_table(tokenizer, vocab_rows: int) -> tuple[list[str], list[int]]:
    """Tokens in id order (byte-level spelling) and their llama.cpp types, padded to the embedding rows."""
    import gguf

    n = len(tokenizer)
    if n > vocab_rows:
        raise UserError(f"the tokenizer has {n} tokens but the model only {vocab_rows} embedding rows",
                        hint="resize the model's embeddings to the tokenizer before exporting")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    types = []
    for token_id in range(n):
        if token_id in added:
            special = added[token_id].special or token_id in tokenizer.all_special_ids
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
    # Embedding rows beyond the tokenizer (padding for efficiency) get placeholder tokens.
    tokens += [f"[PAD{i}]" for i in range(n, vocab_rows)]
    types += [int(gguf.TokenType.UNUSED)] * (vocab_rows - n)
    return tokens, types


def pre_tokenizer_name(backend: dict, base_path: str) -> str:
    """llama.cpp's name for how text is split before BPE.

    A model converted from a GGUF keeps its original name (e.g. SmolLM's ``smollm``); otherwise the
    tokenizer's split regex is matched against the ones transformers' GGUF loader knows, and a plain
    GPT-2 byte-level tokenizer is ``gpt-2``. The read-back check catches any mismatch.
    """

    source = store_info(Path(base_path)).get("converted_from")
    if source and Path(source).is_file():
        from gguf import GGUFReader

        field = GGUFReader(source).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return str(field.contents())
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    text = json.dumps(backend.get("pre_tokenizer"))
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        if json.dumps(regex)[1:-1] in text:
            return name
    return "gpt-2"


def check_readback(merged: MergedModel, out_dir: Path, dtype: str) -> dict:
    """Load the file with transformers' GGUF loader; prompt ids must match and logits stay close."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir, gguf_file=GGUF_FILE)
    ids, mask = probe_batch(merged.tokenizer)
    if not torch.equal(ids, probe_batch(tokenizer)[0]):
        raise ExportCheckFailed(f"{out_dir / GGUF_FILE}: its tokenizer renders prompts to different ids")
    model = AutoModelForCausalLM.from_pretrained(out_dir, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    diff = max_abs_diff(probe_logits(merged.model, ids, mask), probe_logits(model, ids, mask))
    if not diff <= READBACK_TOLERANCE[dtype]:
        raise ExportCheckFailed(f"{out_dir / GGUF_FILE}: logits read back differ by {diff:.2e}")
    same_answers = greedy_ids(model, tokenizer) == greedy_ids(merged.model, merged.tokenizer)
    if dtype == "f32" and not same_answers:  # f16 rounding may flip a near-tie; f32 must not
        raise ExportCheckFailed(f"{out_dir / GGUF_FILE}: greedy answers read back differ")
    return {"readback_max_abs_diff": diff, "readback_same_greedy_answers": same_answers, "gguf_dtype": dtype}
