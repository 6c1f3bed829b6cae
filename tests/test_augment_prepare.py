"""Augmented records never land in validation or test after ``data prepare``, and never displace an
original; the CLI writes augmented files that ``data validate`` accepts."""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.data.augment import augment_sources, AugmentOptions, load_sources
from tuneloop.data.augment_provenance import origin_id
from tuneloop.data.clean import clean_text, normalise_for_dedup
from tuneloop.data.prepare import PrepareOptions, prepare
from tuneloop.paths import read_jsonl

SUPPORT = Path(__file__).resolve().parents[1] / "src" / "tuneloop" / "quickstart" / "data" / "support_chats.jsonl"


def _user_key(record: dict) -> str:
    return normalise_for_dedup(" ".join(clean_text(m["content"]) for m in record["messages"] if m["role"] == "user"))


def _originals(tmp_path: Path, n: int = 80) -> tuple[Path, list[dict]]:
    raw = []
    for line in SUPPORT.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("messages"), list) and len(obj["messages"]) == 3 \
                and all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                        and isinstance(m.get("content"), str) and m["content"].strip() for m in obj["messages"]):
            raw.append(obj)
    raw = raw[:n]
    path = tmp_path / "support.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))
    return path, raw


def test_augmented_records_go_to_train_only(tmp_path):
    originals, raw = _originals(tmp_path)
    sources, skipped = load_sources(originals)
    assert skipped == [] and len(sources) == len(raw)
    result = augment_sources(sources, AugmentOptions(method="noise", n=2, seed=0))
    augmented = tmp_path / "augmented.jsonl"
    augmented.write_text("".join(json.dumps(r) + "\n" for r in result.records))
    assert result.counts["output"] > 100

    report = prepare([augmented, originals], tmp_path / "prepared",  # augmented file first on purpose
                     PrepareOptions(model=None, pii=False, seed=1))
    splits = {name: read_jsonl(tmp_path / "prepared" / f"{name}.jsonl") for name in ("train", "validation", "test")}
    assert not any("augmented_from" in r for name in ("validation", "test") for r in splits[name])
    in_train = [r for r in splits["train"] if "augmented_from" in r]
    assert in_train and all(r["augmentation"] == "noise" for r in in_train)

    # No variant of a held-out conversation is in train: its source is a train record.
    text_of_origin = {origin_id(r): _user_key(r) for r in raw}
    held_out = {_user_key(r) for name in ("validation", "test") for r in splits[name]}
    train_texts = {_user_key(r) for r in splits["train"] if "augmented_from" not in r}
    assert all(text_of_origin[r["augmented_from"]] in train_texts for r in in_train)
    assert not any(text_of_origin[r["augmented_from"]] in held_out for r in in_train)
    dropped = [i for i in report.issues if i["kind"] == "augmented_from_held_out"]
    assert dropped  # with 30% held out, some variants had to go

    c = report.counts
    assert c["input"] == c["invalid"] + c["exact_duplicates"] + c["near_duplicates"] + c["filtered"] + c["output"]
    assert report.splits["validation"] + report.splits["test"] == len(held_out)
    # The originals were split on their own: their held-out share is the usual one.
    assert report.splits["train"] == len(train_texts) + len(in_train)


def test_an_augmented_copy_never_displaces_its_original(tmp_path):
    originals, raw = _originals(tmp_path, n=10)
    copy = {**raw[0], "augmented_from": origin_id(raw[0]), "augmentation": "paraphrase"}
    augmented = tmp_path / "augmented.jsonl"
    augmented.write_text(json.dumps(copy) + "\n")
    report = prepare([augmented, originals], tmp_path / "prepared", PrepareOptions(model=None, pii=False))
    duplicates = [i for i in report.issues if i["kind"] == "exact_duplicate"]
    assert [d["source"] for d in duplicates] == [f"{augmented}:1"]
    outputs = [r for name in ("train", "validation", "test")
               for r in read_jsonl(tmp_path / "prepared" / f"{name}.jsonl")]
    assert len(outputs) == 10 and not any("augmented_from" in r for r in outputs)


def test_cli_augment_then_validate(tmp_path):
    from click.testing import CliRunner

    from tuneloop.cli.main import cli

    originals, _ = _originals(tmp_path, n=20)
    out = tmp_path / "noisy.jsonl"
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "augment", str(originals), "--out", str(out), "--method", "noise",
                                 "--n", "2", "--seed", "5"], standalone_mode=False)
    assert result.exit_code == 0, result.output
    written = read_jsonl(out)
    assert f"-> {len(written)} new records in {out}" in result.output
    assert all(r["augmentation"] == "noise" and r["augmented_from"].startswith("h") for r in written)
    check = runner.invoke(cli, ["data", "validate", str(out)], standalone_mode=False)
    assert check.exit_code == 0, check.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = runner.invoke(cli, ["data", "augment", str(bad), "--out", str(tmp_path / "x.jsonl"),
                                 "--method", "noise"], standalone_mode=False)
    assert isinstance(result.exception, Exception) and "bad.jsonl:1: messages: has no assistant" in str(result.exception)
    assert not (tmp_path / "x.jsonl").exists()
