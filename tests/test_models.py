"""Model layer: catalog numbers, resolution of model references, estimates against real models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tuneloop.errors import UserError
from tuneloop.models import catalog
from tuneloop.models.estimate import estimate, lora_parameters
from tuneloop.models.loading import resolve_model


def test_catalog_has_ten_real_models_with_licences():
    assert len(catalog.CATALOG) >= 10
    names = {c.name for c in catalog.CATALOG}
    assert {"smollm2-135m-instruct", "llama-3.1-8b-instruct", "mistral-7b-instruct-v0.3"} <= names
    for card in catalog.CATALOG:
        assert card.license and card.context >= 2048 and "/" in card.hub_id


@pytest.mark.parametrize("name, billions", [
    ("smollm2-135m-instruct", 0.1345), ("qwen2.5-0.5b-instruct", 0.494), ("llama-3.2-1b-instruct", 1.236),
    ("llama-3.1-8b-instruct", 8.030), ("mistral-7b-instruct-v0.3", 7.248), ("qwen2.5-7b-instruct", 7.616),
])
def test_parameter_counts_match_published_sizes(name, billions):
    assert catalog.get_card(name).parameters / 1e9 == pytest.approx(billions, rel=0.01)


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(UserError, match="did you mean 'smollm2-135m-instruct'"):
        resolve_model("smollm2-135m-instrct")


def test_directory_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a model or a run"):
        resolve_model(tmp_path)


def test_local_directory_and_run_directory_resolve(tiny_model_dir, tmp_path):
    assert resolve_model(tiny_model_dir).path == tiny_model_dir
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(run / "adapter")
    (run / "tuneloop_base.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    resolved = resolve_model(run)
    assert resolved.path == tiny_model_dir and resolved.adapter == run / "adapter"


def test_lora_parameter_count_equals_peft(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    card = catalog.ModelCard("tiny", "x/tiny", "llama", config.num_hidden_layers, config.hidden_size,
                             config.intermediate_size, config.num_attention_heads,
                             config.num_key_value_heads, config.vocab_size, 2048, "none", False, True)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameters(card, r=4) == trainable
    assert card.parameters == sum(p.numel() for p in model.base_model.model.parameters() if not p.requires_grad)


def test_estimate_grows_with_method_and_batch():
    card = catalog.get_card("smollm2-135m-instruct")
    lora = estimate(card, "lora", 512, 8, measure_peak=False)
    full = estimate(card, "full", 512, 8, measure_peak=False)
    small = estimate(card, "lora", 512, 1, measure_peak=False)
    assert small.total_gb < lora.total_gb < full.total_gb
    assert full.trainable_parameters == card.parameters
    assert full.flops_per_token > lora.flops_per_token


@pytest.mark.slow
def test_embedded_model_converts_and_answers():
    """The embedded GGUF converts to a plain HF directory that loads without quantization marks."""
    from tuneloop.models.generation import generate_chat
    from tuneloop.models.loading import load_model_and_tokenizer

    resolved = resolve_model("smollm2-135m-instruct")
    config = json.loads((resolved.path / "config.json").read_text())
    assert "quantization_config" not in config
    model, tokenizer = load_model_and_tokenizer(resolved)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert sum(p.numel() for p in model.parameters()) == catalog.get_card("smollm2-135m-instruct").parameters
    answer = generate_chat(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]],
                           max_new_tokens=20)[0].text
    assert "Paris" in answer


def test_cli_help_imports_no_heavy_library():
    code = ("import sys; from click.testing import CliRunner; from tuneloop.cli.main import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'fastapi') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_models_cli_list_and_estimate():
    from click.testing import CliRunner

    from tuneloop.cli.main import cli

    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list", "--json"])
    assert listed.exit_code == 0 and len(json.loads(listed.output)) == len(catalog.CATALOG)
    est = runner.invoke(cli, ["models", "estimate", "smollm2-135m-instruct", "--method", "full", "--json"])
    assert est.exit_code == 0, est.output
    assert json.loads(est.output)["trainable_parameters"] == catalog.get_card("smollm2-135m-instruct").parameters


def test_estimate_for_a_local_model_directory(tiny_model_dir):
    from tuneloop.models.loading import card_for

    card = card_for(str(tiny_model_dir))
    assert (card.layers, card.hidden, card.vocab, card.tied_embeddings) == (2, 64, 49152, True)
    assert estimate(card, "lora", 128, 2, measure_peak=False).trainable_parameters == lora_parameters(card)
