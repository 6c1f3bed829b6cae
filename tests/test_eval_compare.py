"""Gates, paired bootstrap CIs, slices and the perplexity helper: exact values on constructed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneloop.errors import UserError
from tuneloop.evaluate.compare import (SampleStats, bootstrap_delta_ci, compare_metrics, evaluate_gates, mean_of,
                                       parse_gate)
from tuneloop.evaluate.slices import slice_metrics

METRICS = ["accuracy", "f1", "rougeL", "latency_ms_p95"]


@pytest.mark.parametrize("rule, value, baseline, threshold, passed", [
    ("f1 >= baseline + 0.02", 0.53, 0.50, 0.52, True),
    ("f1 >= baseline + 0.02", 0.515, 0.50, 0.52, False),
    ("accuracy >= 0.8", 0.8, None, 0.8, True),
    ("accuracy>=.8", 0.79, None, 0.8, False),
    ("rougeL > baseline", 0.4, 0.4, 0.4, False),
    ("latency_ms_p95 <= baseline * 1.2", 119.0, 100.0, 120.0, True),
    ("f1 >= 2 * baseline - 0.5 + 0.1", 0.6, 0.5, 0.6, True),
])
def test_gate_thresholds_and_verdicts(rule, value, baseline, threshold, passed):
    gate = parse_gate(rule, METRICS)
    detail = gate.check(value, baseline)
    assert detail["threshold"] == pytest.approx(threshold)
    assert detail["passed"] is passed


@pytest.mark.parametrize("rule, message", [
    ("f11 >= 0.5", "did you mean 'f1'"),
    ("f1 >= baseline +", "ends where"),
    ("f1 => 0.5", "unknown comparison"),
    ("f1 >= baseline.f1", "expected a number or 'baseline'"),
    ("f1 >= __import__('os')", "unexpected text"),
    ("f1 >= 0.5 0.2", "expected + - or *"),
    ("0.5 <= f1", "not a rule"),
])
def test_bad_gate_rules_are_user_errors(rule, message):
    with pytest.raises(UserError) as error:
        parse_gate(rule, METRICS)
    assert message in str(error.value)
    assert "--gate" in str(error.value)


def test_evaluate_gates_all_must_hold_and_baseline_is_required():
    gates = [parse_gate("accuracy >= 0.5", METRICS), parse_gate("f1 >= baseline", METRICS)]
    verdict = evaluate_gates(gates, {"accuracy": 0.9, "f1": 0.4}, {"accuracy": 0.5, "f1": 0.45})
    assert verdict["passed"] is False
    assert verdict["rule"] == "accuracy >= 0.5 and f1 >= baseline"
    assert [d["passed"] for d in verdict["details"]] == [True, False]
    with pytest.raises(UserError, match="--baseline"):
        evaluate_gates(gates, {"accuracy": 0.9, "f1": 0.4}, None)
    assert evaluate_gates([], {"accuracy": 1.0}, None) is None


def test_bootstrap_ci_contains_the_true_delta():
    # Paired correctness: model right 80%, baseline right 60% of 400 samples.
    rng = np.random.default_rng(1)
    model = (rng.random(400) < 0.8).astype(float)
    baseline = (rng.random(400) < 0.6).astype(float)
    low, high = bootstrap_delta_ci(mean_of(model), mean_of(baseline))
    true_delta = model.mean() - baseline.mean()
    assert low < true_delta < high
    assert low > 0  # a 20-point difference on 400 samples is not noise
    assert 0.05 < high - low < 0.2


def test_identical_models_have_zero_delta_and_zero_width_ci():
    stats = {"accuracy": mean_of([1, 0, 1, 1])}
    row = compare_metrics(stats, {"accuracy": mean_of([1, 0, 1, 1])})["accuracy"]
    assert row == {"model": 0.75, "baseline": 0.75, "delta": 0.0, "ci95": [0.0, 0.0]}


def test_bootstrap_recomputes_corpus_metrics_per_resample():
    # A ratio metric (sum of column 0 / sum of column 1) must not be averaged per sample.
    ratio = lambda rows: rows[:, 0].sum() / rows[:, 1].sum()
    a = SampleStats(np.array([[1.0, 1.0], [9.0, 9.0]]), ratio)
    assert a.value() == 1.0
    low, high = bootstrap_delta_ci(a, a)
    assert (low, high) == (0.0, 0.0)


def test_slices_per_group_values_and_flagged_gap():
    correct = [1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    groups = ["en"] * 5 + ["fr"] * 5 + ["de"] * 2
    result = slice_metrics({"accuracy": mean_of(correct)}, groups, "lang", threshold=0.1, min_group_size=5)
    assert result["groups"]["en"] == {"n": 5, "accuracy": 1.0}
    assert result["groups"]["fr"] == {"n": 5, "accuracy": 0.2}
    assert result["groups"]["de"] == {"n": 2, "accuracy": 1.0}
    gap = result["gaps"]["accuracy"]
    assert gap["gap"] == pytest.approx(0.8)
    assert (gap["best_group"], gap["worst_group"], gap["flagged"]) == ("en", "fr", True)
    even = slice_metrics({"accuracy": mean_of([1, 0, 0, 1] * 3)}, ["a", "b"] * 6, "g")
    assert even["gaps"]["accuracy"]["gap"] == 0.0 and even["flagged"] is False


class FixedDistribution:
    """A stand-in causal LM whose next-token distribution is always [1/2, 1/4, 1/8, 1/8]."""

    training = False

    def __init__(self):
        import torch

        self.logits = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125]))
        self._param = torch.zeros(1)

    def parameters(self):
        return iter([self._param])

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, input_ids, attention_mask=None, logits_to_keep=None):
        from types import SimpleNamespace

        positions = logits_to_keep if logits_to_keep is not None else range(input_ids.shape[1])
        n = len(positions)
        return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], n, 4).clone())


def test_validation_loss_of_a_known_distribution():
    import torch

    from tuneloop.evaluate.perplexity import per_sequence_nll, validation_loss

    # Row 0 predicts tokens 0 and 1 (nll ln2 + ln4); row 1 predicts token 3 once (ln8); -100 is masked.
    batch = {"input_ids": torch.tensor([[2, 0, 1], [2, 2, 3]]),
             "labels": torch.tensor([[-100, 0, 1], [-100, -100, 3]])}
    sums, counts = per_sequence_nll(FixedDistribution(), batch)
    assert sums == pytest.approx([math.log(2) + math.log(4), math.log(8)])
    assert counts == [2, 1]
    result = validation_loss(FixedDistribution(), [batch, batch])
    assert result.n_tokens == 6
    assert result.loss == pytest.approx((math.log(2) + math.log(4) + math.log(8)) / 3)
    assert result.perplexity == pytest.approx(4.0)  # exp(ln(64)/3) = 64 ** (1/3)


def test_reference_nll_matches_the_model_own_loss(tiny_model_dir):
    import torch

    from tuneloop.chat.template import encode_chat
    from tuneloop.evaluate.perplexity import reference_nll
    from tuneloop.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    chats = [[{"role": "user", "content": "Where is my card?"}, {"role": "assistant", "content": "card_arrival"}],
             [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"}]]
    sums, counts = reference_nll(model, tokenizer, chats, batch_size=2)
    for chat, total, count in zip(chats, sums, counts):
        encoded = encode_chat(tokenizer, chat)
        with torch.inference_mode():
            loss = model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss
        assert count == encoded.n_trainable
        assert total / count == pytest.approx(loss.item(), rel=1e-4)


def test_a_gain_inside_the_ci_fails_the_ci_rule_and_passes_the_point_rule():
    # 60 samples: the model gets 4 more right than the baseline (0.55 vs 0.4833): a point gain of
    # 0.067 >= 0.02, but a paired 95% CI that reaches below 0.02.
    rng = np.random.default_rng(3)
    baseline = rng.random(60) < 0.5
    model = baseline.copy()
    flips = np.flatnonzero(~baseline)[:6]
    model[flips] = True
    model[np.flatnonzero(baseline)[:2]] = False
    stats, base_stats = {"accuracy": mean_of(model)}, {"accuracy": mean_of(baseline)}
    metrics = {"accuracy": stats["accuracy"].value()}
    base_metrics = {"accuracy": base_stats["accuracy"].value()}
    assert metrics["accuracy"] - base_metrics["accuracy"] == pytest.approx(4 / 60)
    gates = [parse_gate("accuracy >= baseline + 0.02", ["accuracy"])]
    point = evaluate_gates(gates, metrics, base_metrics, "point", stats, base_stats)
    ci = evaluate_gates(gates, metrics, base_metrics, "ci", stats, base_stats)
    assert point["passed"] is True and point["mode"] == "point" and point["details"][0]["decided_by"] == "point"
    assert ci["passed"] is False and ci["mode"] == "ci" and ci["details"][0]["decided_by"] == "ci"
    low, high = ci["details"][0]["margin_ci95"]
    assert low < 0 < 4 / 60 - 0.02 < high  # the observed margin is positive; the CI's lower bound is not
    assert ci["details"][0]["passed_point"] is True
    # A gain well beyond the noise passes under both rules.
    clear = {"accuracy": mean_of(np.ones(60, bool))}
    assert evaluate_gates(gates, {"accuracy": 1.0}, base_metrics, "ci", clear, base_stats)["passed"] is True


def test_ci_rules_on_one_model_and_on_lower_is_better_metrics():
    values = mean_of([1.0] * 45 + [0.0] * 15)  # accuracy 0.75
    gate = parse_gate("accuracy >= 0.7", ["accuracy"])
    assert gate.check(0.75, None)["passed"] is True
    assert gate.check_ci(values, None)["passed"] is False  # 0.75's CI reaches below 0.7
    latency_model, latency_base = mean_of([100.0] * 30), mean_of([100.0] * 30)
    gate = parse_gate("latency_ms_p50 <= baseline * 1.2", ["latency_ms_p50"])
    assert gate.check_ci(latency_model, latency_base)["margin_ci95"] == [-20.0, -20.0]
    # A single figure (no per-sample stats) falls back to the point comparison, and says so.
    verdict = evaluate_gates([parse_gate("peak_memory_mb <= 500", ["peak_memory_mb"])], {"peak_memory_mb": 400.0},
                             None, "ci", {}, None)
    assert verdict["passed"] is True and verdict["details"][0]["decided_by"] == "point"
