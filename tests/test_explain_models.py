"""Explain and audit on tiny fine-tunes: attributions checked against a known answer, a planted bias
flagged (and its balanced twin not), the audit gate's exit code, and the offline explain page."""

from __future__ import annotations

import re

import pytest

from explain_support import (COPY_WORDS, FEMALE, MALE, PRODUCTS, copy_records, support_record, support_records,
                             train_copy_model, train_tiny, write_jsonl)
from tuneloop.chat.template import render_prompt_ids
from tuneloop.cli.main import main
from tuneloop.explain.attribution import METHODS, attribute_answer
from tuneloop.explain.audit import run_audit
from tuneloop.models.generation import generate_ids
from tuneloop.models.loading import load_model_and_tokenizer

pytestmark = pytest.mark.slow


def _exit_code(args: list[str]) -> int:
    """The CLI's exit code, in process (main returns normally on success and exits otherwise)."""
    try:
        main(args)
    except SystemExit as e:
        return e.code or 0
    return 0


@pytest.fixture(scope="module")
def copy_models(tmp_path_factory):
    """(untrained, trained) copy models; see :func:`explain_support.train_copy_model`."""
    return train_copy_model(tmp_path_factory.mktemp("copy"))


def _answers(model, tokenizer, records: list[dict]) -> list[str]:
    prompts = [render_prompt_ids(tokenizer, r["messages"][:1]) for r in records]
    return [tokenizer.decode([i for i in ids if i != tokenizer.eos_token_id])
            for ids in generate_ids(model, tokenizer, prompts, max_new_tokens=3)]


def test_the_copy_model_copies_the_marked_word(copy_models):
    base, tuned = copy_models
    seen = {r["messages"][0]["content"] for r in copy_records(2000, 2)}  # its training prompts (seed 2)
    heldout = [r for r in copy_records(80, 7) if r["messages"][0]["content"] not in seen][:64]
    references = [r["messages"][1]["content"] for r in heldout]
    for directory, least, most in ((tuned, 62, 64), (base, 0, 8)):  # the untrained twin: chance is 1/16
        model, tokenizer = load_model_and_tokenizer(directory)
        correct = sum(a == r for a, r in zip(_answers(model, tokenizer, heldout), references))
        assert least <= correct <= most, (directory.name, correct)


_IG_MISSES = pytest.mark.xfail(strict=True, reason="issue 24: integrated gradients (16 steps from the pad embedding) "
                               "scores the prompt's first word (3.08 nats) above the marked word (2.51) on one of the "
                               "eight prompts; ablation and Shapley rank the marked word first on all eight")


@pytest.mark.parametrize("method", [m if m != "integrated-gradients" else pytest.param(m, marks=_IG_MISSES)
                                    for m in METHODS])
def test_the_marked_token_gets_the_largest_attribution(copy_models, method):
    model, tokenizer = load_model_and_tokenizer(copy_models[1])
    records = copy_records(8, 11)
    for record in records:
        prompt, answer = record["messages"][:1], record["messages"][1]["content"]
        result = attribute_answer(model, tokenizer, prompt, target=None, method=method, max_new_tokens=3)
        assert "".join(result.input_tokens) == prompt[0]["content"]  # the user message's tokens, nothing else
        assert result.target == answer, (prompt, result.target)  # the model's own answer is the copy
        marked = result.input_tokens.index(answer)  # the word after "=": the other copy of it has a space
        others = [s for i, s in enumerate(result.scores) if i != marked]
        # Every method puts the marked word first among the prompt's tokens (four fillers, the marker, the
        # word), by a clear margin: removing it leaves nothing to copy, removing a filler changes little.
        assert result.scores[marked] > 1.0 + max(others), (method, list(zip(result.input_tokens, result.scores)))


def _audit_data(tmp_path):
    # Every request is a refund the policy approves, whoever asks: the reference does not depend on the name.
    rows = [support_record(FEMALE[i % 4] if i % 2 == 0 else MALE[i % 4], "refund", PRODUCTS[i % 3], "approved")
            for i in range(24)]
    return write_jsonl(tmp_path / "refunds.jsonl", rows)


def test_planted_name_gender_bias_is_flagged_and_the_balanced_twin_is_not(tiny_model_dir, tmp_path):
    data = _audit_data(tmp_path)
    biased = train_tiny(tiny_model_dir, tmp_path, "biased", support_records(240, 0, biased=True), steps=60)
    balanced = train_tiny(tiny_model_dir, tmp_path, "balanced", support_records(240, 0, biased=False), steps=60)

    flagged = run_audit(str(biased), data, probes=["names"], progress=False)["probes"][0]
    assert flagged["n_records"] == 24 and flagged["gap_groups"] == ["female", "male"]
    assert flagged["bias_gap_ci95"][0] > 0 and flagged["flagged"], flagged
    assert flagged["quality"]["female"] > flagged["quality"]["male"]
    assert flagged["change_rate_ci95"][0] > 0

    fair = run_audit(str(balanced), data, probes=["names"], progress=False)["probes"][0]
    assert fair["bias_gap_ci95"][0] <= 0 <= fair["bias_gap_ci95"][1] and not fair["flagged"], fair
    assert fair["quality"]["female"] == fair["quality"]["male"] == 1.0  # it learned the policy, for everyone

    # The CLI's gate fails the biased model with exit 3 and writes the report anyway.
    out = tmp_path / "audit"
    assert _exit_code(["audit", "--model", str(biased), "--data", str(data), "--probe", "names",
                       "--gate", "bias_gap <= 0.05", "--out", str(out), "--quiet"]) == 3
    page = (out / "audit.html").read_text()
    assert "CI excludes zero" in page and "Probe: names" in page
    assert _exit_code(["audit", "--model", str(balanced), "--data", str(data), "--probe", "names",
                       "--gate", "bias_gap_ci_low <= 0", "--out", str(tmp_path / "audit2"), "--quiet"]) == 0


def test_audit_rejects_bad_input_before_loading_a_model(tmp_path, capsys):
    data = _audit_data(tmp_path)
    assert _exit_code(["audit", "--model", "no/such-model-anywhere", "--data", str(data), "--probe", "names",
                       "--gate", "bias_gapp <= 0.05"]) == 1
    assert "did you mean 'bias_gap'" in capsys.readouterr().err


def test_explain_page_for_wrong_answers_side_by_side(copy_models, tmp_path):
    import json

    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    rows = [{"id": f"r{i}", "prompt": r["messages"][0]["content"], "reference": r["messages"][1]["content"],
             "prediction": COPY_WORDS[0], "correct": i % 2 == 0} for i, r in enumerate(copy_records(4, 3))]
    (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base, tuned = copy_models
    main_args = ["explain", "--model", str(tuned), "--baseline", str(base),
                 "--data", str(eval_dir / "predictions.jsonl"), "--wrong-only", "--quiet"]
    assert _exit_code(main_args) == 0
    page = (eval_dir / "explain" / "index.html").read_text()
    assert re.findall(r"id='ex-(r\d)'", page) == ["r1", "r3"]  # the wrong ones, where the eval report links
    assert page.count("class=panel") == 4 and "baseline: " in page and "model: " in page
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # offline: nothing fetched
    data = json.loads((eval_dir / "explain" / "explanations.json").read_text())
    assert data["items"][0]["model"]["target"] == data["items"][0]["baseline"]["target"] == COPY_WORDS[0]
    assert data["items"][0]["model"]["target_log_prob"] != data["items"][0]["baseline"]["target_log_prob"]
