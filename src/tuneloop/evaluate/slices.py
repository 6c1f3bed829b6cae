"""Metrics per group of a record field (``--slice-by FIELD``) and the largest gap between groups.

The equivalent of fairlearn's ``MetricFrame`` (``by_group`` and ``difference()``), which is a group-by:
each metric's per-sample statistics are aggregated over the rows of each group. A gap larger than
``threshold`` (default 0.1, i.e. 10 points on 0-1 metrics) is flagged so a bias check cannot be missed.
Groups smaller than ``min_group_size`` are reported but left out of the gap, since one or two
samples make any difference look large.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tuneloop.evaluate.compare import LOWER_IS_BETTER, SampleStats

MISSING = "(missing)"
DEFAULT_GAP_THRESHOLD = 0.1
MIN_GROUP_SIZE = 5
# Only quality metrics are compared between groups; latency depends on batch neighbours, not on the group.
SLICE_METRICS = ("accuracy", "f1", "exact_match", "rougeL", "bleu", "fact_accuracy", "perplexity")


def field_value(record: dict, field: str) -> str:
    """The record's value of ``field`` (dotted paths reach into nested objects) as a group name."""
    value = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value if isinstance(value, str) else str(value)


def group_indices(groups: list[str]) -> dict[str, np.ndarray]:
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        by_group[group].append(i)
    return {g: np.array(idx) for g, idx in sorted(by_group.items())}


def slice_metrics(stats: dict[str, SampleStats], groups: list[str], field: str,
                  threshold: float = DEFAULT_GAP_THRESHOLD, min_group_size: int = MIN_GROUP_SIZE) -> dict:
    """eval.json's ``slices``: per-group values and, per metric, the largest gap and whether it is flagged."""
    by_group = group_indices(groups)
    names = [name for name in SLICE_METRICS if name in stats]
    table = {
        group: {"n": int(len(idx)), **{name: stats[name].value(idx) for name in names}}
        for group, idx in by_group.items()
    }
    gaps = {}
    for name in names:
        eligible = {g: row[name] for g, row in table.items() if row["n"] >= min_group_size}
        if len(eligible) < 2:
            continue
        best_of = min if name in LOWER_IS_BETTER else max
        best = best_of(eligible, key=eligible.get)
        worst = (max if name in LOWER_IS_BETTER else min)(eligible, key=eligible.get)
        gap = abs(eligible[best] - eligible[worst])
        # Perplexity is not on a 0-1 scale (flag a relative gap instead); BLEU is on 0-100.
        if name == "perplexity":
            relative = gap / eligible[best] if eligible[best] else gap
        else:
            relative = gap / 100 if name == "bleu" else gap
        gaps[name] = {"gap": gap, "best_group": best, "worst_group": worst, "flagged": bool(relative > threshold)}
    return {"field": field, "threshold": threshold, "min_group_size": min_group_size,
            "groups": table, "gaps": gaps, "flagged": any(g["flagged"] for g in gaps.values())}
