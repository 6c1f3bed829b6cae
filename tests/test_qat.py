"""Quantization-aware training and quantized export on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from tuneloop.config.recipe import QuantizationAwareConfig, recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.models.quantized import quantize_model

CHATS = [{"messages": [{"role": "user", "content": f"What is code {i}?"},
                       {"role": "assistant", "content": f"Code {i} means {'red' if i % 2 else 'blue'}."}]}
         for i in range(24)]


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qat") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    return path


def qat_recipe(tiny_model_dir, chat_file, out, method="lora", qa=None):
    return recipe_from_dict({
        "name": f"qat-{method}", "model": str(tiny_model_dir), "method": method, "output_dir": str(out),
        "data": {"train": str(chat_file), "validation": str(chat_file)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 5e-3, "max_seq_len": 128,
                  "eval_every": 6, "save_every": 100},
        "tracking": {"backend": "none"},
        "quantization_aware": qa if qa is not None else {"weights": "int4", "activations": "int8", "group_size": 32},
    })


def test_qat_only_for_full_and_lora(tiny_model_dir, chat_file, tmp_path):
    with pytest.raises(UserError, match="quantization_aware works with method full or lora"):
        qat_recipe(tiny_model_dir, chat_file, tmp_path, method="dora")


def test_lora_qat_forward_equals_the_deployed_integer_model(tiny_model_dir):
    """Training sees exactly what serving computes: fake-quantized merged weights == real int model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneloop.train import qat

    qa = QuantizationAwareConfig()
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    ids = torch.randint(0, 2000, (2, 12))
    float_logits = model(ids).logits.detach()
    assert qat.prepare_lora(model, qa) == 14  # 7 linears x 2 layers
    fake = model(ids).logits
    fake.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    twin = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    twin.load_state_dict(model.state_dict(), strict=False)
    real = quantize_model(twin.merge_and_unload(), qa)
    with torch.no_grad():
        real_logits = real(ids).logits
    assert torch.allclose(fake.detach(), real_logits, atol=1e-4)
    assert (float_logits - real_logits).abs().max() > 1e-3  # quantization really changes the model


@pytest.mark.parametrize("method", ["lora", "full"])
def test_qat_run_exports_a_smaller_integer_model_that_loads(tiny_model_dir, chat_file, tmp_path, method):
    from tuneloop.export import export_model
    from tuneloop.models.generation import generate_chat
    from tuneloop.models.loading import load_model_and_tokenizer
    from tuneloop.train import run_training

    run_dir = run_training(qat_recipe(tiny_model_dir, chat_file, tmp_path, method))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["validation_loss"] < summary["initial_validation_loss"]
    record = export_model(run_dir, "quantized", tmp_path / "int4")
    assert record["trained"] == "quantization-aware" and record["quantization"]["weights"] == "int4"
    model, tokenizer = load_model_and_tokenizer(tmp_path / "int4")
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ != "Parameter"
    answer = generate_chat(model, tokenizer, [[{"role": "user", "content": "What is code 3?"}]], 8)[0]
    assert answer.completion_tokens > 0
    float_export = export_model(run_dir, "safetensors", tmp_path / "float")
    int_size = (tmp_path / "int4" / "model.safetensors").stat().st_size
    float_size = sum(p.stat().st_size for p in (tmp_path / "float").glob("*.safetensors"))
    assert float_export and int_size < float_size


def test_post_training_quantization_of_a_plain_model(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from tuneloop.cli.main import cli

    result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--quantize", "int8",
                                      "--out", str(tmp_path / "ptq")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "ptq" / "tuneloop_quantization.json").read_text())
    assert meta == {"weights": "int8", "activations": "int8", "group_size": 32, "trained": "post-training",
                    "embeddings": "int8", "scale_dtype": "bfloat16"}
    refused = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--format", "quantized",
                                       "--out", str(tmp_path / "q2")])
    assert isinstance(refused.exception, UserError)
    assert "was not trained with quantization_aware" in str(refused.exception)
    assert not (tmp_path / "q2").exists()


def test_quantized_export_is_safetensors_that_plain_transformers_loads(tiny_model_dir, tmp_path):
    """No pickle in the export; a fresh interpreter with only transformers (and torchao) loads it and
    gives the logits tuneloop's own loader gives. The embedding table is int8 too, stored once: the
    tied LM head shares it after loading."""
    import subprocess
    import sys

    import torch
    from safetensors import safe_open

    from tuneloop.export import export_model
    from tuneloop.models.loading import load_model

    out = tmp_path / "int4"
    record = export_model(tiny_model_dir, "quantized", out, quantize="int4")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.pt")) and not list(out.glob("*.bin"))
    with safe_open(out / "model.safetensors", framework="pt") as f:
        keys = list(f.keys())
        table = f.get_tensor("model.embed_tokens._weight_qdata")
    assert table.dtype == torch.int8 and not [k for k in keys if k.startswith("lm_head")]
    assert 0 < record["float_vs_quantized_max_abs_logit_diff"] < 1.0
    ids = [[1, 20, 300, 4000]]
    ours = load_model(out)(torch.tensor(ids)).logits[0, -1, :5].tolist()
    script = ("import json, sys, torch; from transformers import AutoModelForCausalLM; "
              f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); "
              "print(type(m.model.layers[0].mlp.down_proj.weight).__name__); "
              f"print(json.dumps(m(torch.tensor({ids})).logits[0, -1, :5].tolist())); "
              "print(type(m.model.embed_tokens.weight).__name__, m.lm_head.weight is m.model.embed_tokens.weight); "
              "print('tuneloop' in sys.modules)")
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           timeout=600).stdout.strip().splitlines()
    assert lines[0] == "IntxUnpackedToInt8Tensor" and lines[3] == "False"
    assert lines[2] == "IntxUnpackedToInt8Tensor True"
    assert json.loads(lines[1]) == pytest.approx(ours, abs=1e-5)


def test_a_pickle_with_a_payload_is_refused_not_run(tiny_model_dir, tmp_path):
    """A downloaded "quantized model" in the old pickle format never gets unpickled."""
    import pickle
    import shutil

    from tuneloop.models.loading import load_model

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # unpickling this creates the marker file

    evil = tmp_path / "evil-model"
    shutil.copytree(tiny_model_dir, evil)
    (evil / "model.safetensors").unlink()
    (evil / "tuneloop_quantization.json").write_text(json.dumps({"weights": "int4", "activations": "int8",
                                                                 "group_size": 32, "trained": "post-training"}))
    (evil / "quantized_model.pt").write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(UserError, match="is a pickle .*does not load it"):
        load_model(evil)
    assert not marker.exists()
    # and torch itself, as every tuneloop load calls it (weights_only=True), refuses the payload too
    import torch

    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil / "quantized_model.pt", weights_only=True)
    assert not marker.exists()


def test_serve_answers_with_the_quantized_export(tiny_model_dir, tmp_path):
    """`tuneloop serve --model DIR` on an int4 export: the greedy answer over HTTP is the one
    tuneloop's own generation gives with the same quantized weights."""
    import httpx

    from tuneloop.export import export_model
    from tuneloop.models.generation import generate_chat
    from tuneloop.models.loading import load_model_and_tokenizer
    from tuneloop.serve.app import build
    from tuneloop.serve.runner import ServerThread
    from tuneloop.serve.settings import ServeSettings

    out = tmp_path / "int4"
    export_model(tiny_model_dir, "quantized", out, quantize="int4")
    messages = [{"role": "user", "content": "What is code 3?"}]
    model, tokenizer = load_model_and_tokenizer(out)
    expected = generate_chat(model, tokenizer, [messages], 8)[0]
    served = build([str(out)], ServeSettings(db_url=f"sqlite:///{tmp_path / 'serve.db'}", max_tokens_limit=16))
    try:
        with ServerThread(served.app) as thread:
            response = httpx.post(f"{thread.url}/v1/chat/completions", timeout=60, json={
                "model": "int4", "messages": messages, "max_tokens": 8, "temperature": 0})
    finally:
        served.close()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == expected.completion_tokens > 0
    # generate_chat strips the answer; the server returns it as decoded
    assert body["choices"][0]["message"]["content"].strip() == expected.text
