"""LLM-as-judge: reply parsing, position swapping, and judges served by tuneloop's own server
through the ``openai`` client (the path every judge takes, local or remote)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuneloop.config.recipe import recipe_from_dict
from tuneloop.evaluate.judge import (compare_pairwise, local_judge, pair_messages, parse_choice, parse_score,
                                     reason_of, score_answers)
from tuneloop.paths import write_jsonl_atomic
from tuneloop.testing import build_tiny_model
from tuneloop.train import run_training


def test_reply_parsing():
    assert parse_score("4\nClear and correct.") == 4.0 and parse_score("Score: 2/5") == 2.0
    assert parse_score("The answer is fine.") is None and parse_score("") is None
    assert parse_choice("B\nIt matches the reference.") == 0.0 and parse_choice("Answer A is better") == 1.0
    assert parse_choice("Neither.") is None
    assert reason_of("5\n  Matches the reference.\nAnd is short.") == "Matches the reference. And is short."


def test_position_swapping_cancels_a_judge_that_always_says_a():
    always_a = lambda messages: "A\nThe first one."  # noqa: E731  (a position-biased judge)
    wins, agree, verdicts = compare_pairwise(always_a, ["q"] * 3, ["r"] * 3, ["t1", "t2", "t3"], ["b1", "b2", "b3"],
                                             "correctness")
    assert wins.values.tolist() == [0.5, 0.5, 0.5] and agree.value() == 0.0
    assert [v[0].value for v in verdicts] == [1.0] * 3 and [v[1].value for v in verdicts] == [1.0] * 3

    def follows_reference(messages):  # prefers whichever answer equals the reference
        text = messages[-1]["content"]
        reference = text.split("Reference answer: ")[1].split("\n")[0]
        first = text.split("Answer A: ")[1].split("\n")[0]
        return "A\nmatches" if first == reference else "B\nmatches"

    wins, agree, _ = compare_pairwise(follows_reference, ["q", "q"], ["Paris", "Paris"], ["Paris", "Berlin"],
                                      ["Berlin", "Paris"], "correctness")
    assert wins.values.tolist() == [1.0, 0.0] and agree.value() == 1.0


def test_unreadable_pointwise_replies_are_left_out_of_the_mean():
    replies = iter(["5\nok", "no idea", "3\nmeh"])
    stats, verdicts = score_answers(lambda m: next(replies), ["q"] * 3, [None] * 3, ["a", "b", "c"], "helpfulness")
    assert stats.value() == 4.0 and np.isnan(stats.values[1]) and verdicts[1].value is None
    assert np.isnan(stats.value(np.array([1, 1])))  # a resample of only unreadable replies has no mean


def test_eval_with_a_locally_served_judge_writes_scores_reasons_and_win_rate(tiny_model_dir, tmp_path):
    """The tiny random model cannot judge; this checks the path: serve -> openai client -> eval.json/report."""
    from tuneloop.evaluate import run_eval

    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"When do you open on day {i}?", "completion": "At 9 am."}) + "\n"
                            for i in range(3)))
    out = tmp_path / "eval"
    result = run_eval(str(tiny_model_dir), data, baseline=str(tiny_model_dir), out_dir=out, max_new_tokens=3,
                      progress=False, judge=str(tiny_model_dir), judge_rubrics=["correctness", "safety"],
                      gates=["judge_win_rate_correctness >= 0.5"], gate_mode="point")
    assert result["judge"]["rubrics"] == ["correctness", "safety"] and "served locally" in result["judge"]["judge"]
    for name in ("judge_win_rate_correctness", "judge_consistency_correctness", "judge_win_rate_safety"):
        assert 0.0 <= result["metrics"][name] <= 1.0
    # Model and baseline are the same model: identical answers, identical judgements, delta 0.
    row = result["comparison"]["judge_correctness"]
    assert (np.isnan(row["model"]) and np.isnan(row["baseline"])) or row["delta"] == 0.0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {"score", "reason", "reply", "pairwise", "tuned_first", "tuned_second"} <= rows[0]["judge"]["correctness"].keys()
    assert "Judge:" in (out / "report.html").read_text()


def blatant_cases():
    return [("What is the capital of France?", "Paris", "Paris", "London"),
            ("How many legs does a dog have?", "4", "4", "100"),
            ("What colour is snow?", "white", "white", "black")]


@pytest.mark.slow
@pytest.mark.skip(reason="issue 28: the 135M embedded model does not yet judge these pairs correctly (fails on CI); needs a better judge model")
def test_embedded_model_as_judge_prefers_the_reference_matching_answer_both_ways():
    """SmolLM2-135M-Instruct served by `tuneloop serve`'s app, asked through the openai client, on blatant
    pairs: the reference-matching answer must win with it shown first and with it shown second."""
    cases = blatant_cases()
    questions, references = [c[0] for c in cases], [c[1] for c in cases]
    right, wrong = [c[2] for c in cases], [c[3] for c in cases]
    with local_judge("smollm2-135m-instruct", max_tokens=8) as judge:
        wins, agree, verdicts = compare_pairwise(judge.reply, questions, references, right, wrong, "correctness")
    replies = [(a.reply, b.reply) for a, b in verdicts]
    assert wins.value() > 0.5, replies
    assert any(w == 1.0 for w in wins.values), replies  # at least one pair won in both positions


@pytest.mark.slow
def test_a_tiny_trained_judge_prefers_the_reference_matching_answer_in_both_positions(tmp_path):
    """The tiny model, fully fine-tuned on the judge prompts of the blatant pairs in both orders (the
    letter of the reference-matching answer as its reply), then served locally and asked through the
    openai client exactly as a real judge is: the reference-matching answer wins shown first and shown
    second, and swapping which answer counts as "tuned" turns every win into a loss."""
    judge_model = build_tiny_model(tmp_path / "tiny-judge", init_std=0.1)
    cases = blatant_cases()
    rows = []
    for question, reference, right, wrong in cases:
        for first, second, letter in ((right, wrong, "A"), (wrong, right, "B")):
            prompt = pair_messages(question, reference, first, second, "correctness")
            rows.append({"messages": prompt + [{"role": "assistant", "content": letter}]})
    write_jsonl_atomic(tmp_path / "judge.jsonl", rows * 8)
    recipe = recipe_from_dict({
        "name": "judge", "model": str(judge_model), "method": "full", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(tmp_path / "judge.jsonl")},
        "train": {"epochs": 10, "batch_size": 4, "learning_rate": 3e-3, "warmup_ratio": 0.0, "max_seq_len": 256,
                  "eval_every": 1000, "save_every": 1000, "seed": 0},
        "tracking": {"backend": "none"},
    })
    run_dir = run_training(recipe)
    questions, references = [c[0] for c in cases], [c[1] for c in cases]
    right, wrong = [c[2] for c in cases], [c[3] for c in cases]
    with local_judge(str(run_dir), max_tokens=4) as judge:
        wins, agree, verdicts = compare_pairwise(judge.reply, questions, references, right, wrong, "correctness")
        losses, _, _ = compare_pairwise(judge.reply, questions, references, wrong, right, "correctness")
    replies = [(a.reply, b.reply) for a, b in verdicts]
    assert list(wins.values) == [1.0] * len(cases), replies
    assert list(agree.values) == [1.0] * len(cases), replies
    assert list(losses.values) == [0.0] * len(cases), replies
