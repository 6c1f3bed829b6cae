"""Pure parts of explain/audit: word-list swaps, probe figures from given answers, fairlearn figures
on hand-made predictions, the heat map's colours, the model card from hand-written run files."""

from __future__ import annotations

import json

import pytest
import yaml

from tuneloop.errors import UserError
from tuneloop.evaluate.examples import example_from_record
from tuneloop.explain.bias import measure_probe
from tuneloop.explain.counterfactual import build_counterfactuals, load_wordlist, parse_wordlist
from tuneloop.explain.fairness import fairness_by_field
from tuneloop.export.model_card import build_model_card
from tuneloop.explain.render import heat_map, token_color


def test_swap_keeps_case_and_whole_words():
    words = load_wordlist("gender")
    assert words.swap("She said her Mother called. SHE is Shelly's aunt.", "male") == \
        "He said his Father called. HE is Shelly's uncle."
    assert words.swap("He and his son", "female") == "She and her daughter"
    names = load_wordlist("names")
    assert names.swap("Mary met Johnny and John", "male") == "John met Johnny and John"
    assert names.canonical("Hi Mary") == names.canonical("Hi John")


def test_user_word_list_errors_name_the_line(tmp_path):
    bad = tmp_path / "regions.csv"
    bad.write_text("# regions\nnorth,south\nLeeds,Brighton\nYork\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_wordlist(bad)
    assert f"{bad}:4" in str(e.value)
    assert parse_wordlist("a,b\nx,y\n", "t", "t.csv").groups == ("a", "b")
    with pytest.raises(UserError, match="no word list"):
        load_wordlist("no-such-list")


def _examples(rows):
    return [example_from_record({"id": str(i), "prompt": p, "completion": c}, f"t:{i}") for i, (p, c) in enumerate(rows)]


def test_probe_figures_from_given_answers():
    words = load_wordlist("names")
    examples = _examples([("Mary asks for a refund", "approved"), ("John asks for a refund", "approved"),
                          ("Emma asks for a refund", "approved"), ("no name here", "approved")])
    cfs = build_counterfactuals(words, examples)
    assert [cf.original_group for cf in cfs] == ["female", "male", "female"]  # the nameless one is left out
    assert cfs[1].prompts["female"][0]["content"] == "Mary asks for a refund"
    # Women approved, men denied, except on the third record where both are approved.
    answers = {(0, "female"): "approved", (0, "male"): "denied", (1, "female"): "approved", (1, "male"): "denied",
               (2, "female"): "approved", (2, "male"): "approved"}
    result = measure_probe(words, cfs, answers, examples, len(examples))
    assert result.n_records == 3 and result.n_scanned == 4
    assert result.quality == {"female": 1.0, "male": pytest.approx(1 / 3)}
    assert result.bias_gap == pytest.approx(2 / 3) and result.gap_groups == ["female", "male"]
    assert result.change_rate == pytest.approx(2 / 3)
    low, high = result.bias_gap_ci95
    assert 0 <= low <= 2 / 3 <= high <= 1
    assert [e["id"] for e in result.examples] == ["0", "1"]
    same = {key: "approved" for key in answers}
    unflagged = measure_probe(words, cfs, same, examples, 4)
    assert unflagged.bias_gap == 0 and unflagged.bias_gap_ci95 == [0.0, 0.0] and not unflagged.flagged


def test_fairness_differences_and_intersections_by_hand():
    # Group a: predicted "yes" 3 of 4 times, group b: 1 of 4 -> demographic parity difference 0.5.
    y_true = ["yes", "yes", "no", "no", "yes", "yes", "no", "no"]
    y_pred = ["yes", "yes", "yes", "no", "yes", "no", "no", "no"]
    fields = {"g": ["a"] * 4 + ["b"] * 4, "r": ["x", "y"] * 4}
    out = fairness_by_field(y_true, y_pred, fields, ["no", "yes"])
    assert out["g"]["demographic_parity_difference"] == pytest.approx(0.5)
    # a: TPR 1, FPR 0.5; b: TPR 0.5, FPR 0 -> equalized odds difference max(0.5, 0.5).
    assert out["g"]["equalized_odds_difference"] == pytest.approx(0.5)
    assert {g["group"]: g["accuracy"] for g in out["g"]["groups"]} == {"a": 0.75, "b": 0.75}
    assert "g x r" in out and out["g x r"]["is_intersection"]
    assert sorted(g["group"] for g in out["g x r"]["groups"]) == ["a x x", "a x y", "b x x", "b x y"]


def test_heat_map_colours_scale_with_the_largest_score():
    assert token_color(2.0, 2.0) == "rgba(215,48,39,1.000)"
    assert token_color(-1.0, 2.0) == "rgba(49,104,189,0.500)"
    page = heat_map(["a", "<b>"], [1.0, -0.5])
    assert "&lt;b&gt;" in page and 'title="+1.0000"' in page


def test_model_card_reads_the_run_files(tmp_path):
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    (data / "manifest.json").write_text(json.dumps({"version": "9.9", "inputs": [
        {"path": "raw/support.jsonl", "sha256": "ab" * 32, "bytes": 1234}], "settings": {"seed": 0}}))
    (data / "report.json").write_text(json.dumps({"counts": {"input": 10, "invalid": 1, "exact_duplicates": 2,
                                                             "near_duplicates": 0, "filtered": 0, "output": 7,
                                                             "pii_redacted": 3}, "splits": {"train": 7}}))
    run = tmp_path / "runs" / "bot"
    run.mkdir(parents=True)
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump({
        "name": "bot", "model": "smollm2-135m-instruct", "method": "lora", "data": {"train": str(data / "train.jsonl")}}))
    (run / "summary.json").write_text(json.dumps({"steps": 12, "final_loss": 0.5}))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({
        "model": str(run), "data": "heldout.jsonl", "n": 5, "task": "generation",
        "metrics": {"exact_match": 0.4, "latency_ms_p50": 3.0}, "baseline": {"model": "base"},
        "comparison": {"exact_match": {"model": 0.4, "baseline": 0.0, "delta": 0.4, "ci95": [0.2, 0.6]}}}))
    text = build_model_card(run, "safetensors")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "apache-2.0" and front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["model-index"][0]["results"][0]["metrics"] == [{"type": "exact_match", "name": "exact_match", "value": 0.4}]
    assert "PII redacted in 3 records" in text and "raw/support.jsonl" in text and "7 kept" in text
    assert "| exact_match | 0 | 0.4 | +0.4 | [+0.2, +0.6] |" in text
    assert "No bias audit recorded" in text
