"""Read user data files into raw records, each with the file and line it came from.

Supported: ``.jsonl`` (one JSON value per line), ``.json`` (an array of records, or JSONL content in
a file named .json), ``.csv``, ``.parquet``, ``.txt``/``.md`` (one plain document per file, as a
``{"text": ...}`` record) and directories of these (searched recursively, in sorted order); also
directories written by ``datasets``' ``save_to_disk`` and Hugging Face hub dataset ids
(``org/name[:config][@split]``, from the local cache first), read through ``datasets``.

Text must be UTF-8 (a UTF-8 BOM is dropped); a UTF-16 or UTF-32 file is recognised by its BOM or
its NUL-byte pattern and refused with the encoding named and the ``iconv`` command that converts it.

Nothing here judges a record: a line that is not valid JSON becomes a :class:`RawRecord` with
``error`` set, so that the caller reports it with its line number instead of stopping. Problems with
a whole file (missing, unsupported type, a mapped CSV column that does not exist) are
:class:`~tuneloop.errors.UserError`.

Column mapping (``text_column``/``label_column``) renames those fields to ``text``/``label``. For
tabular files (CSV, Parquet) only the mapped columns are kept once a mapping is given, since such
files usually carry extra columns that are not training data.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import UserError, did_you_mean

JSON_SUFFIXES = (".jsonl", ".json")
TABLE_SUFFIXES = (".csv", ".parquet")
DOCUMENT_SUFFIXES = (".txt", ".md")
SUPPORTED_SUFFIXES = JSON_SUFFIXES + TABLE_SUFFIXES + DOCUMENT_SUFFIXES


@dataclass
class RawRecord:
    """One record as read: ``obj`` is the parsed value, or None with ``error`` saying why not."""

    path: str
    line: int
    obj: Any = None
    error: str | None = None

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class ColumnMap:
    text_column: str | None = None
    label_column: str | None = None

    def __bool__(self) -> bool:
        return bool(self.text_column or self.label_column)


# A Hugging Face hub dataset: org/name, optionally :config and @split (default split: train).
HUB_DATASET = re.compile(r"(?P<name>[\w.-]+/[\w.-]+)(?::(?P<config>[\w.-]+))?(?:@(?P<split>[\w.\[\]:%-]+))?")


def is_datasets_dir(path: Path) -> bool:
    """A directory written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def is_hub_dataset(raw) -> bool:
    return not Path(raw).exists() and HUB_DATASET.fullmatch(str(raw)) is not None


def expand_inputs(paths) -> list[Path]:
    """Inputs to read, in order: files as given, directories expanded recursively, ``save_to_disk``
    directories and hub dataset ids (``org/name[:config][@split]``) as one input each."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if is_datasets_dir(path) or is_hub_dataset(raw):
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise UserError(f"{path}: directory has no data files",
                                hint=f"put files ending in {', '.join(SUPPORTED_SUFFIXES)} in it")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise UserError(f"{path}: unsupported file type '{path.suffix or '(none)'}'",
                                hint=f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or directory")
    return files


# Byte-order marks, longest first (UTF-32 LE starts with UTF-16 LE's mark).
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32 (little-endian, with BOM)", "UTF-32", "utf-32-le"),
         (b"\x00\x00\xfe\xff", "UTF-32 (big-endian, with BOM)", "UTF-32", "utf-32-be"),
         (b"\xff\xfe", "UTF-16 (little-endian, with BOM)", "UTF-16", "utf-16-le"),
         (b"\xfe\xff", "UTF-16 (big-endian, with BOM)", "UTF-16", "utf-16-be"))


def _reads_as_text(data: bytes, codec: str) -> bool:
    """Whether ``data`` decodes as ``codec`` into mostly printable text (binary files do not)."""
    unit = 4 if "32" in codec else 2
    try:
        text = data[: len(data) // unit * unit].decode(codec)
    except UnicodeDecodeError:
        return False
    printable = sum(1 for c in text if c.isprintable() or c in "\r\n\t")
    return bool(text) and printable >= 0.9 * len(text)


def sniff_encoding(head: bytes) -> tuple[str, str] | None:
    """(description, iconv name) when the first bytes say UTF-16/32 rather than UTF-8, else None.

    Without a BOM, text in UTF-16/32 still shows itself: ASCII characters come with NUL bytes beside
    them in a fixed pattern (``{\x00"\x00`` is ``{"`` in UTF-16 LE).
    """
    for bom, description, name, codec in _BOMS:
        if head.startswith(bom):
            return (description, name) if _reads_as_text(head[len(bom):], codec) else None
    sample = head[:64]
    if len(sample) >= 8 and sample.count(0) >= len(sample) // 4:
        for description, name, codec in (
                ("UTF-32 little-endian (no BOM)", "UTF-32LE", "utf-32-le"),
                ("UTF-32 big-endian (no BOM)", "UTF-32BE", "utf-32-be"),
                ("UTF-16 little-endian (no BOM)", "UTF-16LE", "utf-16-le"),
                ("UTF-16 big-endian (no BOM)", "UTF-16BE", "utf-16-be")):
            if _reads_as_text(head, codec):
                return description, name
    return None


def check_encoding(path: Path) -> None:
    """A :class:`UserError` naming the encoding and the conversion when a text file is UTF-16/32."""
    with open(path, "rb") as f:
        found = sniff_encoding(f.read(512))
    if found is not None:
        description, name = found
        raise UserError(f"{path}: the file is {description} text, not UTF-8",
                        hint=f"convert it: iconv -f {name} -t UTF-8 '{path}' > '{path.stem}.utf8{path.suffix}' "
                             "(or re-save it as UTF-8 in your editor or spreadsheet)")


def read_records(path: str | Path, columns: ColumnMap = ColumnMap()) -> Iterator[RawRecord]:
    """Yield every record of one file with its 1-based line (CSV: physical line; Parquet: row)."""
    path = Path(path)
    if is_datasets_dir(path) or is_hub_dataset(path):
        rows = _read_datasets(path)
        yield from ((rename_columns(r, columns) if columns else r) for r in rows)
        return
    suffix = path.suffix.lower()
    if suffix != ".parquet":
        check_encoding(path)
    if suffix == ".jsonl":
        records = _read_jsonl(path)
    elif suffix == ".json":
        records = _read_json(path)
    elif suffix == ".csv":
        records = _read_csv(path, columns)
    elif suffix == ".parquet":
        records = _read_parquet(path, columns)
    elif suffix in DOCUMENT_SUFFIXES:
        text = _read_text(path)
        if "\x00" in text[:8192]:  # NUL bytes: a binary file renamed or saved as .txt/.md
            records = iter([RawRecord(str(path), 1, error="binary file (NUL bytes), not text; "
                                                          "save documents as UTF-8 text")])
        else:
            records = iter([RawRecord(str(path), 1, {"text": text})])
    else:
        raise UserError(f"{path}: unsupported file type '{suffix}'",
                        hint=f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if columns and suffix not in TABLE_SUFFIXES:
        records = (rename_columns(r, columns) for r in records)
    yield from records


def _read_datasets(path: Path) -> Iterator[RawRecord]:
    """Rows of a ``save_to_disk`` directory or a hub dataset, through ``datasets``; line = row number."""
    dataset = load_from_disk(path) if is_datasets_dir(path) else load_hub_dataset(str(path))
    for row, record in enumerate(dataset, 1):
        yield RawRecord(str(path), row, record)


def load_from_disk(path: Path):
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded or len(loaded) == 1:
            return loaded["train"] if "train" in loaded else next(iter(loaded.values()))
        raise UserError(f"{path}: a dataset with splits {', '.join(loaded)} and none named train",
                        hint=f"name the split's directory, e.g. {path / next(iter(loaded))}")
    return loaded


def load_hub_dataset(reference: str):
    """``org/name[:config][@split]`` from the local Hugging Face cache first, then the hub."""
    import datasets

    match = HUB_DATASET.fullmatch(reference)
    name, config, split = match["name"], match["config"], match["split"] or "train"
    errors = []
    for offline in (True, False):
        if not offline and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            break
        previous = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1" if offline else "0"
        try:
            return datasets.load_dataset(name, config, split=split)
        except Exception as e:  # datasets raises many types: missing cache, network, unknown split
            errors.append(f"{'cache' if offline else 'hub'}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                          if str(e) else type(e).__name__)
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
    raise UserError(f"{reference}: could not load the hub dataset ({'; '.join(errors)})",
                    hint="check the id, config and split (org/name[:config][@split]); offline, the dataset "
                         "must be in the Hugging Face cache (load it once online, or save_to_disk a copy)")


def _read_text(path: Path) -> str:
    # utf-8-sig drops a BOM; undecodable bytes become U+FFFD rather than stopping the whole file.
    return path.read_text(encoding="utf-8-sig", errors="replace")


def _json_error(e: json.JSONDecodeError) -> str:
    return f"invalid JSON: {e.msg} (column {e.colno})"


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    return (parse_jsonl_line(str(path), number, line) for number, line in _jsonl_lines(path))


def is_plain_jsonl(path: Path) -> bool:
    """A ``.jsonl`` file, whose lines can be parsed anywhere (see :func:`read_jsonl_lines`)."""
    return path.suffix.lower() == ".jsonl" and path.is_file()


def read_jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line of a JSONL file, unparsed; with
    :func:`parse_jsonl_line` the same records as :func:`read_records`, parsed where convenient."""
    check_encoding(path)
    return _jsonl_lines(path)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def parse_jsonl_line(path: str, number: int, line: str) -> RawRecord:
    try:
        return RawRecord(path, number, json.loads(line.rstrip("\r\n")))  # error columns on this line
    except json.JSONDecodeError as e:
        return RawRecord(path, number, error=_json_error(e))
    except RecursionError:
        return RawRecord(path, number, error="invalid JSON: nested too deeply")


def _read_json(path: Path) -> Iterator[RawRecord]:
    text = _read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several values, one per line: JSONL content in a .json file
            yield from _read_jsonl(path)
            return
        yield RawRecord(str(path), e.lineno, error=_json_error(e))
        return
    if isinstance(value, dict):
        yield RawRecord(str(path), 1, value)
        return
    if not isinstance(value, list):
        yield RawRecord(str(path), 1, error="expected a JSON array of records (or one record object)")
        return
    # Parse again element by element to know on which line each record starts.
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    line = 1 + text.count("\n", 0, position)
    for element in value:
        start = _skip_separators(text, position)
        line += text.count("\n", position, start)
        _, end = decoder.raw_decode(text, start)
        yield RawRecord(str(path), line, element)
        line += text.count("\n", start, end)
        position = end


def _skip_separators(text: str, position: int) -> int:
    while text[position] in " \t\r\n,":
        position += 1
    return position


def _column_error(path: Path, column: str, header: list[str], option: str) -> UserError:
    guess = did_you_mean(column, header)
    hint = f"did you mean --{option} {guess}?" if guess else f"columns are: {', '.join(header)}"
    return UserError(f"{path}: no column '{column}' for --{option}", hint=hint)


def _check_columns(path: Path, header: list[str], columns: ColumnMap) -> None:
    for column, option in ((columns.text_column, "text-column"), (columns.label_column, "label-column")):
        if column and column not in header:
            raise _column_error(path, column, header, option)


def _project(row: dict, columns: ColumnMap) -> dict:
    out = {}
    if columns.text_column:
        out["text"] = row[columns.text_column]
    if columns.label_column:
        out["label"] = row[columns.label_column]
    return out


def _read_csv(path: Path, columns: ColumnMap) -> Iterator[RawRecord]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one cell are fine
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        _check_header(path, header)
        if columns:
            _check_columns(path, header, columns)
        start_line = reader.line_num + 1
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield _csv_record(path, start_line, header, row, columns)
            start_line = reader.line_num + 1


def _check_header(path: Path, header: list[str]) -> None:
    """Two columns of one name would become one key, the later cell silently replacing the earlier."""
    seen: dict[str, int] = {}
    for number, name in enumerate(header, 1):
        if name in seen:
            shown = f"named '{name}'" if name.strip() else f"unnamed ({json.dumps(name)})"
            raise UserError(f"{path}:1: columns {seen[name]} and {number} of the header are both {shown}",
                            hint="name each column once; each column becomes a key of the record")
        seen.setdefault(name, number)


def _csv_record(path: Path, line: int, header: list[str], row: list[str], columns: ColumnMap) -> RawRecord:
    if len(row) != len(header):
        return RawRecord(str(path), line,
                         error=f"row has {len(row)} fields but the header has {len(header)}")
    # An unnamed column with an empty cell (a trailing comma, as spreadsheets write) carries nothing.
    record = {name: cell for name, cell in zip(header, row) if name.strip() or cell.strip()}
    return RawRecord(str(path), line, _project(record, columns) if columns else record)


def _read_parquet(path: Path, columns: ColumnMap) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"{path}: cannot read as Parquet ({e})") from None
    header = table.schema_arrow.names
    if columns:
        _check_columns(path, header, columns)
    row = 0
    batches = table.iter_batches(batch_size=8192)
    while True:
        try:  # a damaged file can open fine and fail at any page (found by fuzzing: tests/test_fuzz.py)
            batch = next(batches, None)
        except Exception as e:  # OSError, ArrowInvalid, ...: the file's bytes are wrong, not the program
            raise UserError(f"{path}: cannot read as Parquet after row {row} ({str(e).splitlines()[0]})",
                            hint="the file is damaged or truncated; write it again") from None
        if batch is None:
            return
        for record in batch.to_pylist():
            row += 1
            yield RawRecord(str(path), row, _project(record, columns) if columns else record)


def rename_columns(record: RawRecord, columns: ColumnMap) -> RawRecord:
    """For JSON records: rename the mapped keys to ``text``/``label`` (the rest stays)."""
    obj = record.obj
    if not isinstance(obj, dict):
        return record
    obj = dict(obj)
    for column, target in ((columns.text_column, "text"), (columns.label_column, "label")):
        if column and column in obj and column != target:
            obj[target] = obj.pop(column)
    return RawRecord(record.path, record.line, obj, record.error)
