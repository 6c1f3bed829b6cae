"""Ingest (every file type, with line numbers) and record validation (exact fields and messages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuneloop.cli.data import data
from tuneloop.data.ingest import ColumnMap, expand_inputs, read_records
from tuneloop.data.records import to_canonical
from tuneloop.data.validate import detect_shape, validate_record
from tuneloop.errors import UserError

MESSY = Path(__file__).parent / "data" / "messy.jsonl"


def fields(obj, task="auto"):
    return [issue.field for issue in validate_record(obj, task)[1]]


@pytest.mark.parametrize("obj, shape", [
    ({"messages": []}, "chat"), ({"instruction": "a", "output": "b"}, "instruction"),
    ({"prompt": "a", "completion": "b"}, "prompt_completion"), ({"text": "a"}, "text"),
    ({"text": "a", "label": "x"}, "classification"), ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference"),
    ({"foo": 1}, None), ([1], None),
])
def test_detect_shape(obj, shape):
    assert detect_shape(obj) == shape


def test_chat_checks_name_each_field():
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert fields(ok) == []
    assert fields({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}) == \
        ["messages[1].role", "messages"]
    assert fields({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "text": "x"}]}) == \
        ["messages[1].text", "messages[1].content"]
    assert fields({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                                {"role": "assistant", "content": "c"}]}) == ["messages[1].role"]
    assert fields({**ok, "labl": "x"}) == ["labl"]
    assert "did you mean 'label'" in validate_record({**ok, "labl": "x"})[1][0].message


def test_task_specific_checks():
    assert fields({"text": "hello"}, "classification") == ["label"]
    assert fields({"text": "hello", "label": ["a"]}, "classification") == ["label"]
    assert fields({"prompt": "q", "chosen": "same", "rejected": "same "}, "preference") == ["rejected"]
    assert fields({"prompt": "q", "chosen": "a"}, "preference") == ["rejected"]
    assert fields({"prompt": "q", "completion": "a"}, "preference") == ["record"]
    assert fields({"messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}) == []
    assert fields({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
                   "chosen": "a", "rejected": "b"}) == ["messages[1].role"]


def test_canonical_forms():
    assert to_canonical({"instruction": "Sum", "input": "1+1", "output": "2"}, "instruction") == {
        "messages": [{"role": "user", "content": "Sum\n\n1+1"}, {"role": "assistant", "content": "2"}]}
    assert to_canonical({"text": "t", "label": 3}, "classification") == {
        "messages": [{"role": "user", "content": "t"}, {"role": "assistant", "content": "3"}], "label": "3"}
    assert to_canonical({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
                        "preference") == {"prompt": "p", "chosen": "a", "rejected": "b"}


def test_ingest_line_numbers_for_each_file_type(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n{bad\n')
    (tmp_path / "b.json").write_text('[\n  {"text": "x"},\n\n  {"text": "y",\n   "label": "z"}\n]\n')
    (tmp_path / "c.csv").write_text('text,category\n"multi\nline",a\nshort\nplain,b\n')
    (tmp_path / "d.md").write_text("# A document\n\nBody.\n")
    got = [(Path(r.path).name, r.line, r.obj, r.error is not None) for p in expand_inputs([tmp_path])
           for r in read_records(p)]
    assert got == [
        ("a.jsonl", 1, {"text": "one"}, False), ("a.jsonl", 3, {"text": "two"}, False), ("a.jsonl", 4, None, True),
        ("b.json", 2, {"text": "x"}, False), ("b.json", 4, {"text": "y", "label": "z"}, False),
        ("c.csv", 2, {"text": "multi\nline", "category": "a"}, False), ("c.csv", 4, None, True),
        ("c.csv", 5, {"text": "plain", "category": "b"}, False),
        ("d.md", 1, {"text": "# A document\n\nBody.\n"}, False),
    ]


def test_column_mapping_for_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"q": ["hi", "yo"], "intent": ["greet", "greet"], "extra": [1, 2]}), tmp_path / "t.parquet")
    rows = [r.obj for r in read_records(tmp_path / "t.parquet", ColumnMap("q", "intent"))]
    assert rows == [{"text": "hi", "label": "greet"}, {"text": "yo", "label": "greet"}]
    with pytest.raises(UserError, match="no column 'intnet'") as e:
        list(read_records(tmp_path / "t.parquet", ColumnMap("q", "intnet")))
    assert "did you mean --label-column intent" in str(e.value)


def test_missing_and_unsupported_inputs(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        expand_inputs([tmp_path / "nope.jsonl"])
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(UserError, match="unsupported file type"):
        expand_inputs([tmp_path / "x.xlsx"])


def test_cli_validate_prints_file_line_field_and_exits_1():
    result = CliRunner().invoke(data, ["validate", str(MESSY)])
    assert result.exit_code == 1
    lines = [l for l in result.stdout.splitlines() if l.strip()]
    located = [tuple(l.split(": ")[0].rsplit(":", 1)[1:]) + (l.split(": ")[1],) for l in lines]
    assert located == [("2", "record"), ("3", "messages"), ("4", "messages[1].role"), ("4", "messages"),
                       ("5", "messages[2].role"), ("6", "messages[1].content"), ("7", "messages[0].content"),
                       ("8", "lable"), ("19", "record"), ("20", "record"), ("24", "record"), ("25", "messages")]
    assert all(l.startswith(f"{MESSY}:") for l in lines)


def test_cli_validate_exits_0_on_clean_file(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    result = CliRunner().invoke(data, ["validate", str(good)])
    assert result.exit_code == 0, result.output
