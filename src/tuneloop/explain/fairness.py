"""Group fairness of a classifier on any record field, and on intersections of fields (fairlearn).

    fairness_by_field(y_true, y_pred, {"gender": [...], "region": [...]}, labels)

For each sensitive field alone, and for the intersection of all given fields (gender x region), with
fairlearn 0.15:

* ``demographic_parity_difference``: the largest gap between groups in how often a label is
  predicted;
* ``equalized_odds_difference``: the larger of the gaps in true-positive and false-positive rates;
* per-group accuracy and counts (``MetricFrame``).

Both differences are defined for one positive label. With more labels, each label is taken in turn as
the positive one (one-vs-rest) and the worst label is reported, with its name, since a classifier that
routes one group's "refund" requests elsewhere is unfair even when the other labels are fine.
"""

from __future__ import annotations

import math

import numpy as np

INTERSECTION_SEPARATOR = " x "


def _one_vs_rest(y_true, y_pred, sensitive, label, metric) -> float:
    value = metric(np.asarray(y_true) == label, np.asarray(y_pred) == label, sensitive_features=sensitive)
    return float(value)


def _worst_label(y_true, y_pred, sensitive, labels, metric) -> tuple[float, str | None]:
    worst, worst_label = 0.0, None
    present = [label for label in labels if label in set(y_true) or label in set(y_pred)]
    for label in present[:1] if len(present) == 2 else present:  # two labels: the gaps are symmetric
        value = _one_vs_rest(y_true, y_pred, sensitive, label, metric)
        if not math.isnan(value) and (worst_label is None or value > worst):
            worst, worst_label = value, label
    return worst, worst_label


def fairness_for(y_true: list[str], y_pred: list[str], sensitive, labels: list[str]) -> dict:
    """The figures for one sensitive feature (a list, or a DataFrame of several = their intersection)."""
    import pandas as pd
    from fairlearn.metrics import (MetricFrame, count, demographic_parity_difference,
                                   equalized_odds_difference)

    dp, dp_label = _worst_label(y_true, y_pred, sensitive, labels, demographic_parity_difference)
    eo, eo_label = _worst_label(y_true, y_pred, sensitive, labels, equalized_odds_difference)
    frame = MetricFrame(metrics={"accuracy": lambda t, p: float(np.mean(np.asarray(t) == np.asarray(p))),
                                 "count": count},
                        y_true=np.asarray(y_true, dtype=object), y_pred=np.asarray(y_pred, dtype=object),
                        sensitive_features=sensitive)
    by_group = frame.by_group
    groups = []
    for key, row in by_group.iterrows():
        name = INTERSECTION_SEPARATOR.join(map(str, key)) if isinstance(key, tuple) else str(key)
        groups.append({"group": name, "accuracy": float(row["accuracy"]), "count": int(row["count"])})
    accuracy = [g["accuracy"] for g in groups]
    return {
        "demographic_parity_difference": dp, "demographic_parity_label": dp_label,
        "equalized_odds_difference": eo, "equalized_odds_label": eo_label,
        "accuracy_gap": (max(accuracy) - min(accuracy)) if accuracy else 0.0,
        "groups": groups, "is_intersection": isinstance(sensitive, pd.DataFrame) and sensitive.shape[1] > 1,
    }


def fairness_by_field(y_true: list[str], y_pred: list[str], fields: dict[str, list[str]],
                      labels: list[str]) -> dict[str, dict]:
    """Each field alone, then (with two or more) their intersection, keyed "a x b"."""
    import pandas as pd

    out = {name: fairness_for(y_true, y_pred, values, labels) for name, values in fields.items()}
    if len(fields) > 1:
        table = pd.DataFrame(fields)
        out[INTERSECTION_SEPARATOR.join(fields)] = fairness_for(y_true, y_pred, table, labels)
    return out
