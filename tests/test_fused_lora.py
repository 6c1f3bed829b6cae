"""The fused LoRA linears (train/fused_lora.py) give PEFT's forward and gradients, keep PEFT's names
and adapter files, and train the tiny model along the same loss curve."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tuneloop.train.dropout import use_fast_dropout
from tuneloop.train.fused_lora import fuse_lora, lora_groups, unfuse_lora


class Block(nn.Module):
    """An attention-shaped toy: q/k/v read one input (grouped query sizes), o_proj reads another."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden // 2, bias=False)
        self.v_proj = nn.Linear(hidden, hidden // 2, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.o_proj(q * torch.cat([k, v], dim=-1).sigmoid())


def peft_block(dropout: float, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = Block().to(dtype)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, init_lora_weights=False,  # B != 0
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(model, config)
    use_fast_dropout(model)  # what tuneloop trains with: its masks are the ones the fused layer draws
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model.train()


def forward_backward(model, x, autocast: torch.dtype | None, seed: int = 1):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout masks on both sides
    with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
        out = model(x)
    grad = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out.float() * grad).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out.detach().float(), x.grad.float(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_layers_match_peft_forward_and_gradients(dropout, precision):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    autocast = torch.bfloat16 if precision == "bf16" else None
    model = peft_block(dropout, dtype)
    x = torch.randn(3, 7, 32, dtype=dtype)
    stock = forward_backward(model, x, autocast)
    assert fuse_lora(model) == 4
    fused = forward_backward(model, x, autocast)
    # bf16: both sides round every matmul output to bf16, in different places (PEFT also rounds the
    # adapter's output before scaling and adding it); fp32: the same sums in a different order.
    tol = dict(rtol=2e-2, atol=2e-2) if precision == "bf16" else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[0], stock[0], **tol)
    torch.testing.assert_close(fused[1], stock[1], **tol)
    assert fused[2].keys() == stock[2].keys() and len(stock[2]) == 8  # A and B of 4 layers
    for name in stock[2]:
        torch.testing.assert_close(fused[2][name], stock[2][name], **tol, msg=lambda m: f"{name}: {m}")


def test_grouping_and_a_model_that_does_not_share_the_input():
    model = peft_block(0.0)
    groups = lora_groups(model)
    names = {tuple(sorted(n for n, m in model.named_modules() if any(m is g for g in group))) for group in groups}
    assert len(groups) == 2 and any(len(g) == 3 for g in groups)  # q/k/v together, o_proj alone
    x = torch.randn(2, 5, 32)
    expected = forward_backward(model, x, None)
    fuse_lora(model)
    block = model.base_model.model

    def unshared(x):  # k and v read a different tensor than q: the group must notice
        q, k, v = block.q_proj(x), block.k_proj(x * 1.0), block.v_proj(x * 1.0)
        return block.o_proj(q * torch.cat([k, v], dim=-1).sigmoid())

    block.forward = unshared
    for _ in range(2):  # the first call discovers it, the second runs each member alone
        got = forward_backward(model, x, None)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
        for name in expected[2]:
            torch.testing.assert_close(got[2][name], expected[2][name], rtol=1e-5, atol=1e-6)
    assert not block.q_proj._tuneloop_lora_group.shared
    assert names  # (names only for a readable failure)


def test_eval_mode_and_unfuse_run_peft_forward_and_names_are_unchanged(tmp_path):
    from peft import PeftModel

    model = peft_block(0.1)
    keys = list(model.state_dict())
    x = torch.randn(2, 5, 32)
    model.eval()
    with torch.no_grad():
        before = model(x)
    fuse_lora(model)
    forward_backward(model.train(), x, None)  # concatenates the q/k/v base weights
    assert list(model.state_dict()) == keys
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)  # eval: PEFT's forward, same weights
    model.save_pretrained(tmp_path / "adapter")
    assert unfuse_lora(model) == 4
    block = model.base_model.model
    storages = {m.base_layer.weight.untyped_storage().data_ptr() for m in (block.q_proj, block.k_proj, block.v_proj)}
    assert len(storages) == 3  # each weight in its own storage again (safetensors refuses shared ones)

    torch.manual_seed(0)
    fresh = Block()
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before)


def test_training_gives_the_same_loss_curve_fused_or_not(tiny_model_dir, tmp_path):
    from fixtures_train.helpers import tiny_recipe
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.train import run_training

    curves = {}
    for fused in (False, True):
        recipe = tiny_recipe(tiny_model_dir, tmp_path / str(fused), max_steps=8, precision="fp32",
                             fused_lora=fused)
        recipe["lora"]["dropout"] = 0.1
        run_dir = run_training(recipe_from_dict(recipe))
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[fused] = [r["loss"] for r in rows if "loss" in r]
    assert len(curves[True]) == 8 and curves[True][-1] < curves[True][0]
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)
