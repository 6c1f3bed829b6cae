"""Exact and near-duplicate detection, and the stratified, group-aware split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tuneloop.data.clean import clean_text, normalise_for_dedup
from tuneloop.data.dedup import (exact_duplicate_of, jaccard, lsh_parameters, minhash_signatures,
                                 near_duplicate_clusters, shingle_hashes)
from tuneloop.data.split import assign_splits, parse_fractions
from tuneloop.errors import UserError


def test_clean_text_exact():
    assert clean_text("  caf\u00c3\u00a9\u00a0ok \r\n\r\n\r\n\r\nbye\x00  ") == "café ok\n\nbye"
    assert clean_text("tab\tstays") == "tab\tstays"
    assert normalise_for_dedup("Hello,   World!!") == "hello world"


def test_exact_duplicate_of():
    assert exact_duplicate_of(["a", "b", "a", "c", "b"]) == [0, 1, 0, 3, 1]


def test_shingles_are_per_text_and_exact():
    hashes, offsets = shingle_hashes(["abcdef", "abc", "bcdef"])
    assert offsets.tolist() == [0, 2, 3, 4]  # 2 windows, 1 (padded), 1
    assert hashes[1] == hashes[3]  # "bcdef" in the first and third text hash the same
    assert len(set(hashes.tolist())) == 3


def test_minhash_agreement_estimates_jaccard():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(400)]
    base = " ".join(rng.choice(words, 120))
    variants = [base, base[:300] + " changed words here " + base[320:], " ".join(rng.choice(words, 120))]
    hashes, offsets = shingle_hashes(variants)
    signatures = minhash_signatures(hashes, offsets, num_perm=256)
    sets = [np.unique(hashes[offsets[i]:offsets[i + 1]]) for i in range(3)]
    for j in (1, 2):
        estimate = (signatures[0] == signatures[j]).mean()
        assert abs(estimate - jaccard(sets[0], sets[j])) < 0.1


def test_lsh_parameters_fill_the_signature():
    bands, rows = lsh_parameters(0.8, 128)
    assert (bands, rows) == (21, 6)  # 6 rows: finds a pair at exactly 0.8 with p = 0.998
    assert 1 - (1 - 0.8**rows) ** bands >= 0.99 > 1 - (1 - 0.8**(rows + 1)) ** (128 // (rows + 1))


def test_near_duplicate_clusters_keep_the_first():
    texts = ["how do i reset my password on the app", "unrelated question about card fees",
             "how do i reset my password on the app now", "how can i reset my password on the app now",
             "completely different"]
    found = near_duplicate_clusters(texts, threshold=0.7)
    assert found.cluster == [0, 1, 0, 0, 4]
    assert found.partner[2] == 0 and found.similarity[2] >= 0.7


@pytest.mark.parametrize("text, expected", [("0.7,0.15,0.15", (0.7, 0.15, 0.15)), ("80,10,10", (0.8, 0.1, 0.1))])
def test_parse_fractions(text, expected):
    assert parse_fractions(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["0.7,0.3", "a,b,c", "0.5,0.5,0.5", "-0.1,0.6,0.5"])
def test_parse_fractions_rejects(text):
    with pytest.raises(UserError, match="--split"):
        parse_fractions(text)


def test_split_is_stratified_grouped_and_seeded():
    labels = {g: "rare" if g < 3 else "common" for g in range(200)}
    groups = [g for g in range(200) for _ in range(1 + (g % 3 == 0))]  # some groups of two records
    first = assign_splits(groups, labels, (0.7, 0.15, 0.15), seed=0)
    assert first == assign_splits(groups, labels, (0.7, 0.15, 0.15), seed=0)
    assert first != assign_splits(groups, labels, (0.7, 0.15, 0.15), seed=1)
    by_group = {}
    for group, name in zip(groups, first):
        assert by_group.setdefault(group, name) == name  # a group never straddles splits
    rare = Counter(by_group[g] for g in range(3))
    assert rare == Counter(train=1, validation=1, test=1)  # every label in every split
    counts = Counter(first)
    assert abs(counts["train"] / len(groups) - 0.7) < 0.02
