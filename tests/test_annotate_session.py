"""Annotation sessions without a browser: the label store survives crashes, several annotators share a
queue, the terminal flow, model suggestions on the tiny model, and the stats/export CLI."""

from __future__ import annotations

import json

import pytest

from tuneloop.annotate.queue import load_queue
from tuneloop.annotate.session import open_session
from tuneloop.annotate.store import LabelStore
from tuneloop.annotate.terminal import run_terminal
from tuneloop.errors import UserError

LABELS = ["refund", "card", "other"]


def write_queue(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def queue(tmp_path):
    return write_queue(tmp_path / "queue.jsonl", [
        {"id": "r1", "text": "I want my money back", "label": "refund"},
        {"id": "r2", "text": "My card was declined"},
        {"id": "r3", "text": "Where is the store?"},
    ])


def test_store_drops_a_torn_last_line_and_reports_a_bad_middle_line(tmp_path, queue):
    labels = tmp_path / "labels.jsonl"
    session = open_session(queue, labels, LABELS)
    session.submit("r1", "ana", "refund")
    with open(labels, "a") as f:
        f.write('{"record_id": "r2", "annot')  # the process died mid-write
    session = open_session(queue, labels, LABELS)
    assert [e.record_id for e in session.store.events] == ["r1"]
    session.submit("r2", "ana", "card")
    lines = labels.read_text().splitlines()
    assert [json.loads(line)["record_id"] for line in lines] == ["r1", "r2"]

    labels.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(UserError, match=r"labels.jsonl:2: invalid JSON"):
        LabelStore(labels)


def test_several_annotators_per_record_and_resume(tmp_path, queue):
    labels = tmp_path / "labels.jsonl"
    session = open_session(queue, labels, LABELS, per_record=2)
    assert session.next_item("ana").id == "r1"
    event = session.submit("r1", "ana", "refund")
    assert event.accepted and event.suggestion == "refund"  # the queue's label is the suggestion
    assert session.next_item("ana").id == "r2"
    assert session.next_item("bo").id == "r1"  # r1 needs a second annotator
    session.submit("r1", "bo", "other")
    assert session.progress("bo").as_dict() == {"done": 1, "total": 3, "mine": 1}
    assert session.next_item("cy").id == "r2"  # r1 is done: two annotators labelled it

    resumed = open_session(queue, labels, LABELS, per_record=2)
    assert resumed.next_item("ana").id == "r2" and resumed.next_item("cy").id == "r2"
    assert resumed.next_item("ana", skip=["r2"]).id == "r3"
    with pytest.raises(UserError, match="did you mean 'refund'"):
        resumed.submit("r2", "ana", "refnd")
    with pytest.raises(UserError, match="no annotator name"):
        resumed.submit("r2", " ", "card")


def test_queue_errors_name_the_line(tmp_path):
    bad = write_queue(tmp_path / "q.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(UserError, match=r"q.jsonl:2: id: id 'a' already used at .*q.jsonl:1"):
        load_queue(bad, "classification")
    bad = write_queue(tmp_path / "q.jsonl", [{"text": "x"}, {"messages": [{"role": "assistant", "content": "hi"}]}])
    with pytest.raises(UserError, match=r"q.jsonl:2: messages: the prompt must end with a user message"):
        load_queue(bad, "answer")
    with pytest.raises(UserError, match=r"label 'refund' is not in --labels"):
        open_session(write_queue(tmp_path / "q2.jsonl", [{"text": "x", "label": "refund"}]),
                     tmp_path / "l.jsonl", ["card"])


def test_terminal_flow(tmp_path, queue):
    labels = tmp_path / "labels.jsonl"
    session = open_session(queue, labels, LABELS)
    answers = iter(["", "refnd", "2", "s"])  # accept; a typo (refused); pick label 2; skip r3
    shown = []
    saved = run_terminal(session, "ana", read=lambda prompt: next(answers), write=shown.append)
    assert saved == 2
    assert any("did you mean 'refund'" in line for line in shown)
    assert [(e.record_id, e.value) for e in LabelStore(labels).events] == [("r1", "refund"), ("r2", "card")]


def test_answer_task_in_the_terminal_keeps_multiline_answers(tmp_path):
    queue = write_queue(tmp_path / "q.jsonl", [{"prompt": "Do you ship to Canada?", "completion": "Yes."}])
    session = open_session(queue, tmp_path / "labels.jsonl", task="answer")
    answers = iter(["Yes, in 5-7 days.\\", "Customs fees may apply."])
    run_terminal(session, "ana", read=lambda prompt: next(answers), write=lambda line: None)
    event = LabelStore(tmp_path / "labels.jsonl").events[0]
    assert event.value == "Yes, in 5-7 days.\nCustoms fees may apply." and event.suggestion == "Yes."
    from tuneloop.annotate.report import export_records

    records, ties = export_records(LabelStore(tmp_path / "labels.jsonl"))
    assert ties == [] and records[0]["messages"] == [
        {"role": "user", "content": "Do you ship to Canada?"},
        {"role": "assistant", "content": "Yes, in 5-7 days.\nCustoms fees may apply."}]


def test_suggestions_from_the_tiny_model(tmp_path, queue, tiny_model_dir):
    items = write_queue(tmp_path / "q.jsonl", [{"id": "a", "text": "card declined"}, {"id": "b", "text": "refund"}])
    session = open_session(items, tmp_path / "labels.jsonl", LABELS, suggest_model=str(tiny_model_dir))
    assert session.suggestion("a")[1] in ("pending", "ready")  # usable before the model has loaded
    for record_id in ("a", "b"):
        assert session.suggester.wait(record_id, timeout=120) in LABELS
        assert session.suggestion(record_id)[1] == "ready"
    answers = open_session(write_queue(tmp_path / "a.jsonl", [{"prompt": "hello"}]), tmp_path / "al.jsonl",
                           task="answer", suggest_model=str(tiny_model_dir))
    item = answers.next_item("ana")
    assert isinstance(answers.suggester.wait(item.id, timeout=120), str)
    broken = open_session(items, tmp_path / "b.jsonl", LABELS, suggest_model=str(tmp_path / "no-such-model"))
    broken.suggester.wait("a", timeout=30)
    assert broken.suggestion("a") == (None, "failed") and "not found" in broken.suggester.error


def test_stats_and_export_cli(tmp_path, queue):
    from click.testing import CliRunner

    from tuneloop.cli.main import cli

    labels = tmp_path / "labels.jsonl"
    session = open_session(queue, labels, LABELS, per_record=2)
    for annotator, values in {"ana": ["refund", "card", "other"], "bo": ["refund", "refund", "other"]}.items():
        for record_id, value in zip(["r1", "r2", "r3"], values):
            session.submit(record_id, annotator, value)
    runner = CliRunner()
    stats = runner.invoke(cli, ["annotate", "stats", str(labels), "--json"], standalone_mode=False)
    report = json.loads(stats.output)
    # ana refund,card,other / bo refund,refund,other: p_o = 2/3, p_e = (1*2 + 1*0 + 1*1)/9 = 1/3 -> 0.5
    assert report["cohen_kappa"] == 0.5 and report["ties"] == 1
    assert report["disputed"][0]["values"] == {"ana": "card", "bo": "refund"}
    out = tmp_path / "labelled.jsonl"
    export = runner.invoke(cli, ["annotate", "export", str(labels), "--out", str(out)], standalone_mode=False)
    assert "2 resolved records written" in export.output and "tie" in export.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["label"]) for r in records] == [("r1", "refund"), ("r3", "other")]
    check = runner.invoke(cli, ["data", "validate", str(out), "--task", "classification"], standalone_mode=False)
    assert check.exit_code == 0, check.output
    text = runner.invoke(cli, ["annotate", "stats", str(labels)], standalone_mode=False).output
    assert "cohen kappa: 0.500" in text and "TIE" in text
