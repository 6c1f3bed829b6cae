"""Export: the merge check, safetensors and GGUF round trips on tiny models, and user errors.

The safetensors export is loaded back in a *separate* Python process with plain transformers, which
must render the chat template to the same ids as training and answer (greedily) as the adapter model.
The GGUF tests use a tiny model with a 400-token byte-level BPE vocabulary: transformers' GGUF reader
parses the vocabulary one element at a time, so the real 49k-token one would cost a minute per read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tuneloop.errors import UserError

QUESTION = [{"role": "system", "content": "You are a support assistant."},
            {"role": "user", "content": "How long do I have to return an item?"}]


def make_run(base_dir: Path, run_dir: Path, seed: int = 0) -> Path:
    """A run directory as training writes it: adapter/ (random, non-zero LoRA) + tuneloop_base.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    # init_lora_weights=False: B is random, so the adapter really changes the model.
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(run_dir / "adapter")
    (run_dir / "tuneloop_base.json").write_text(json.dumps({"base_model": str(base_dir)}))
    return run_dir


def build_small_vocab_model(out_dir: Path) -> Path:
    """A 2-layer Llama whose tokenizer is a 400-token byte-level BPE with ChatML special tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tuneloop.chat.template import DEFAULT_CHAT_TEMPLATE
    from tuneloop.quickstart.make_dataset import build_heldout_records

    texts = [m["content"] for r in build_heldout_records() for m in r["messages"]]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", unk_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=416, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("run") / "support-bot")


@pytest.fixture(scope="module")
def small_vocab_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small-vocab")
    return make_run(build_small_vocab_model(root / "base"), root / "run")


def adapter_greedy_ids(run_dir: Path, conversation=QUESTION, max_new_tokens: int = 12) -> list[int]:
    from tuneloop.chat.template import render_prompt_ids
    from tuneloop.models.generation import generate_ids
    from tuneloop.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(run_dir)  # the adapter on its base, not merged
    return generate_ids(model, tokenizer, [render_prompt_ids(tokenizer, conversation)], max_new_tokens)[0]


# --- pure functions -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_head,n_kv", [(4, 4), (4, 2), (9, 3)])
def test_llama_cpp_permutation_is_undone_by_transformers_loader(n_head, n_kv):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from tuneloop.export.gguf_file import permute_for_llama_cpp

    head_dim, hidden = 8, 16
    rng = np.random.default_rng(0)
    q = rng.standard_normal((n_head * head_dim, hidden)).astype(np.float32)
    k = rng.standard_normal((n_kv * head_dim, hidden)).astype(np.float32)
    loader = LlamaTensorProcessor(config={"num_attention_heads": n_head, "num_key_value_heads": n_kv})
    q_back = loader.process(permute_for_llama_cpp(q, n_head), "blk.0.attn_q.weight").weights
    k_back = loader.process(permute_for_llama_cpp(k, n_head, n_kv), "blk.0.attn_k.weight").weights
    assert np.array_equal(q_back, q) and np.array_equal(k_back, k)
    assert not np.array_equal(permute_for_llama_cpp(q, n_head), q)  # it does move rows


def test_token_table_pads_to_embedding_rows_and_marks_special_tokens(tmp_path):
    import gguf

    from tuneloop.export.gguf_file import token_table
    from tuneloop.models.loading import load_tokenizer

    tokenizer = load_tokenizer(build_small_vocab_model(tmp_path / "m"))
    tokens, types = token_table(tokenizer, vocab_rows=416)
    assert len(tokens) == len(types) == 416
    assert tokens[tokenizer.eos_token_id] == "<|im_end|>"
    assert types[tokenizer.eos_token_id] == gguf.TokenType.CONTROL
    assert types[tokenizer.convert_tokens_to_ids("Ġd")] == gguf.TokenType.NORMAL
    assert tokens[-1] == "[PAD415]" and types[-1] == gguf.TokenType.UNUSED
    with pytest.raises(UserError, match="embedding rows"):
        token_table(tokenizer, vocab_rows=100)


# --- round trips ----------------------------------------------------------------------------------

RELOAD_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out, messages = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out).eval()
text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
ids = tok(text, add_special_tokens=False)["input_ids"]
gen = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
eos = model.generation_config.eos_token_id
gen = gen[: gen.index(eos) + 1] if eos in gen else gen
print(json.dumps({"prompt_ids": ids, "greedy": gen}))
"""


def test_safetensors_export_reloads_in_plain_transformers(tiny_run, tmp_path):
    from tuneloop.chat.template import encode_chat
    from tuneloop.export import export_model
    from tuneloop.models.loading import load_tokenizer

    out = tmp_path / "exported"
    record = export_model(tiny_run, "safetensors", out)
    assert record["merge_max_abs_diff"] < 1e-3 and record["reload_max_abs_diff"] < 1e-4
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "chat_template.jinja", "export.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "adapter_config.json").exists()

    # A fresh process that knows nothing of tuneloop or PEFT.
    done = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(out), json.dumps(QUESTION)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])

    # Same prompt ids as training: the prompt part of encode_chat on the full conversation.
    tokenizer = load_tokenizer(tiny_run)
    answered = QUESTION + [{"role": "assistant", "content": "Within 45 days."}]
    encoded = encode_chat(tokenizer, answered)
    prompt_part = encoded.input_ids[: encoded.assistant_spans[0][0]]
    assert reloaded["prompt_ids"] == prompt_part
    assert reloaded["greedy"] == adapter_greedy_ids(tiny_run)


def test_merge_check_refuses_a_corrupt_adapter_and_writes_nothing(tiny_run, tmp_path):
    """NaN in an adapter weight: adapter and merged logits cannot agree, so nothing is exported."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tuneloop.export import export_model

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights_file = run / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_file)
    name = next(n for n in weights if "lora_B" in n)
    weights[name][0, 0] = float("nan")
    save_file(weights, weights_file)
    with pytest.raises(UserError, match="drifts"):
        export_model(run, "safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_gguf_export_reads_back_with_the_same_answers(small_vocab_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.chat.template import render_prompt_ids
    from tuneloop.export import export_model
    from tuneloop.models.generation import generate_ids
    from tuneloop.models.loading import load_tokenizer

    out = tmp_path / "gguf"
    record = export_model(small_vocab_run, "gguf", out)
    assert record["readback_same_greedy_answers"] and record["readback_max_abs_diff"] < 1e-4

    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32).eval()
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    prompt = render_prompt_ids(tokenizer, QUESTION)
    assert prompt == render_prompt_ids(load_tokenizer(small_vocab_run), QUESTION)
    assert generate_ids(model, tokenizer, [prompt], 12)[0] == adapter_greedy_ids(small_vocab_run)

    from gguf import GGUFReader

    reader = GGUFReader(out / "model.gguf")
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.1.attn_q.weight", "output_norm.weight"} <= names
    assert "output.weight" not in names  # tied embeddings are written once
    assert str(reader.fields["tokenizer.ggml.model"].contents()) == "gpt2"


def test_gguf_f16_is_half_the_size_and_close(small_vocab_run, tmp_path):
    from tuneloop.export import export_model

    f32 = export_model(small_vocab_run, "gguf", tmp_path / "f32")
    f16 = export_model(small_vocab_run, "gguf", tmp_path / "f16", gguf_dtype="f16")
    size32 = (tmp_path / "f32" / "model.gguf").stat().st_size
    size16 = (tmp_path / "f16" / "model.gguf").stat().st_size
    assert size16 < 0.6 * size32
    assert f16["readback_max_abs_diff"] < 0.5 and f32["readback_max_abs_diff"] < 1e-4


# --- user errors ----------------------------------------------------------------------------------

def test_export_refuses_a_non_empty_out_dir_and_leaves_it_alone(tiny_run, tmp_path):
    from tuneloop.export import export_model

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_model(tiny_run, "safetensors", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_errors_exit_1_without_traceback(tmp_path):
    cases = [
        ["export", str(tmp_path / "missing-run"), "--out", str(tmp_path / "o")],
        ["export", str(tmp_path), "--out", str(tmp_path / "o2")],  # a directory that is no model
    ]
    for args in cases:
        done = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr and "error:" in done.stderr
        assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()


def test_gguf_q8_0_export_has_q8_0_tensors_and_an_ollama_modelfile(small_vocab_run, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    from tuneloop.export import export_model

    out = tmp_path / "q8"
    record = export_model(small_vocab_run, "gguf", out, gguf_dtype="q8_0")
    assert record["gguf_dtype"] == "q8_0" and record["readback_max_abs_diff"] < 2.0
    types = {t.name: t.tensor_type for t in GGUFReader(out / "model.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0
    assert types["token_embd.weight"] == GGMLQuantizationType.Q8_0 and "output.weight" not in types
    assert types["output_norm.weight"] == GGMLQuantizationType.F32  # 1-D norms stay f32
    f32 = export_model(small_vocab_run, "gguf", tmp_path / "f32")
    assert f32 and (out / "model.gguf").stat().st_size < 0.4 * (tmp_path / "f32" / "model.gguf").stat().st_size
    assert (out / "Modelfile").read_text().splitlines() == ["FROM ./model.gguf", 'PARAMETER stop "<|im_end|>"']
