"""Agreement statistics against hand-computed values; majority vote; report and export from a labels file."""

from __future__ import annotations

import pytest

from tuneloop.annotate.agreement import (cohen_kappa, count_matrix, fleiss_kappa, majority,
                                         per_label_disagreement)
from tuneloop.annotate.report import agreement_report, export_records
from tuneloop.annotate.store import LabelEvent, LabelStore

# Wikipedia's Fleiss' kappa example: 10 subjects, 14 raters, 5 categories -> kappa 0.210.
WIKIPEDIA_FLEISS = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def test_cohen_kappa_on_a_2x2_table():
    # 50 records: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_yes = 0.5 * 0.6 = 0.3, p_no = 0.5 * 0.4 = 0.2, p_e = 0.5; kappa = 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_perfect_and_chance():
    assert cohen_kappa(["x", "y", "x"], ["x", "y", "x"]) == pytest.approx(1.0)
    assert cohen_kappa(["x", "x"], ["x", "x"]) == 1.0  # one category only: perfect agreement
    # p_o = 0.5, p_e = 0.5 -> 0
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == pytest.approx(0.0)


def test_fleiss_kappa_wikipedia_example():
    assert fleiss_kappa(WIKIPEDIA_FLEISS) == pytest.approx(0.2099, abs=5e-4)
    assert round(fleiss_kappa(WIKIPEDIA_FLEISS), 3) == 0.210


def test_fleiss_kappa_skips_single_ratings_and_handles_unequal_rows():
    # Row 3 has one rating (no pairs): ignored. Rows: [2,0] P=1, [1,2] P=1/3 -> P_bar=2/3;
    # shares over 5 ratings: 3/5, 2/5 -> P_e = 0.52; kappa = (2/3 - 0.52)/0.48.
    assert fleiss_kappa([[2, 0], [1, 2], [0, 1]]) == pytest.approx((2 / 3 - 0.52) / 0.48)


def test_count_matrix_majority_and_per_label():
    votes = {"r1": ["a", "a", "b"], "r2": ["b", "b"], "r3": ["c"]}
    assert count_matrix(votes, ["a", "b", "c"]) == [[2, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert majority(["a", "b", "a"]) == "a"
    assert majority(["a", "b"]) is None
    assert per_label_disagreement(votes) == {"a": {"records": 1, "disputed": 1, "rate": 1.0},
                                             "b": {"records": 2, "disputed": 1, "rate": 0.5}}


def _event(record_id, annotator, value, task="classification"):
    return LabelEvent(record_id, annotator, task, value, None, False,
                      [{"role": "user", "content": f"text {record_id}"}], f"q.jsonl:{record_id}")


def test_report_and_export_from_a_labels_file(tmp_path):
    store = LabelStore(tmp_path / "labels.jsonl")
    # Two annotators: agree on r1, r2, r3; disagree on r4 (tie). ana relabels r3: her latest counts.
    for rid, a, b in [("1", "yes", "yes"), ("2", "no", "no"), ("3", "no", "yes"), ("4", "yes", "no")]:
        store.append(_event(rid, "ana", a))
        store.append(_event(rid, "bo", b))
    store.append(_event("3", "ana", "yes"))
    store.append(_event("5", "ana", "no"))  # single label: resolved by itself
    report = agreement_report(LabelStore(tmp_path / "labels.jsonl"))
    # pairs: ana yes,no,yes,yes / bo yes,no,yes,no: p_o = 3/4, p_e = (3*2 + 1*2)/16 = 0.5 -> kappa 0.5
    assert report["cohen_kappa"] == 0.5
    assert report["fleiss_kappa"] is None
    assert report["records"] == 5 and report["ties"] == 1
    assert [d["record_id"] for d in report["disputed"]] == ["4"]
    records, ties = export_records(store)
    assert [r["id"] for r in records] == ["1", "2", "3", "5"]
    assert records[2]["label"] == "yes"
    assert records[2]["text"] == "text 3"
    assert [t["record_id"] for t in ties] == ["4"]


def test_three_annotators_give_fleiss(tmp_path):
    store = LabelStore(tmp_path / "labels.jsonl")
    for rid, values in {"1": "aab", "2": "bbb", "3": "aaa"}.items():
        for name, value in zip(["ana", "bo", "cy"], values):
            store.append(_event(rid, name, value))
    report = agreement_report(store)
    # rows [2,1],[0,3],[3,0]: P = 1/3, 1, 1 -> 7/9; shares 5/9, 4/9 -> P_e = 41/81
    assert report["fleiss_kappa"] == round((7 / 9 - 41 / 81) / (1 - 41 / 81), 4)
    assert report["cohen_kappa"] is None
    assert report["disputed"][0]["resolved"] == "a"
