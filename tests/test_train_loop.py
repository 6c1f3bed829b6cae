"""Recipe smoke tests on the tiny model: the loss falls, every trainable weight moves, packing is exact,
and runs that would train nothing stop with a message."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures_train.helpers import NO_TRAINABLE, TRAIN, tiny_recipe
from tuneloop.config.recipe import recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.paths import read_jsonl
from tuneloop.train import run_training


def _initial_adapter(recipe):
    from tuneloop.train.methods import Precision, setup_model

    prepared = setup_model(recipe, recipe.model, Precision("fp32", None, torch.float32), torch.device("cpu"))
    return {n: p.detach().clone() for n, p in prepared.model.named_parameters() if p.requires_grad}


def test_lora_run_lowers_loss_and_moves_every_adapter_weight(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    recipe = recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, validation=True, epochs=3, eval_every=6))
    run_dir = run_training(recipe)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    losses = [m["loss"] for m in metrics]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    assert all({"step", "loss", "learning_rate", "tokens_per_s"} <= m.keys() for m in metrics)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["validation_loss"] < summary["initial_validation_loss"]
    assert summary["tokens_per_s"] > 0 and summary["peak_rss_gb"] > 0
    assert summary["targeted_modules"]["q_proj"] == 2  # all-linear: every projection of both layers
    assert (run_dir / "samples.jsonl").is_file() and (run_dir / "recipe.resolved.yaml").is_file()
    assert (run_dir / "checkpoints" / "best" / "trainable.safetensors").is_file()

    # Every adapter tensor moved from its (seeded, so reproducible) initial value.
    initial = _initial_adapter(recipe)
    trained = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert len(trained) == len(initial) > 0
    for name, before in initial.items():
        key = name.replace(".default", "")  # PEFT drops the adapter name when saving
        assert not torch.equal(trained[key], before), f"{name} did not change"

    # The run directory loads as a model: its adapter on the base named in tuneloop_base.json.
    from tuneloop.models.loading import resolve_model

    resolved = resolve_model(run_dir)
    assert resolved.adapter == run_dir / "adapter" and resolved.path == tiny_model_dir


def test_full_run_changes_every_weight(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    recipe = recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, method="full", max_steps=3,
                                          learning_rate=1e-3))
    run_dir = run_training(recipe)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(run_dir / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []


def _loss(loss_model, rows, pad_id):
    from tuneloop.train.data import collate

    batch = collate(rows, pad_id)
    with torch.no_grad():
        total, count = loss_model(**batch)
    return float(total), int(count)


def test_packed_loss_equals_unpacked_loss(tiny_model_dir):
    from tuneloop.models.loading import load_model_and_tokenizer
    from tuneloop.train.data import make_rows, read_chat_jsonl, tokenize_records
    from tuneloop.train.loss import SupervisedCausalLM

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    samples, _ = tokenize_records(tokenizer, read_chat_jsonl(TRAIN)[:12], max_seq_len=256)
    loss_model = SupervisedCausalLM(model).eval()
    packed = make_rows(samples, 256, packing=True)
    assert len(packed) < len(samples)  # several samples really share a row
    with torch.no_grad():
        packed_sum, packed_n = _loss(loss_model, packed, tokenizer.pad_token_id)
        single = [_loss(loss_model, [row], tokenizer.pad_token_id) for row in make_rows(samples, 256, False)]
        padded_sum, padded_n = _loss(loss_model, make_rows(samples, 256, False), tokenizer.pad_token_id)
    assert packed_n == sum(n for _, n in single) == padded_n
    assert packed_sum == pytest.approx(sum(s for s, _ in single), rel=1e-5)
    assert padded_sum == pytest.approx(packed_sum, rel=1e-5)


def test_no_trainable_tokens_stops_with_a_clear_message(tiny_model_dir, tmp_path):
    raw = tiny_recipe(tiny_model_dir, tmp_path)
    raw["data"]["train"] = str(NO_TRAINABLE)
    # Training reads through the same validator as `data validate`: the first record without an answer
    # is named with its file and line.
    with pytest.raises(UserError, match=r"no_trainable.jsonl:1: messages: has no assistant message"):
        run_training(recipe_from_dict(raw))
    assert not (tmp_path / "t" / "adapter").exists()


def test_guard_stops_a_run_whose_weights_get_no_gradient(tiny_model_dir):
    from tuneloop.models.loading import load_model
    from tuneloop.train.loop import check_gradients, check_moved, lora_b_snapshot

    model = load_model(tiny_model_dir)
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad()
    with pytest.raises(UserError, match="got no gradient on the first step"):
        check_gradients(model)
    fake_b = {"model.norm.weight": model.model.norm.weight.detach().clone()}
    with pytest.raises(UserError, match="did not move"):
        check_moved(model, fake_b)
    assert lora_b_snapshot(model) == {}


def test_qlora_without_cuda_is_a_clear_error(tiny_model_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA can run")
    with pytest.raises(UserError, match="qlora needs a CUDA GPU"):
        run_training(recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, method="qlora")))


def test_packed_attention_matches_stock_sdpa_block_mask(tiny_model_dir):
    """Our per-sample attention gives the loss of transformers' own block-diagonal-mask SDPA."""
    from tuneloop.models.loading import load_model_and_tokenizer
    from tuneloop.train.attention import segment_buckets
    from tuneloop.train.data import make_rows, read_chat_jsonl, tokenize_records
    from tuneloop.train.loss import SupervisedCausalLM

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    samples, _ = tokenize_records(tokenizer, read_chat_jsonl(TRAIN)[:12], max_seq_len=256)
    rows = make_rows(samples, 256, packing=True)
    stock = SupervisedCausalLM(model, packed_attention=False)
    stock_loss = _loss(stock, rows, tokenizer.pad_token_id)
    packed = SupervisedCausalLM(model, packed_attention=True)
    assert packed.packed_attention
    assert _loss(packed, rows, tokenizer.pad_token_id) == pytest.approx(stock_loss, rel=1e-5)
    # Buckets: every token gathered exactly once.
    from tuneloop.train.data import collate

    positions = collate(rows, tokenizer.pad_token_id)["position_ids"]
    gathered = torch.cat([b[b >= 0] for b in segment_buckets(positions)])
    assert sorted(gathered.tolist()) == list(range(positions.numel()))


def test_early_stopping_keeps_the_best_checkpoint(tiny_model_dir, tmp_path):
    # min_delta larger than any step's improvement: only the first evaluation counts as a gain.
    raw = tiny_recipe(tiny_model_dir, tmp_path, validation=True, max_steps=12, eval_every=1,
                      early_stopping={"patience": 2, "min_delta": 5.0})
    run_dir = run_training(recipe_from_dict(raw))
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluated = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "validation_loss" in m]
    assert summary["steps"] == 3 and [m["step"] for m in evaluated] == [1, 2, 3]  # patience 2
    assert summary["best_step"] == 1
    best_meta = json.loads((run_dir / "checkpoints" / "best" / "state.json").read_text())
    assert best_meta["state"]["step"] == 1


def test_packed_and_unpacked_runs_take_the_same_steps_and_reach_the_same_loss(tiny_model_dir, tmp_path):
    """batch_size counts examples per step (TRL's meaning): packing only removes the padding."""
    runs = {}
    for packing in (True, False):
        recipe = recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, name=f"p{packing}", packing=packing,
                                              epochs=2, batch_size=4, validation=True, eval_every=6))
        run_dir = run_training(recipe)
        runs[packing] = (read_jsonl(run_dir / "metrics.jsonl"), json.loads((run_dir / "summary.json").read_text()))
    (packed, packed_summary), (padded, padded_summary) = runs[True], runs[False]
    examples = sum(1 for _ in open(TRAIN))
    assert packed_summary["steps"] == padded_summary["steps"] == 2 * -(-examples // 4)
    assert packed_summary["examples_per_step"] == padded_summary["examples_per_step"] == 4
    # Same examples in the same order: every step's loss and the validation losses agree (fp32 noise only).
    assert [m["loss"] for m in packed] == pytest.approx([m["loss"] for m in padded], rel=1e-3, abs=1e-4)
    assert packed_summary["validation_loss"] == pytest.approx(padded_summary["validation_loss"], rel=1e-3)
    assert packed_summary["trained_tokens"] == padded_summary["trained_tokens"]


def test_token_budget_batching_is_explicit_and_reported(tiny_model_dir, tmp_path):
    settings = tiny_recipe(tiny_model_dir, tmp_path, name="tok", batch_tokens=256)
    del settings["train"]["batch_size"]  # the helper sets it; a token budget replaces it
    recipe = recipe_from_dict(settings)
    run_dir = run_training(recipe)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["batching"] == "tokens" and summary["examples_per_step"] > 1
    assert summary["steps"] == summary["units_per_epoch"] < sum(1 for _ in open(TRAIN))
    with pytest.raises(UserError, match="batch_size .* or batch_tokens"):
        recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, batch_tokens=256, batch_size=4))
    with pytest.raises(UserError, match="needs packing: true"):
        settings["train"]["packing"] = False
        recipe_from_dict(settings)
