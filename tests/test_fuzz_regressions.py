"""Inputs the fuzzers found that crashed a parser, kept as regression tests (each now a UserError
naming the file, or handled). Found by tests/test_fuzz.py and benchmarks/fuzz.py."""

from __future__ import annotations

import io

import pytest

from tuneloop.data.ingest import read_records
from tuneloop.errors import UserError


def _damaged_parquet() -> bytes:
    """A Parquet file whose footer is intact (so it opens) but whose first page header is garbage."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"text": f"row {i}", "label": "a"} for i in range(20)]), buffer)
    data = bytearray(buffer.getvalue())
    data[4:40] = b"\xff" * 36  # just after the leading PAR1 magic: the first column chunk's page header
    return bytes(data)


def test_a_parquet_file_damaged_after_its_footer_is_a_user_error(tmp_path):
    # Found by fuzzing (ingest_parquet): pyarrow opened the file, then raised OSError "Couldn't
    # deserialize thrift ... Deserializing page header failed" from iter_batches, a traceback.
    path = tmp_path / "damaged.parquet"
    path.write_bytes(_damaged_parquet())
    with pytest.raises(UserError, match=r"damaged.parquet: cannot read as Parquet after row 0"):
        list(read_records(path))


def test_a_blank_key_is_named_quoted_in_its_issue():
    # Found by fuzzing (validate_convert, ingest_json): {"messages": null, "": null} gave an issue whose
    # field was "", so `data validate` printed "file:2: : unknown key" with nothing to find.
    from tuneloop.data.validate import validate_record

    _, issues = validate_record({"messages": None, "": None}, "sft")
    assert [i.field for i in issues if "without a name" in i.message] == ['""']
    _, issues = validate_record({"text": "hello", "label": "a", " ": "x"}, "classification")
    assert [(i.field, i.message.split(";")[0]) for i in issues] == [('" "', "a key without a name (in a CSV: a "
                                                                    "header column without a name but with values)")]


def test_a_trailing_comma_in_a_csv_is_not_a_column(tmp_path):
    # Spreadsheets end rows with a comma: an unnamed column of empty cells. It carries nothing, so the
    # rows stay valid; an unnamed column with a value is reported with the quoted key.
    from tuneloop.data.validate import validate_record

    path = tmp_path / "trailing.csv"
    path.write_text("text,label,\nhello,a,\nworld,b,oops\n")
    first, second = read_records(path)
    assert first.obj == {"text": "hello", "label": "a"} and validate_record(first.obj, "classification")[1] == []
    assert [i.field for i in validate_record(second.obj, "classification")[1]] == ['""']


def test_a_csv_header_naming_a_column_twice_is_a_user_error(tmp_path):
    # Found by fuzzing (ingest_csv): "text,text,text," made one key of three columns, the last cell
    # silently replacing the others; the records then trained on something else.
    path = tmp_path / "twice.csv"
    path.write_text("text,label,text\nhello,a,world\n")
    with pytest.raises(UserError, match=r"twice.csv:1: columns 1 and 3 of the header are both named 'text'"):
        list(read_records(path))
    path.write_text("text,,\nhello,,\n")  # two unnamed columns (trailing commas)
    with pytest.raises(UserError, match=r'columns 2 and 3 of the header are both unnamed \(""\)'):
        list(read_records(path))
