"""``data prepare`` end to end: the messy fixture's exact accounting, Banking77, random malformed input."""

from __future__ import annotations

import hashlib
import json
import string
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.cli.data import data
from tuneloop.data.clean import normalise_for_dedup
from tuneloop.data.prepare import PrepareOptions, prepare
from tuneloop.errors import UserError
from tuneloop.paths import read_jsonl

MESSY = Path(__file__).parent / "data" / "messy.jsonl"
PARTS = ("invalid", "exact_duplicates", "near_duplicates", "filtered", "output")
OUTPUTS = ("train.jsonl", "validation.jsonl", "test.jsonl", "report.json", "report.html", "manifest.json")


def outputs(out: Path) -> list[dict]:
    return [r for name in ("train", "validation", "test") for r in read_jsonl(out / f"{name}.jsonl")]


def test_messy_fixture_exact_counts_and_lines(tmp_path):
    report = prepare([MESSY], tmp_path, PrepareOptions(model=None))
    assert report.counts == {"input": 25, "invalid": 11, "exact_duplicates": 2, "near_duplicates": 1,
                             "filtered": 1, "pii_redacted": 4, "output": 10}
    assert report.task == "sft"
    line_of = lambda kind: sorted(int(i["source"].rsplit(":", 1)[1]) for i in report.issues if i["kind"] == kind)
    assert sorted(set(line_of("invalid"))) == [2, 3, 4, 5, 6, 7, 8, 19, 20, 24, 25]
    assert line_of("exact_duplicate") == [11, 26]
    assert line_of("near_duplicate") == [12]
    assert line_of("empty") == [23]
    assert {k: v for k, v in report.pii.items() if k != "enabled"} == {
        "EMAIL": 1, "CREDENTIAL": 1, "IBAN": 1, "CARD": 1, "SSN": 1, "IP": 2, "PHONE": 1, "NAME": 1}
    records = {int(r["source"].rsplit(":", 1)[1]): r for r in outputs(tmp_path)}
    assert sorted(records) == [1, 9, 10, 13, 14, 15, 16, 17, 18, 22]
    assert records[15]["messages"][0]["content"] == "My SSN is <SSN> and I logged in from <IP> and <IP>."
    assert records[22]["messages"][0]["content"] == "What's the fee for transfers?"  # mojibake + NUL fixed
    assert records[18] == {"id": records[18]["id"], "source": f"{MESSY}:18", "label": "lost_or_stolen_card",
                           "messages": [{"role": "user", "content": "I lost my card yesterday"},
                                        {"role": "assistant", "content": "lost_or_stolen_card"}]}
    assert records[17]["text"].startswith("Our refund policy")


def test_output_files_report_and_manifest(tmp_path):
    report = prepare([MESSY], tmp_path, PrepareOptions(model=None, seed=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUTS)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["counts"]["input"] == sum(saved["counts"][k] for k in PARTS)
    assert saved["splits"] == {"train": 7, "validation": 2, "test": 1} == report.splits
    assert saved["tokens"]["estimated"] is True and "no --model" in saved["tokens"]["tokenizer"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["inputs"][0]["sha256"] == hashlib.sha256(MESSY.read_bytes()).hexdigest()
    for entry in manifest["outputs"]:
        assert entry["sha256"] == hashlib.sha256((tmp_path / entry["path"]).read_bytes()).hexdigest()
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and "Issues (" in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")
    again = tmp_path / "again"
    prepare([MESSY], again, PrepareOptions(model=None, seed=3))
    assert (again / "train.jsonl").read_bytes() == (tmp_path / "train.jsonl").read_bytes()  # reproducible


def test_real_tokenizer_counts_tokens(tmp_path, tiny_model_dir):
    report = prepare([MESSY], tmp_path, PrepareOptions(model=str(tiny_model_dir), max_seq_len=40))
    assert report.tokens["estimated"] is False
    assert report.tokens["records"] == 10 and report.tokens["over_max_seq_len"] >= 1
    assert sum(b["count"] for b in report.tokens["histogram"]) == 10


def test_preference_task_and_keep_near_duplicates(tmp_path):
    rows = [{"prompt": f"Question number {i} about refunds?", "chosen": f"Helpful answer {i}.",
             "rejected": "No."} for i in range(30)]
    rows.append({"prompt": "Question number 1 about refunds??", "chosen": "Helpful answer 1.", "rejected": "No."})
    rows.append({"prompt": "x", "chosen": "same", "rejected": "same"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = prepare([path], tmp_path / "out", PrepareOptions(model=None, keep_near_duplicates=True))
    assert report.task == "preference"
    assert report.counts["invalid"] == 1 and report.counts["exact_duplicates"] == 1  # "??" normalises away
    assert set(outputs(tmp_path / "out")[0]) == {"id", "source", "prompt", "chosen", "rejected"}


def test_cli_user_errors_exit_1_without_traceback(tmp_path):
    from tuneloop.cli.main import main

    for argv, message in [
        (["data", "prepare", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")], "no such file"),
        (["data", "prepare", str(MESSY), "--out", str(tmp_path / "o"), "--split", "0.9,0.2,0.1"], "sum to"),
        (["data", "prepare", str(MESSY), "--out", str(tmp_path / "o"), "--near-dup-threshold", "2"], "between 0 and 1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 1, argv
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli_prepare_csv_with_columns(tmp_path):
    csv_path = tmp_path / "q.csv"
    csv_path.write_text("text,category\n" + "".join(f"question {i} about topic {i % 3},t{i % 3}\n"
                                                     for i in range(30)))
    result = CliRunner().invoke(data, ["prepare", str(csv_path), "--out", str(tmp_path / "o"), "--model", "none",
                                       "--task", "classification", "--text-column", "text", "--label-column",
                                       "category", "--near-dup-threshold", "0"])
    assert result.exit_code == 0, result.output
    assert "30 records in" in result.output
    labels = json.loads((tmp_path / "o" / "report.json").read_text())["labels"]
    assert all(set(per_split) == {"t0", "t1", "t2"} for per_split in labels.values())


# Random malformed input: never a traceback, every bad record reported, nothing silently dropped.
_keys = st.sampled_from(["messages", "prompt", "completion", "text", "label", "chosen", "rejected", "instruction",
                         "output", "input", "role", "content", "id", "junk"])
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
                     max_leaves=8)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]),
                                  "content": st.text(string.printable, max_size=20) | _json})
_record = (st.dictionaries(_keys, _json, max_size=4)
           | st.fixed_dictionaries({"messages": st.lists(_message, max_size=4)})
           | st.fixed_dictionaries({"text": st.text(max_size=30), "label": st.sampled_from(["a", "b", 1, None])})
           | st.fixed_dictionaries({"prompt": st.text(max_size=20), "completion": st.text(max_size=20)}))
_line = _record.map(json.dumps) | st.text(string.printable.replace("\n", "").replace("\r", ""), min_size=1,
                                          max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, min_size=1, max_size=25), task=st.sampled_from(["auto", "sft", "classification"]))
def test_random_records_are_all_accounted_for(tmp_path_factory, lines, task):
    tmp = tmp_path_factory.mktemp("prop")
    path = tmp / "random.jsonl"
    path.write_text("\n".join(lines) + "\n")
    real = [i for i, line in enumerate(lines, 1) if line.strip()]
    try:
        report = prepare([path], tmp / "out", PrepareOptions(task=task, model=None))
    except UserError:
        assert not real  # the only user error here: a file without records
        return
    counts = report.counts
    assert counts["input"] == len(real) == sum(counts[k] for k in PARTS)
    out_sources = [r["source"] for r in outputs(tmp / "out")]
    assert len(out_sources) == counts["output"] == len(set(out_sources))
    issue_sources = {i["source"] for i in report.issues}
    assert {f"{path}:{i}" for i in real} == set(out_sources) | issue_sources
    assert not set(out_sources) & {i["source"] for i in report.issues if i["kind"] != "conflicting_label"}


def test_banking77_every_label_in_every_split_no_leak(tmp_path, banking77_csv):
    from datasketch import MinHash, MinHashLSH

    report = prepare([banking77_csv], tmp_path, PrepareOptions(task="classification", text_column="text",
                                                                 label_column="category", model=None))
    counts = report.counts
    assert counts["input"] == 10003 and counts["invalid"] == 0
    assert counts["input"] == sum(counts[k] for k in PARTS)
    assert all(len(per_split) == 77 for per_split in report.labels.values())
    # Independent check with datasketch: no pair across splits at character 5-gram Jaccard >= 0.8.
    texts, split_of = [], []
    for name in ("train", "validation", "test"):
        for record in read_jsonl(tmp_path / f"{name}.jsonl"):
            texts.append(normalise_for_dedup(record["messages"][0]["content"]))
            split_of.append(name)
    shingles = [{t[i:i + 5].encode() for i in range(max(1, len(t) - 4))} for t in texts]
    lsh = MinHashLSH(threshold=0.5, num_perm=64)
    hashes = MinHash.bulk([list(s) for s in shingles], num_perm=64)
    for i, h in enumerate(hashes):
        lsh.insert(i, h)
    leaks = [(i, j) for i, h in enumerate(hashes) for j in lsh.query(h)
             if split_of[i] != split_of[j] and len(shingles[i] & shingles[j]) / len(shingles[i] | shingles[j]) >= 0.8]
    assert leaks == []
    assert Counter(split_of) == Counter(report.splits)


def test_sampled_token_counts_keep_over_max_exact(tiny_model_dir):
    from tuneloop.data.stats import corpus_lengths, load_token_counter, record_lengths

    counter = load_token_counter(str(tiny_model_dir))
    records = [{"messages": [{"role": "user", "content": "word " * (i % 40 + 1)},
                             {"role": "assistant", "content": f"answer number {i}"}]} for i in range(300)]
    exact = record_lengths(counter, records)
    max_seq_len = int(sorted(exact)[-20])  # a limit a few dozen records exceed
    lengths, counted = corpus_lengths(counter, records, max_seq_len, exact_limit=100)
    assert counted["exact"] < 300 and counted["estimated_from_bytes"] == 300 - counted["exact"]
    assert (lengths > max_seq_len).sum() == (exact > max_seq_len).sum()
    assert abs(lengths.sum() - exact.sum()) / exact.sum() < 0.05


def test_shared_system_prompt_does_not_make_near_duplicates(tmp_path):
    system = "You are the support assistant of Example Bank. " * 12  # long, shared by every record
    rows = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": question},
                          {"role": "assistant", "content": answer}]}
            for question, answer in [("Where is my card?", "It ships today."), ("How do I close my account?",
                                     "Use the app settings."), ("Why was I charged twice?", "A hold; it drops.")]]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = prepare([path], tmp_path / "out", PrepareOptions(model=None))
    assert report.counts["near_duplicates"] == 0 and report.counts["output"] == 3
