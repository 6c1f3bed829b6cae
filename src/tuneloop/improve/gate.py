"""The round's gate: a gain must be significant, a regression must not be.

Both checks read the paired-bootstrap 95% CI of candidate - production from ``run_eval``'s
``comparison`` (:mod:`tuneloop.evaluate.compare`):

- held-out corrections: the CI's lower bound of the metric's delta is above 0 (a real gain);
- regression set: the CI's upper bound is not below 0 (no significant loss) and the point delta is
  no more than ``margin`` below 0 (a loss too small to be significant is still capped).

The metric is ``fact_accuracy`` where the data has facts, else ``rougeL`` (answers are free text).
Extra ``--gate`` rules (``tuneloop eval``'s grammar, e.g. ``rougeL >= 0.5``) must hold on the held-out set too.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.evaluate.compare import LOWER_IS_BETTER, parse_gate
from tuneloop.evaluate.run import COMMON_METRICS, SCALAR_METRICS, TASK_METRICS

GATE_METRICS = [*TASK_METRICS["generation"], "fact_accuracy", *COMMON_METRICS, *SCALAR_METRICS]


def check_rules(rules) -> list:
    """Parse ``--gate`` rules before anything is trained, so a typo fails in a second."""
    return [parse_gate(rule, GATE_METRICS) for rule in rules]


def metric_for(result: dict) -> str:
    return "fact_accuracy" if "fact_accuracy" in result["metrics"] else "rougeL"


@dataclass
class GateDecision:
    passed: bool
    checks: list[dict]

    def as_dict(self) -> dict:
        return {"passed": self.passed, "checks": self.checks}


def _delta(result: dict, metric: str) -> tuple[float, float, float]:
    entry = result["comparison"][metric]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # read every delta as "higher is better"
    low, high = (sign * x for x in entry["ci95"])
    return sign * entry["delta"], min(low, high), max(low, high)


def gain_check(heldout: dict) -> dict:
    metric = metric_for(heldout)
    delta, low, high = _delta(heldout, metric)
    return {"check": "significant gain on held-out feedback", "metric": metric, "n": heldout["n"],
            "candidate": heldout["metrics"][metric], "production": heldout["baseline"]["metrics"][metric],
            "delta": delta, "ci95": [low, high], "passed": bool(low > 0),
            "rule": f"95% CI of {metric} delta above 0"}


def regression_check(regression: dict, margin: float) -> dict:
    metric = metric_for(regression)
    delta, low, high = _delta(regression, metric)
    return {"check": "no regression", "metric": metric, "n": regression["n"],
            "candidate": regression["metrics"][metric], "production": regression["baseline"]["metrics"][metric],
            "delta": delta, "ci95": [low, high], "passed": bool(high >= 0 and delta >= -margin),
            "rule": f"95% CI of {metric} delta not below 0, and delta >= -{margin:g}"}


def decide(heldout: dict, regression: dict | None, margin: float) -> GateDecision:
    checks = [gain_check(heldout)]
    if regression is not None:
        checks.append(regression_check(regression, margin))
    if heldout.get("gate"):
        for detail in heldout["gate"]["details"]:
            checks.append({"check": "rule on held-out feedback", "rule": detail["rule"], "metric": detail["metric"],
                           "candidate": detail["value"], "passed": detail["passed"]})
    return GateDecision(all(c["passed"] for c in checks), checks)
