"""Model vs baseline: paired bootstrap confidence intervals of metric deltas, and release gates.

Every metric is kept as per-sample statistics plus an ``aggregate`` function (:class:`SampleStats`),
so corpus-level metrics (macro F1, corpus BLEU, perplexity) are recomputed on each resample instead of
being averaged. Resampling is paired: the same sample indices are drawn for both models, which is what
makes a small difference between two models on the same data measurable.

Gates are small rules checked after evaluation, parsed without ``eval()``::

    f1 >= baseline + 0.02        accuracy >= 0.8        rougeL > baseline
    latency_ms_p95 <= baseline * 1.2

Grammar: ``METRIC OP EXPR`` with OP one of ``>= <= > < ==``; EXPR is a sum (``+``/``-``) of products
(``*``) of numbers and the word ``baseline`` (the baseline model's value of the same metric).

How a rule is decided (``--gate-mode``, written to eval.json's ``gate.mode`` and each rule's
``decided_by``):

* ``ci`` (default): the rule must hold beyond resampling noise. The margin ``value - threshold`` is
  bootstrapped with paired resampling (the same samples for model and baseline), and ``>=``/``>``
  pass only if the 95% CI's *lower* bound clears 0 (``<=``/``<``: the upper bound), so
  ``f1 >= baseline + 0.02`` needs the lower bound of the F1 difference to be at least 0.02. A rule
  without ``baseline`` (``accuracy >= 0.8``) uses the CI of the metric itself. Metrics measured
  once (``peak_memory_mb``, ``model_size_mb``) have no CI and ``==`` asks for a point, so those rules
  fall back to the point comparison and say so (``decided_by: point``).
* ``point``: the observed values are compared as they are; a gain inside the noise passes.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tuneloop.errors import UserError, did_you_mean

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# Metrics where a smaller number is better (for the report's colours and the delta's reading).
LOWER_IS_BETTER = {"perplexity", "latency_ms_p50", "latency_ms_p95", "peak_memory_mb", "model_size_mb"}


@dataclass
class SampleStats:
    """Per-sample statistics (one row per sample) and how to turn any subset of rows into the metric."""

    values: np.ndarray
    aggregate: Callable[[np.ndarray], float]

    def value(self, indices=None) -> float:
        return float(self.aggregate(self.values if indices is None else self.values[indices]))


def mean_of(values) -> SampleStats:
    return SampleStats(np.asarray(values, dtype=np.float64), lambda v: float(v.mean()) if len(v) else 0.0)


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, n_resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(indices)`` over resamples of ``n`` sample indices."""
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_resamples)])
    tail = (1 - level) / 2 * 100
    return (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))


def bootstrap_delta_ci(model: SampleStats, baseline: SampleStats, n_resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``model - baseline`` with paired resampling of samples."""
    if len(model.values) != len(baseline.values):
        raise ValueError("model and baseline were scored on different samples")
    return bootstrap_ci(lambda idx: model.value(idx) - baseline.value(idx), len(model.values), n_resamples, seed,
                        level)


def compare_metrics(model: dict[str, SampleStats], baseline: dict[str, SampleStats],
                    n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, dict]:
    """Per metric: model value, baseline value, delta and its 95% CI."""
    out = {}
    for name in model:
        if name not in baseline:
            continue
        a, b = model[name].value(), baseline[name].value()
        low, high = bootstrap_delta_ci(model[name], baseline[name], n_resamples, seed)
        out[name] = {"model": a, "baseline": b, "delta": a - b, "ci95": [low, high]}
    return out


# ---- gates ------------------------------------------------------------------------------------

_COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)|(?P<name>[A-Za-z_][\w.]*)"
                    r"|(?P<op>>=|<=|==|>|<|[-+*]))")


@dataclass(frozen=True)
class Gate:
    rule: str
    metric: str
    comparison: str
    # EXPR as a list of (sign, [factors]); a factor is a float or the string "baseline".
    terms: tuple

    @property
    def uses_baseline(self) -> bool:
        return any("baseline" in factors for _, factors in self.terms)

    def threshold(self, baseline_value: float | None) -> float:
        total = 0.0
        for sign, factors in self.terms:
            product = 1.0
            for factor in factors:
                product *= baseline_value if factor == "baseline" else factor
            total += sign * product
        return total

    def check(self, value: float, baseline_value: float | None) -> dict:
        """The point comparison of the observed values."""
        threshold = self.threshold(baseline_value)
        passed = bool(_COMPARISONS[self.comparison](value, threshold))
        return {"rule": self.rule, "metric": self.metric, "value": value, "threshold": threshold,
                "baseline": baseline_value, "passed": passed, "passed_point": passed, "decided_by": "point",
                "margin": value - threshold, "margin_ci95": None}

    def check_ci(self, model: SampleStats, baseline: SampleStats | None, n_resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> dict:
        """Decided by the 95% CI of ``value - threshold`` (paired bootstrap): its near bound must clear 0."""
        baseline_value = baseline.value() if baseline is not None else None
        detail = self.check(model.value(), baseline_value)
        if self.comparison == "==":
            return detail
        if baseline is not None and len(baseline.values) != len(model.values):
            raise ValueError("model and baseline were scored on different samples")

        def margin(idx):
            return model.value(idx) - self.threshold(baseline.value(idx) if baseline is not None else None)

        low, high = bootstrap_ci(margin, len(model.values), n_resamples, seed)
        bound = low if self.comparison in (">=", ">") else high
        passed = bool(_COMPARISONS[self.comparison](bound, 0.0))
        return {**detail, "passed": passed, "decided_by": "ci", "margin_ci95": [low, high]}


def _tokenize(rule: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(rule.rstrip()):
        match = _TOKEN.match(rule, position)
        if not match:
            rest = rule[position:].strip()
            if rest[:1] in ("=", "!"):
                raise _gate_error(rule, f"unknown comparison in {rest!r}: use one of >= <= > < ==")
            raise _gate_error(rule, f"unexpected text {rest!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _gate_error(rule: str, message: str) -> UserError:
    return UserError(f"{message}", where=f"--gate {rule!r}",
                     hint='write METRIC OP EXPR, e.g. "f1 >= baseline + 0.02" or "accuracy >= 0.8"')


def _parse_expression(rule: str, tokens: list[tuple[str, str]]) -> tuple:
    terms, sign, factors, expect_operand = [], 1.0, [], True
    for kind, text in tokens:
        if expect_operand:
            if kind == "number":
                factors.append(float(text))
            elif kind == "name" and text == "baseline":
                factors.append("baseline")
            else:
                raise _gate_error(rule, f"expected a number or 'baseline', got {text!r}")
            expect_operand = False
        elif kind == "op" and text in "+-*":
            if text != "*":
                terms.append((sign, tuple(factors)))
                sign, factors = (1.0 if text == "+" else -1.0), []
            expect_operand = True
        else:
            raise _gate_error(rule, f"expected + - or * after an operand, got {text!r}")
    if expect_operand:
        raise _gate_error(rule, "the rule ends where a number or 'baseline' should be")
    terms.append((sign, tuple(factors)))
    return tuple(terms)


def parse_gate(rule: str, metric_names) -> Gate:
    """Parse one gate rule; ``metric_names`` are the metrics this evaluation computes."""
    tokens = _tokenize(rule)
    if len(tokens) < 3 or tokens[0][0] != "name" or tokens[1] not in [("op", c) for c in _COMPARISONS]:
        raise _gate_error(rule, "not a rule")
    metric = tokens[0][1]
    if metric not in metric_names:
        guess = did_you_mean(metric, metric_names)
        raise UserError(
            f"unknown metric {metric!r}" + (f"; did you mean {guess!r}?" if guess else ""),
            where=f"--gate {rule!r}", hint="metrics for this data: " + ", ".join(sorted(metric_names)))
    return Gate(rule, metric, tokens[1][1], _parse_expression(rule, tokens[2:]))


GATE_MODES = ("ci", "point")


def evaluate_gates(gates: list[Gate], metrics: dict[str, float], baseline_metrics: dict[str, float] | None,
                   mode: str = "ci", stats: dict[str, SampleStats] | None = None,
                   baseline_stats: dict[str, SampleStats] | None = None) -> dict | None:
    """eval.json's ``gate``: passed when every rule holds; ``details`` has one entry per rule.

    ``mode="ci"`` decides each rule whose metric has per-sample ``stats`` by its bootstrap CI (see the
    module docstring); the others, and every rule under ``mode="point"``, by the observed values.
    """
    if not gates:
        return None
    if mode not in GATE_MODES:
        raise UserError(f"unknown gate mode {mode!r}", where="--gate-mode", hint="use ci or point")
    details = []
    for gate in gates:
        base = baseline_metrics.get(gate.metric) if baseline_metrics else None
        if gate.uses_baseline and base is None:
            raise UserError("the rule compares with the baseline but no baseline was evaluated",
                            where=f"--gate {gate.rule!r}", hint="add --baseline MODEL")
        model_stats = (stats or {}).get(gate.metric)
        base_stats = (baseline_stats or {}).get(gate.metric) if gate.uses_baseline else None
        if mode == "ci" and model_stats is not None and (base_stats is not None or not gate.uses_baseline):
            details.append(gate.check_ci(model_stats, base_stats))
        else:
            details.append(gate.check(metrics[gate.metric], base))
    return {"passed": all(d["passed"] for d in details), "rule": " and ".join(g.rule for g in gates),
            "mode": mode, "details": details}
