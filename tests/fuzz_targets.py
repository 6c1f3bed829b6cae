"""Fuzz targets: every parser a user's file reaches, each with a Hypothesis strategy for its input.

A target passes when it returns or raises :class:`~tuneloop.errors.UserError` (bad input, said
clearly); any other exception is a crash. Used by ``tests/test_fuzz.py`` (a CI-sized run) and
``benchmarks/fuzz.py`` (a long run with a time budget per target).

Inputs are built to reach deep code, not only the first ``json.loads``: records with the keys the
validator knows (messages, roles, prompt/chosen/rejected...), values of every JSON type, files in each
format with BOMs, CRLF, NUL bytes and truncation; recipes mutated from a valid one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from hypothesis import strategies as st

from tuneloop.chat.template import TemplateError, encode_chat, render_prompt_ids
from tuneloop.config.recipe import load_recipe, parse_override
from tuneloop.data import clean, pii
from tuneloop.data.ingest import ColumnMap, read_records
from tuneloop.data.records import content_text, map_texts, texts, to_canonical
from tuneloop.data.validate import TASKS, validate_record
from tuneloop.errors import UserError

RECORD_KEYS = ["messages", "role", "content", "instruction", "input", "output", "prompt", "completion",
               "text", "label", "chosen", "rejected", "system", "id", "source", "tools", "name", "weight",
               "tool_calls", "metadata"]
ROLES = ["system", "user", "assistant", "tool", "wizard", "", "USER"]

texts_st = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\n", "\x00", "\ufeff", "hi", "é", "\u202e"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), texts_st)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(RECORD_KEYS), st.text(max_size=8)),
                                                 inner, max_size=5)), max_leaves=12)
messages_st = st.lists(st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(ROLES), json_values), "content": st.one_of(texts_st, json_values)},
    optional={"name": texts_st, "weight": st.one_of(st.sampled_from([0, 1]), json_values)}), max_size=5)
records = st.one_of(
    json_values,
    st.fixed_dictionaries({"messages": messages_st}, optional={"label": json_values, "tools": json_values}),
    st.fixed_dictionaries({"instruction": texts_st, "output": texts_st},
                          optional={"input": st.one_of(texts_st, json_values), "system": json_values}),
    st.fixed_dictionaries({"prompt": st.one_of(texts_st, messages_st), "completion": texts_st}),
    st.fixed_dictionaries({"prompt": st.one_of(texts_st, json_values), "chosen": st.one_of(texts_st, messages_st),
                           "rejected": st.one_of(texts_st, messages_st)},
                          optional={"messages": messages_st, "system": json_values}),
    st.fixed_dictionaries({"text": st.one_of(texts_st, json_values)}, optional={"label": json_values}),
)


def _json_dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


@st.composite
def jsonl_files(draw) -> bytes:
    lines = draw(st.lists(st.one_of(records.map(_json_dump), st.text(max_size=30)), max_size=6))
    text = draw(st.sampled_from(["\n", "\r\n", "\n\n"])).join(lines)
    data = (draw(st.sampled_from(["", "\ufeff"])) + text).encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data + draw(st.binary(max_size=8))


@st.composite
def json_files(draw) -> bytes:
    value = draw(st.one_of(st.lists(records, max_size=5), records))
    text = json.dumps(value, indent=draw(st.sampled_from([None, 1, 2])), allow_nan=True,
                      separators=draw(st.sampled_from([None, (",", ":"), (" ,  ", ": ")])))
    if draw(st.booleans()):  # JSONL content in a .json file, or a broken array
        text = draw(st.sampled_from(["\n", ""])).join([text, draw(records.map(_json_dump))])
    data = text.encode("utf-8", "surrogatepass")
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def csv_files(draw) -> bytes:
    header = draw(st.lists(st.sampled_from(["text", "label", "prompt", "completion", "x", ""]), min_size=0, max_size=4))
    rows = draw(st.lists(st.lists(texts_st, max_size=5), max_size=5))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    data = (draw(st.sampled_from(["", "\ufeff"])) + out.getvalue()).encode("utf-8", "surrogatepass")
    return data + draw(st.binary(max_size=6)) if draw(st.booleans()) else data


def _column_maps():
    return st.builds(ColumnMap, st.sampled_from([None, "text", "x", "missing"]), st.sampled_from([None, "label", "x"]))


VALID_RECIPE = {"name": "fuzz", "model": "smollm2-135m-instruct", "method": "lora",
                "data": {"train": "train.jsonl", "validation": None},
                "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
                "train": {"epochs": 1, "batch_size": 4, "learning_rate": 2e-4, "max_seq_len": 256},
                "tracking": {"backend": "none"}}


@st.composite
def recipe_texts(draw) -> str:
    """A valid recipe with a few keys deleted, renamed or given values of other types, as YAML."""
    recipe = json.loads(json.dumps(VALID_RECIPE))
    for _ in range(draw(st.integers(0, 4))):
        # An earlier mutation may have deleted, renamed or retyped a section: mutate only those still there.
        sections = [recipe] + [v for k, v in recipe.items() if k in VALID_RECIPE and isinstance(v, dict)]
        section = draw(st.sampled_from(sections))
        if not section:
            continue
        key = draw(st.sampled_from(sorted(section)))
        action = draw(st.sampled_from(["delete", "retype", "rename"]))
        if action == "delete":
            del section[key]
        elif action == "retype":
            section[key] = draw(json_values)
        else:
            section[key + draw(st.sampled_from(["s", "_", "x"]))] = section.pop(key)
    text = yaml.safe_dump(recipe, allow_unicode=True)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", ":", "- ", "[", "{", "\t", "&a *a", "!!python/object:os.system"]))
    return text


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    strategy: st.SearchStrategy
    run: Callable  # run(value, workdir: Path, tokenizer) -> None; raises on a crash


def _records_through_the_pipeline(raw_records, tokenizer=None) -> None:
    """What `data prepare` does with each record it read: validate, convert, clean, redact, key."""
    for raw in raw_records:
        if raw.error is not None:
            continue
        for task in TASKS:
            shape, issues = validate_record(raw.obj, task)
            if issues:
                assert all(i.field and i.message for i in issues)
                continue
            record = to_canonical(raw.obj, shape)
            json.dumps(record, allow_nan=True)
            map_texts(record, lambda s: pii.redact(clean.clean_text(s)))
            assert all(isinstance(t, str) for t in texts(record))
            content_text(record, "classification" if task == "classification" else "sft")
            if tokenizer is not None and task == "sft" and "messages" in record:
                try:
                    encode_chat(tokenizer, record["messages"])
                    render_prompt_ids(tokenizer, record["messages"][:-1] or record["messages"])
                except TemplateError:
                    pass


def _ingest(suffix: str, with_columns: bool = False):
    def run(value, workdir: Path, tokenizer=None) -> None:
        data, columns = value if with_columns else (value, ColumnMap())
        path = workdir / f"input{suffix}"
        path.write_bytes(data)
        _records_through_the_pipeline(list(read_records(path, columns)), tokenizer)
    return run


def _parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


# A Parquet column has one type: a file's labels are all text or all int64 (or missing), as a writer
# (pandas, pyarrow, datasets) would store them.
int64s = st.integers(-2**63, 2**63 - 1)
parquet_rows = st.sampled_from([texts_st, int64s]).flatmap(lambda labels: st.lists(
    st.fixed_dictionaries({"text": st.one_of(st.none(), texts_st)}, optional={"label": st.one_of(st.none(), labels)}),
    min_size=1, max_size=4))


@st.composite
def parquet_files(draw) -> tuple[bytes, ColumnMap]:
    data = _parquet_bytes(draw(parquet_rows))
    if draw(st.booleans()):  # a damaged file: truncated or with bytes flipped
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=8)) + data[cut + 8:]
    return data, draw(_column_maps())


def _recipe(text: str, workdir: Path, tokenizer=None) -> None:
    path = workdir / "recipe.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    load_recipe(path)


def _override(text: str, workdir: Path, tokenizer=None) -> None:
    keys, _ = parse_override(text)
    assert keys and all(keys)


def _chat_template(messages, workdir: Path, tokenizer=None) -> None:
    shape, issues = validate_record({"messages": messages}, "sft")
    if issues:
        return
    record = to_canonical({"messages": messages}, shape)
    try:
        encoded = encode_chat(tokenizer, record["messages"])
    except TemplateError:
        return
    assert len(encoded.input_ids) == len(encoded.labels)


def _texts(text: str, workdir: Path, tokenizer=None) -> None:
    cleaned = clean.clean_text(text)
    redacted = pii.redact(cleaned)
    clean.normalise_for_dedup(redacted)
    for span in pii.find_pii(cleaned):
        assert 0 <= span.start < span.end <= len(cleaned)


TARGETS = [
    Target("ingest_jsonl", ".jsonl read -> validate -> convert -> clean/PII", jsonl_files(), _ingest(".jsonl")),
    Target("ingest_json", ".json (array, object or JSONL) read -> pipeline", json_files(), _ingest(".json")),
    Target("ingest_csv", ".csv with column maps -> pipeline",
           st.tuples(csv_files(), _column_maps()), _ingest(".csv", with_columns=True)),
    Target("ingest_parquet", ".parquet (valid and damaged) -> pipeline", parquet_files(),
           _ingest(".parquet", with_columns=True)),
    Target("ingest_text", ".txt/.md documents (any bytes) -> pipeline", st.binary(max_size=200), _ingest(".txt")),
    Target("validate_convert", "records of every shape -> validate/convert for each task",
           records.map(lambda r: r), lambda value, workdir, tokenizer=None: _records_through_the_pipeline(
               [_Raw(value)], None)),
    Target("chat_template", "messages -> chat-template rendering and loss masking", messages_st, _chat_template),
    Target("recipe_yaml", "recipe YAML (mutated from a valid one) -> load_recipe", recipe_texts(), _recipe),
    Target("recipe_override", "--set key=value overrides -> parse_override", st.text(max_size=40), _override),
    Target("clean_pii", "free text -> clean_text, PII redaction, dedup key", st.text(max_size=200), _texts),
]


@dataclass
class _Raw:
    obj: object
    error: str | None = None
    source: str = "fuzz:1"


def is_crash(error: BaseException) -> bool:
    """A crash is any exception but a UserError (bad input reported with where and how to fix it)."""
    return not isinstance(error, UserError)


def check(target: Target, value, workdir: Path, tokenizer=None) -> None:
    """Run one input; re-raise a crash (Hypothesis then shrinks it), swallow a clean UserError."""
    try:
        target.run(value, workdir, tokenizer)
    except UserError as e:
        assert str(e).strip()


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tuneloop-fuzz-", dir=os.environ.get("TMPDIR")))
