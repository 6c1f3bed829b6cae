"""Seeded, stratified, group-aware train/validation/test splits.

The unit of splitting is a *group*: the records that must stay together (a near-duplicate cluster
when near-duplicates are kept; otherwise each record alone). Groups are stratified by label: within
each label, groups are shuffled with the seed and each goes to the split furthest below its target
share. When a label has at least as many groups as there are non-empty splits, each split first
gets one, so every label appears in every split. Same input + same seed = same split.
"""

from __future__ import annotations

import numpy as np

from tuneloop.errors import UserError

SPLITS = ("train", "validation", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` (or percentages ``"70,15,15"``) -> three fractions that sum to 1."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--split {text}: expected three numbers such as 0.7,0.15,0.15") from None
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise UserError(f"--split {text}: expected three non-negative numbers for train,validation,test",
                        hint="for example --split 0.8,0.1,0.1")
    total = sum(values)
    if abs(total - 1) > 1e-6 and abs(total - 100) > 1e-6:
        raise UserError(f"--split {text}: the three parts sum to {total:g}, not 1 (or 100)",
                        hint="for example --split 0.8,0.1,0.1")
    return tuple(v / total for v in values)  # type: ignore[return-value]


def assign_splits(group_of: list[int], label_of_group: dict[int, str | None],
                  fractions: tuple[float, float, float], seed: int) -> list[str]:
    """The split name for each record, given each record's group and each group's label."""
    strata = np.array([str(label_of_group.get(group)) for group in group_of], dtype=object)
    split = assign_split_indices(np.asarray(group_of, dtype=np.int64), strata, fractions, seed)
    return [SPLITS[s] for s in split.tolist()]


def assign_split_indices(group_of: np.ndarray, stratum_of: np.ndarray, fractions: tuple[float, float, float],
                         seed: int) -> np.ndarray:
    """:func:`assign_splits` on arrays (what ``data prepare`` calls for millions of records): the
    split index (0 train, 1 validation, 2 test) of each record, given its group and its group's
    stratum (``str`` of the label; every member of a group has the same)."""
    if not len(group_of):
        return np.zeros(0, dtype=np.int8)
    _, first, inverse, sizes = np.unique(group_of, return_index=True, return_inverse=True, return_counts=True)
    appearance = np.argsort(first, kind="stable")  # groups in order of first appearance
    labels, label_code = np.unique(stratum_of[first], return_inverse=True)  # sorted, as str sorts
    rng = np.random.default_rng(seed)
    split_of_group = np.zeros(len(first), dtype=np.int8)
    for code in range(len(labels)):
        groups = appearance[label_code[appearance] == code]
        shuffled = groups[rng.permutation(len(groups))]
        split_of_group[shuffled] = _allocate(sizes[shuffled].tolist(), fractions)
    return split_of_group[inverse.ravel()]


def _allocate(sizes: list[int], fractions: tuple[float, float, float]) -> list[int]:
    """Split index for each group of ``sizes`` (in order), keeping each split near its share."""
    active = [s for s in range(3) if fractions[s] > 0]
    total = sum(sizes)
    filled = [0, 0, 0]
    result = []
    for i, size in enumerate(sizes):
        if i < len(active) and len(sizes) >= len(active):
            split = active[i]  # seed every split with one group so every label appears in each
        else:
            split = max(active, key=lambda s: (fractions[s] * total - filled[s], -s))
        filled[split] += size
        result.append(split)
    return result
