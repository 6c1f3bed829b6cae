"""Inter-annotator agreement: Cohen's kappa (two annotators), Fleiss' kappa (more), per-label disagreement.

These are pure functions on plain data so they can be checked against hand-computed values:

* :func:`cohen_kappa` takes two equally long label sequences (the two annotators' labels for the
  same records): ``(p_o - p_e) / (1 - p_e)`` with ``p_e`` from each annotator's own label rates.
* :func:`fleiss_kappa` takes a count matrix, one row per record and one column per category
  (``counts[i][j]`` = how many annotators put record ``i`` in category ``j``). Rows may have
  different totals (records labelled by different numbers of annotators); rows with fewer than two
  ratings carry no agreement information and are skipped.
* :func:`per_label_disagreement`: for each label, the share of multiply-labelled records using it
  on which the annotators did not all agree.

When every rating falls in one category the chance agreement is 1 and kappa is undefined (0/0); we
return 1.0 if the observed agreement is also perfect, since the annotators did agree on everything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's kappa of two annotators' labels on the same records (same order)."""
    if len(first) != len(second):
        raise ValueError("both annotators must label the same records")
    n = len(first)
    if n == 0:
        raise ValueError("no records labelled by both annotators")
    observed = sum(a == b for a, b in zip(first, second)) / n
    rates_a, rates_b = Counter(first), Counter(second)
    expected = sum(rates_a[label] * rates_b[label] for label in rates_a) / (n * n)
    return _kappa(observed, expected)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from a records x categories matrix of rating counts."""
    rows = [row for row in counts if sum(row) >= 2]
    if not rows:
        raise ValueError("no record has two or more ratings")
    categories = len(rows[0])
    total = sum(sum(row) for row in rows)
    # P_i: the share of agreeing annotator pairs on record i.
    per_record = [(sum(c * c for c in row) - sum(row)) / (sum(row) * (sum(row) - 1)) for row in rows]
    observed = sum(per_record) / len(rows)
    shares = [sum(row[j] for row in rows) / total for j in range(categories)]
    expected = sum(p * p for p in shares)
    return _kappa(observed, expected)


def _kappa(observed: float, expected: float) -> float:
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def count_matrix(votes: Mapping[str, Sequence[str]], labels: Sequence[str]) -> list[list[int]]:
    """Rows of :func:`fleiss_kappa` from ``{record_id: [label per annotator]}``, in ``labels`` order."""
    index = {label: j for j, label in enumerate(labels)}
    matrix = []
    for values in votes.values():
        row = [0] * len(labels)
        for value in values:
            row[index[value]] += 1
        matrix.append(row)
    return matrix


def per_label_disagreement(votes: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """For each label: on how many multiply-labelled records it was used, and on how many of those
    the annotators disagreed; ``rate`` = disputed / used."""
    stats: dict[str, dict] = {}
    for values in votes.values():
        if len(values) < 2:
            continue
        disputed = len(set(values)) > 1
        for label in set(values):
            entry = stats.setdefault(label, {"records": 0, "disputed": 0})
            entry["records"] += 1
            entry["disputed"] += disputed
    for entry in stats.values():
        entry["rate"] = round(entry["disputed"] / entry["records"], 4)
    return dict(sorted(stats.items()))


def majority(values: Sequence[str]) -> str | None:
    """The most frequent value, or None when two or more values tie for the top."""
    ranked = Counter(values).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]
