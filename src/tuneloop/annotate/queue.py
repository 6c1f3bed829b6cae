"""The annotation queue: unlabelled records to label, read from a JSONL/JSON/CSV file.

Two tasks:

* ``classification``: each record gives a text (``text``, or the last user message of ``messages``,
  or ``prompt``) and the annotator picks one of a fixed label set. A ``label`` already in the
  record is shown as the suggestion to accept or change.
* ``answer``: each record gives a prompt (``messages`` ending with a user turn, ``prompt`` or
  ``text``) and the annotator writes the assistant's answer. A trailing assistant message (or
  ``completion``/``output``) is shown as the suggested answer.

Every queue item keeps an ``id`` (the record's own, or a hash of its content, stable across runs),
so labels saved on disk find their record again after a restart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.data.ingest import expand_inputs, read_records
from tuneloop.errors import UserError

TASKS = ("classification", "answer")


@dataclass
class Item:
    """One record to label: the prompt ``messages`` (for classification: one user message)."""

    id: str
    source: str
    messages: list[dict]
    given_suggestion: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def content_id(messages: list[dict]) -> str:
    """A stable id from the prompt's content (what identifies the record when it has no id)."""
    blob = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def parse_labels(option: str | None) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; duplicates and empty names are errors."""
    if option is None:
        return []
    labels = [label.strip() for label in option.split(",")]
    if any(not label for label in labels):
        raise UserError(f"--labels {option!r}: empty label name", hint="write --labels a,b,c")
    if len(set(labels)) != len(labels):
        raise UserError(f"--labels {option!r}: a label is listed twice")
    return labels


def _prompt_messages(obj: dict, where: str) -> tuple[list[dict], str | None]:
    """The prompt of a record and its existing answer (None when it has none)."""
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise UserError("must be a non-empty array of {role, content}", where=f"{where}: messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
                raise UserError("needs a role and a string content", where=f"{where}: messages[{i}]")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        answer = None
        if messages[-1]["role"] == "assistant":
            answer, messages = messages[-1]["content"], messages[:-1]
        if not messages or messages[-1]["role"] != "user":
            raise UserError("the prompt must end with a user message",
                            where=f"{where}: messages", hint="the answer to write comes after it")
        return messages, answer
    for key, answer_key in (("prompt", "completion"), ("instruction", "output"), ("text", None)):
        if key in obj:
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise UserError("must be a non-empty string", where=f"{where}: {key}")
            answer = obj.get(answer_key) if answer_key else None
            return [{"role": "user", "content": obj[key]}], answer if isinstance(answer, str) else None
    raise UserError("no text to label: give text, prompt or messages", where=where)


def item_from_record(obj, where: str, task: str) -> Item:
    if not isinstance(obj, dict):
        raise UserError("expected a JSON object", where=where)
    messages, answer = _prompt_messages(obj, where)
    if task == "classification":
        messages = [messages[-1]]
        given = obj.get("label")
        given = str(given) if given is not None and str(given).strip() else None
    else:
        given = answer
    record_id = str(obj["id"]) if obj.get("id") not in (None, "") else content_id(messages)
    extra = {k: obj[k] for k in ("metadata",) if k in obj}
    return Item(record_id, str(obj.get("source") or where), messages, given, extra)


def load_queue(path: str | Path, task: str) -> list[Item]:
    """Every record of the queue file as an :class:`Item`; bad records are errors naming the line."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}", hint=f"use one of {', '.join(TASKS)}")
    items: list[Item] = []
    seen: dict[str, str] = {}
    for file in expand_inputs([path]):
        for raw in read_records(file):
            if raw.error:
                raise UserError(raw.error, where=raw.source)
            item = item_from_record(raw.obj, raw.source, task)
            if item.id in seen:
                raise UserError(f"id {item.id!r} already used at {seen[item.id]}", where=f"{raw.source}: id",
                                hint="give each record a unique id (or remove the duplicate record)")
            seen[item.id] = raw.source
            items.append(item)
    if not items:
        raise UserError(f"{path}: the queue has no records")
    return items
