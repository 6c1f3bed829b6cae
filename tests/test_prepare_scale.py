"""``data prepare`` at scale: the same output for 1 and 2 worker processes and for Ray Data, on data
with exact and near duplicates and PII. (Peak memory against input size is measured by
benchmarks/bench_prepare_scale.py: a peak-RSS test of 8,000 vs 32,000 records in child processes ran
past 600 s on the shared 2-core machine, so it is not in the suite.)

Chunks and the parallel threshold are made small here so that a few thousand records already span
many chunks and both workers (the same code paths as a million records, in seconds).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import pytest

from tuneloop.data import prepare_chunks, prepare_engines, stats
from tuneloop.data.prepare import PrepareOptions, prepare
from tuneloop.errors import UserError

SPLIT_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl")
TOPICS = ["card", "refund", "transfer", "pin", "statement", "limit", "address", "loan", "app", "fee"]
PII = [" Mail me at {n}.x@example.com.", " My card is 4111 1111 1111 1111.", " Call +44 20 7946 {n:04d}.",
       " I logged in from 10.0.{a}.{b}.", ""]


def corpus_lines(n: int, seed: int = 0) -> list[str]:
    """Support chats with ~5% exact duplicates (case/punctuation changed), ~5% near duplicates (a
    word added), PII in most, a system prompt on some, classification records and a few bad lines."""
    rng, recent, lines = random.Random(seed), [], []
    for i in range(n):
        roll = rng.random()
        if recent and roll < 0.05:
            record = json.loads(rng.choice(recent))
            record["messages"][-2]["content"] = record["messages"][-2]["content"].upper() + "!"
        elif recent and roll < 0.10:
            record = json.loads(rng.choice(recent))
            record["messages"][-1]["content"] += " Thanks for waiting."
        elif roll < 0.12:
            lines.append('{"messages": [broken json' if roll < 0.11 else json.dumps({"text": "x", "label": "a"}))
            continue
        else:
            topic = rng.choice(TOPICS)
            question = (f"Question {i} about my {topic}: it failed {rng.randrange(1, 60)} times at "
                        f"{rng.choice(['Tesco', 'Uber', 'Lidl', 'Ikea'])}." + rng.choice(PII).format(
                            n=rng.randrange(10**4), a=rng.randrange(256), b=rng.randrange(256)))
            record = {"messages": [{"role": "user", "content": question},
                                   {"role": "assistant", "content": f"About your {topic}: case {i} is open."}]}
            if rng.random() < 0.3:
                record["messages"].insert(0, {"role": "system", "content": "You are a banking assistant."})
        lines.append(json.dumps(record))
        recent = (recent + [lines[-1]])[-500:]
    return lines


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 200 records, workers from the first record on, a token sample of 300."""
    monkeypatch.setattr(prepare_chunks, "CHUNK_RECORDS", 200)
    monkeypatch.setattr(prepare_engines, "PARALLEL_MIN_RECORDS", 0)
    monkeypatch.setattr(stats, "EXACT_TOKEN_LIMIT", 300)


def _data_hashes(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    hashes = {entry["path"]: entry["sha256"] for entry in manifest["outputs"]}
    for name in SPLIT_FILES:  # the manifest describes the files as written
        assert hashes[name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    return {name: hashes[name] for name in SPLIT_FILES}


def _report_without_timing(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    for key in ("seconds", "stage_seconds"):
        report.pop(key)
    for key in ("workers", "engine", "ray_address"):
        report["settings"].pop(key)
    return report


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(corpus_lines(2000)) + "\n")
    return path


def test_two_workers_write_what_one_writes(tmp_path, corpus, small_chunks, tiny_model_dir):
    options = dict(model=str(tiny_model_dir), max_seq_len=48)  # real tokenizer; sampled counts (> 300)
    one = prepare([corpus], tmp_path / "one", PrepareOptions(workers=1, **options))
    two = prepare([corpus], tmp_path / "two", PrepareOptions(workers=2, **options))
    assert _data_hashes(tmp_path / "one") == _data_hashes(tmp_path / "two")
    assert _report_without_timing(tmp_path / "one") == _report_without_timing(tmp_path / "two")
    counts = one.counts
    assert counts["exact_duplicates"] > 50 and counts["near_duplicates"] > 30 and counts["invalid"] > 10
    assert counts["pii_redacted"] > 700 and one.tokens["counted"]["estimated_from_bytes"] > 0
    assert two.tokens["counted"]["exact"] > 300  # the sample plus every record that could exceed 48
    # The output is sound, not only equal: PII gone, each output record once, clusters kept whole.
    text = "".join((tmp_path / "two" / name).read_text() for name in SPLIT_FILES)
    assert "@example.com" not in text and "4111 1111" not in text and "<EMAIL>" in text
    ids = [json.loads(line)["id"] for line in text.splitlines()]
    assert len(ids) == len(set(ids)) == counts["output"]


def test_auto_task_guessed_from_the_first_chunk_is_corrected(tmp_path, small_chunks, monkeypatch):
    # The first chunk is all classification; the majority (and so the task) is sft.
    classification = [json.dumps({"text": f"text {i}", "label": "a" if i % 2 else "b"}) for i in range(200)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(classification + corpus_lines(600)) + "\n")
    report = prepare([path], tmp_path / "out", PrepareOptions(model=None, workers=1))
    assert report.task == "sft"
    one_chunk = tmp_path / "one_chunk"
    # The whole file in the first chunk: the first guess is right at once.
    monkeypatch.setattr(prepare_chunks, "CHUNK_RECORDS", 10_000)
    prepare([path], one_chunk, PrepareOptions(model=None, workers=1))
    assert _data_hashes(tmp_path / "out") == _data_hashes(one_chunk)


@pytest.mark.slow  # starting a local Ray cluster takes 10-100 s on 2 busy cores
def test_ray_engine_writes_what_local_writes(tmp_path, corpus, small_chunks):
    pytest.importorskip("ray.data")
    local = prepare([corpus], tmp_path / "local", PrepareOptions(model=None, workers=2))
    ray = prepare([corpus], tmp_path / "ray", PrepareOptions(model=None, workers=2, engine="ray"))
    assert _data_hashes(tmp_path / "local") == _data_hashes(tmp_path / "ray")
    assert _report_without_timing(tmp_path / "local") == _report_without_timing(tmp_path / "ray")
    assert ray.settings["engine"] == "ray" and ray.counts == local.counts


def test_ray_missing_is_a_user_error_with_the_install_hint(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as when not installed
    with pytest.raises(UserError) as caught:
        prepare([corpus], tmp_path / "out", PrepareOptions(model=None, engine="ray"))
    assert "--engine ray" in str(caught.value) and "tuneloop[scale]" in caught.value.hint


def test_ray_address_without_ray_engine_is_refused():
    with pytest.raises(UserError, match="only used with --engine ray"):
        PrepareOptions(ray_address="auto")
