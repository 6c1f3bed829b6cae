"""The training step's faster pieces give the stock results: matmul attention for short packed samples,
and LoRA dropout with a cheaper mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuneloop.train.attention import matmul_causal_attention
from tuneloop.train.dropout import FastDropout, keep_mask, use_fast_dropout


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_matmul_attention_matches_sdpa_with_grouped_heads(kv_heads):
    torch.manual_seed(0)
    q = torch.randn(3, 4, 17, 8, requires_grad=True)
    k = torch.randn(3, kv_heads, 17, 8, requires_grad=True)
    v = torch.randn(3, kv_heads, 17, 8, requires_grad=True)
    grad = torch.randn(3, 17, 4, 8)

    ours = matmul_causal_attention(q, k, v)  # (S, L, H, D)
    ours.backward(grad)
    ours_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    repeat = 4 // kv_heads
    stock = F.scaled_dot_product_attention(q, k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1),
                                           is_causal=True).transpose(1, 2)
    stock.backward(grad)

    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(ours_grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_packed_loss_is_the_same_on_either_attention_path(tiny_model_dir, monkeypatch):
    from tuneloop.models.loading import load_model_and_tokenizer
    from tuneloop.train import attention
    from tuneloop.train.data import collate, make_rows, read_chat_jsonl, tokenize_records
    from tuneloop.train.loss import SupervisedCausalLM
    from fixtures_train.helpers import TRAIN

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    samples, _ = tokenize_records(tokenizer, read_chat_jsonl(TRAIN)[:12], max_seq_len=256)
    batch = collate(make_rows(samples, 256, packing=True), tokenizer.pad_token_id)
    loss_model = SupervisedCausalLM(model, packed_attention=True)

    def loss_and_grad():
        model.zero_grad()
        for p in model.parameters():
            p.requires_grad_(True)
        total, count = loss_model(**batch)
        (total / count).backward()
        return total.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    matmul_loss, matmul_grad = loss_and_grad()
    monkeypatch.setattr(attention, "MATMUL_ATTENTION_MAX_LEN", 0)  # every bucket through SDPA
    sdpa_loss, sdpa_grad = loss_and_grad()
    assert matmul_loss == pytest.approx(sdpa_loss, rel=1e-5)
    torch.testing.assert_close(matmul_grad, sdpa_grad, rtol=1e-4, atol=1e-6)


def test_keep_mask_keeps_one_minus_p_and_follows_the_seed():
    torch.manual_seed(1)
    first = keep_mask(torch.Size([300, 1001]), 0.1, torch.device("cpu"))
    assert first.shape == (300, 1001) and first.dtype == torch.bool
    # 300,300 draws: the standard error of the rate is ~0.0005.
    assert first.float().mean().item() == pytest.approx(0.9, abs=0.003)
    torch.manual_seed(1)
    assert torch.equal(first, keep_mask(torch.Size([300, 1001]), 0.1, torch.device("cpu")))
    assert not torch.equal(first, keep_mask(torch.Size([300, 1001]), 0.1, torch.device("cpu")))


def test_fast_dropout_scales_what_it_keeps_and_passes_gradients_through_the_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 128, requires_grad=True)
    dropout = FastDropout(0.25)
    y = dropout(x)
    kept = y != 0
    assert 0.6 < kept.float().mean().item() < 0.9
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    dropout.eval()
    assert torch.equal(dropout(x), x)


def test_lora_layers_get_the_fast_dropout(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from tuneloop.models.loading import load_model

    model = get_peft_model(load_model(tiny_model_dir), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                                                  target_modules="all-linear"))
    targeted = sum(1 for m in model.modules() if hasattr(m, "lora_dropout") and len(m.lora_dropout))
    assert use_fast_dropout(model) == targeted > 0
    swapped = [d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
    assert all(type(d) is FastDropout and d.p == 0.1 for d in swapped)
    # No dropout configured: PEFT's Identity stays.
    plain = get_peft_model(load_model(tiny_model_dir), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                  target_modules="all-linear"))
    assert use_fast_dropout(plain) == 0


def test_training_set_up_uses_the_fast_dropout_and_compiles_layers_when_asked(tiny_model_dir, tmp_path):
    from fixtures_train.helpers import tiny_recipe
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.train.methods import Precision, setup_model

    def prepared(compile_layers: bool):
        raw = tiny_recipe(tiny_model_dir, tmp_path, compile=compile_layers)
        raw["lora"]["dropout"] = 0.1
        return setup_model(recipe_from_dict(raw), tiny_model_dir, Precision("fp32", None, torch.float32),
                           torch.device("cpu")).model

    model = prepared(False)
    dropouts = [d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
    assert dropouts and all(type(d) is FastDropout for d in dropouts)
    layers = model.get_base_model().model.layers
    assert all(layer._compiled_call_impl is None for layer in layers)
    # Compilation itself happens on the first call; setting it up is instant.
    assert all(layer._compiled_call_impl is not None for layer in prepared(True).get_base_model().model.layers)


@pytest.mark.slow  # compiling even the tiny model's layers takes ~40-100 s on 2 cores,
@pytest.mark.long  # so the opt-in train.compile is checked by `make test-long`
def test_compiled_layers_train_like_eager_ones(tiny_model_dir, tmp_path):
    from fixtures_train.helpers import tiny_recipe
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.paths import read_jsonl
    from tuneloop.train import run_training

    losses = {}
    for compiled in (False, True):
        raw = tiny_recipe(tiny_model_dir, tmp_path, name=f"c{int(compiled)}", max_steps=2, precision="fp32",
                          compile=compiled)
        run_dir = run_training(recipe_from_dict(raw))
        losses[compiled] = [m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl")]
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


@torch.no_grad()
def test_neftune_noise_is_uniform_at_its_scale_in_training_and_absent_in_evaluation(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tuneloop.train.methods import add_neftune_noise

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(0, 1000, (1, 50))
    clean = model.get_input_embeddings()(ids)
    handle = add_neftune_noise(model, alpha=5.0)
    scale = 5.0 / (50 * clean.size(-1)) ** 0.5
    model.train()
    torch.manual_seed(1)
    noise = model.get_input_embeddings()(ids) - clean
    assert noise.abs().max() <= scale * (1 + 1e-5) and noise.abs().max() > 0.95 * scale
    assert float(noise.abs().mean()) == pytest.approx(scale / 2, rel=0.1)  # uniform on [-scale, scale]
    torch.manual_seed(1)
    assert torch.equal(model.get_input_embeddings()(ids) - clean, noise)  # the global generator: resumable
    model.eval()
    assert torch.equal(model.get_input_embeddings()(ids), clean)
    handle.remove()
    model.train()
    assert torch.equal(model.get_input_embeddings()(ids), clean)
