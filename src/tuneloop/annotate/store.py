"""Where labels are kept: an append-only JSONL file, one line per label, flushed and fsynced.

Why append-only JSONL and not a rewrite per label: appending one line and calling ``fsync`` is a
single small write, so a label is on disk before the page is told "saved", and closing the page or
killing the process loses at most the label being typed. A crash in the middle of a write can only
leave the *last* line incomplete; :class:`LabelStore` drops such a tail when it opens the file (and
cuts it off before appending), so the file stays valid JSONL. Any other unreadable line is the
user's to fix and is reported with its line number.

A line (a :class:`LabelEvent` as JSON)::

    {"record_id": "r1", "annotator": "ana", "task": "classification", "value": "refund",
     "suggestion": "refund", "accepted": true, "messages": [...], "source": "queue.jsonl:1",
     "time": "2026-11-28T14:00:00+00:00"}

The record's prompt travels with each label so that ``stats`` and ``export`` need only this file.
When an annotator labels a record again, their latest label counts.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import MISSING, asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.paths import make_dir


@dataclass
class LabelEvent:
    record_id: str
    annotator: str
    task: str
    value: str
    suggestion: str | None
    accepted: bool
    messages: list[dict]
    source: str
    time: str = ""

    @classmethod
    def from_json(cls, obj: dict, where: str) -> LabelEvent:
        missing = [k for k, f in cls.__dataclass_fields__.items()
                   if k not in obj and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise UserError(f"not a label line: no {', '.join(missing)}", where=where,
                            hint="a labels file is written by `tuneloop annotate` (is this the queue?)")
        try:
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})
        except TypeError as e:
            raise UserError(f"not a label line ({e})", where=where,
                            hint="a labels file is written by `tuneloop annotate`") from None


class LabelStore:
    """Labels on disk plus the latest label per (record, annotator) in memory. Thread-safe."""

    def __init__(self, path: str | Path, repair: bool = True):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.events: list[LabelEvent] = _read_events(self.path, repair)
        self.latest: dict[tuple[str, str], LabelEvent] = {}
        for event in self.events:
            self.latest[(event.record_id, event.annotator)] = event

    def append(self, event: LabelEvent) -> None:
        if not event.time:
            event.time = datetime.now(timezone.utc).isoformat(timespec="seconds")
        line = json.dumps(asdict(event), ensure_ascii=False) + "\n"
        with self._lock:
            new_file = not self.path.exists()
            make_dir(self.path.parent, "--out")
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            if new_file:
                _fsync_dir(self.path.parent)  # the new file's name must survive a crash too
            self.events.append(event)
            self.latest[(event.record_id, event.annotator)] = event

    def annotators_of(self, record_id: str) -> set[str]:
        return {annotator for (rid, annotator) in self.latest if rid == record_id}

    def latest_by_record(self) -> dict[str, list[LabelEvent]]:
        """``{record_id: [each annotator's latest label]}``, records in first-labelled order."""
        grouped: dict[str, list[LabelEvent]] = {}
        for event in self.latest.values():
            grouped.setdefault(event.record_id, []).append(event)
        return grouped


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_events(path: Path, repair: bool = True) -> list[LabelEvent]:
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    events = _parse_events(path, complete)
    torn = data[len(complete):]
    if repair and torn and not (events or torn.startswith(b'{"record_id": ')):
        raise UserError("does not look like a labels file (its only line is not a label)", where=str(path),
                        hint="--out names the labels file to write; choose a new file name")
    if repair and torn:
        # A write cut short by a crash: drop the partial last line so appends start on a new line.
        # Only once every complete line has parsed as a label: never cut a file that is not ours.
        with open(path, "r+b") as f:
            f.truncate(len(complete))
            os.fsync(f.fileno())
    return events


def _parse_events(path: Path, complete: bytes) -> list[LabelEvent]:
    events = []
    for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON ({e.msg})", where=where, hint="fix or delete that line") from None
        if not isinstance(obj, dict):
            raise UserError("expected a JSON object", where=where)
        events.append(LabelEvent.from_json(obj, where))
    return events


def read_labels(path: str | Path) -> LabelStore:
    """Open an existing labels file for statistics or export."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such labels file", hint="`tuneloop annotate QUEUE --out LABELS` writes it")
    return LabelStore(path, repair=False)  # stats/export only read: they never change the file
