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
