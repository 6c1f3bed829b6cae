"""Read an evaluation file into examples: the prompt to send, the reference answer, label and facts.

Accepted records (one JSON object per line in ``.jsonl``; ``.json``/``.csv``/``.parquet`` go through
:mod:`tuneloop.data.ingest` when it is installed):

* canonical chat records from ``data prepare``: ``{"id", "source", "messages": [...], "label"?}``; the
  prompt is every message before the last assistant turn, the reference is that turn's content;
* ``{"prompt", "completion"}``;
* ``{"text", "label"}`` (classification: the text is the user turn, the label the reference).

Optional ``facts`` (a list of strings the answer must contain) adds ``fact_accuracy``. Errors name
``file:line`` and the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.data.ingest import read_records
from tuneloop.errors import UserError

SHAPE_HINT = ('each line needs {"messages": [..., {"role": "assistant", ...}]}, {"prompt", "completion"} '
              'or {"text", "label"}')


@dataclass
class Example:
    id: str
    source: str
    prompt: list[dict]  # chat messages before the answer
    reference: str
    label: str | None = None
    facts: list[str] | None = None
    record: dict = field(default_factory=dict)  # the raw record, for --slice-by

    @property
    def prompt_text(self) -> str:
        """The last user turn: what a reader of the report needs to judge the answer."""
        users = [m["content"] for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else (self.prompt[-1]["content"] if self.prompt else "")

    @property
    def conversation(self) -> list[dict]:
        return self.prompt + [{"role": "assistant", "content": self.reference}]


def _bad(where: str, message: str, hint: str = SHAPE_HINT) -> UserError:
    return UserError(message, where=where, hint=hint)


def _text(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{where}: {key}", f"must be a non-empty string, got {type(value).__name__}", hint="fix or remove the record")
    return value


def _messages(obj: dict, where: str) -> tuple[list[dict], str]:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise _bad(f"{where}: messages", "must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _bad(f"{where}: messages[{i}]", "each message needs a string role and content")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        raise _bad(f"{where}: messages", "no reference answer: the conversation needs a user turn followed by an "
                   "assistant turn", hint="end each conversation with the expected assistant answer")
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    return prompt, messages[last]["content"]


def example_from_record(obj, where: str) -> Example:
    """One example from a parsed record; ``where`` is ``file:line``."""
    if not isinstance(obj, dict):
        raise _bad(where, f"expected a JSON object, got {type(obj).__name__}")
    label = obj.get("label")
    if label is not None and not isinstance(label, (str, int)):
        raise _bad(f"{where}: label", "must be a string or an integer", hint="use one label per record")
    label = str(label).strip() if label is not None else None
    if "messages" in obj:
        prompt, reference = _messages(obj, where)
    elif "prompt" in obj and "completion" in obj:
        prompt, reference = [{"role": "user", "content": _text(obj, "prompt", where)}], _text(obj, "completion", where)
    elif "text" in obj and label is not None:
        prompt, reference = [{"role": "user", "content": _text(obj, "text", where)}], label
    elif {"chosen", "rejected"} & obj.keys():
        raise _bad(where, "preference records (chosen/rejected) cannot be evaluated here")
    else:
        raise _bad(where, f"unrecognised record with keys {sorted(obj)}")
    facts = obj.get("facts")
    if facts is not None and (not isinstance(facts, list) or not all(isinstance(f, str) for f in facts)):
        raise _bad(f"{where}: facts", "must be a list of strings", hint='e.g. "facts": ["open 9am-5pm"]')
    record_id = obj.get("id") or hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]
    return Example(str(record_id), str(obj.get("source") or where), prompt, reference, label, facts, obj)


def _read_jsonl(path: Path):
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(f"{path}:{line_no}", "not UTF-8 text", hint="save the file as UTF-8 JSONL") from None
            if not line.strip():
                continue
            try:
                yield f"{path}:{line_no}", json.loads(line)
            except json.JSONDecodeError as e:
                raise _bad(f"{path}:{line_no}", f"not valid JSON ({e.msg} at column {e.colno})",
                           hint="each line must be one JSON object") from None


def _read_other(path: Path):
    for raw in read_records(path):
        if raw.error:
            raise _bad(raw.source, raw.error)
        yield raw.source, raw.obj


def load_examples(path: str | Path, max_samples: int | None = None, seed: int = 0) -> list[Example]:
    """All examples of a file, or a fixed random sample of ``max_samples`` of them (kept in file order).

    A sample, not the first N: prepared files are often in source order, and Banking77's source is
    sorted by label, so its first 200 records cover two labels.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file", hint="pass --data a .jsonl file, e.g. prepared/test.jsonl")
    reader = _read_jsonl(path) if path.suffix in (".jsonl", ".ndjson") else _read_other(path)
    examples = []
    for where, obj in reader:
        examples.append(example_from_record(obj, where))
    if not examples:
        raise UserError(f"{path}: no records", hint="the file is empty")
    if max_samples is not None and max_samples < len(examples):
        import random

        keep = sorted(random.Random(seed).sample(range(len(examples)), max_samples))
        examples = [examples[i] for i in keep]
    return examples


def detect_task(examples: list[Example], requested: str = "auto") -> str:
    """``classification`` when records carry a label, else ``generation``; mixed files are an error."""
    labelled = [e for e in examples if e.label is not None]
    if requested == "classification":
        if len(labelled) != len(examples):
            first = next(e for e in examples if e.label is None)
            raise _bad(f"{first.source}: label", "missing; --task classification needs a label on every record",
                       hint="add labels or use --task generation")
        return "classification"
    if requested == "generation" or not labelled:
        return "generation"
    if len(labelled) != len(examples):
        first = next(e for e in examples if e.label is None)
        raise _bad(f"{first.source}: label", f"missing, while {len(labelled)} other records have one",
                   hint="label every record, or pass --task generation to ignore labels")
    return "classification"
