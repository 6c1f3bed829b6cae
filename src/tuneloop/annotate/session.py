"""One labelling session: the queue, the labels on disk and the suggestions, for the page and terminal.

A record is *done* when ``per_record`` different annotators have labelled it. Each annotator is
offered, in queue order, the first record that is not done and that they have not labelled yet, so
several people can work on the same queue at once and a restarted session resumes where it stopped.

Python API::

    from tuneloop.annotate import open_session
    session = open_session("queue.jsonl", "labels.jsonl", labels=["refund", "card"])
    item = session.next_item("ana")
    session.submit(item.id, "ana", "refund")
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneloop.annotate.queue import Item, load_queue
from tuneloop.annotate.store import LabelEvent, LabelStore
from tuneloop.annotate.suggest import Suggester
from tuneloop.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Progress:
    done: int  # records with enough annotators
    total: int
    mine: int  # records this annotator has labelled

    def as_dict(self) -> dict:
        return {"done": self.done, "total": self.total, "mine": self.mine}


class AnnotationSession:
    def __init__(self, items: Sequence[Item], store: LabelStore, task: str, labels: Sequence[str] = (),
                 per_record: int = 1, suggester: Suggester | None = None):
        if per_record < 1:
            raise UserError("--annotators-per-record must be at least 1")
        if task == "classification" and not labels:
            raise UserError("classification needs a label set", hint="give --labels a,b,c")
        self.items, self.store, self.task = list(items), store, task
        self.labels, self.per_record, self.suggester = list(labels), per_record, suggester
        self._by_id = {item.id: item for item in self.items}
        self._lock = threading.Lock()
        if suggester is not None:
            suggester.skip({item.id for item in self.items if self.is_done(item.id)})

    def is_done(self, record_id: str) -> bool:
        return len(self.store.annotators_of(record_id)) >= self.per_record

    def next_item(self, annotator: str, skip: Sequence[str] = ()) -> Item | None:
        """The first record this annotator should label next, or None when nothing is left."""
        annotator = _check_annotator(annotator)
        for item in self.items:
            if item.id in skip or self.is_done(item.id) or annotator in self.store.annotators_of(item.id):
                continue
            if self.suggester is not None:
                self.suggester.prioritise(item.id)
            return item
        return None

    def suggestion(self, record_id: str) -> tuple[str | None, str]:
        """The suggested value and its status: ``given`` (from the queue), ``ready``, ``pending``,
        ``failed`` or ``off`` (no suggestion model)."""
        item = self._by_id[record_id]
        if item.given_suggestion is not None:
            return item.given_suggestion, "given"
        if self.suggester is None:
            return None, "off"
        return self.suggester.get(record_id), self.suggester.status(record_id)

    def submit(self, record_id: str, annotator: str, value: str) -> LabelEvent:
        """Save one label (fsynced before returning)."""
        annotator = _check_annotator(annotator)
        item = self._by_id.get(record_id)
        if item is None:
            raise UserError(f"no record {record_id!r} in the queue")
        value = self.check_value(value)
        with self._lock:
            suggestion, _ = self.suggestion(record_id)
            event = LabelEvent(record_id, annotator, self.task, value, suggestion, value == suggestion,
                               item.messages, item.source)
            self.store.append(event)
            if self.suggester is not None and self.is_done(record_id):
                self.suggester.skip({record_id})
        return event

    def check_value(self, value) -> str:
        if not isinstance(value, str) or not value.strip():
            raise UserError("the label is empty", hint="pick a label or type the answer")
        value = value.strip() if self.task == "classification" else value.strip("\n")
        if self.task == "classification" and value not in self.labels:
            guess = did_you_mean(value, self.labels)
            raise UserError(f"'{value}' is not one of the labels ({', '.join(self.labels)})"
                            + (f"; did you mean '{guess}'?" if guess else ""))
        return value

    def progress(self, annotator: str | None = None) -> Progress:
        done = sum(self.is_done(item.id) for item in self.items)
        mine = sum(1 for item in self.items if annotator in self.store.annotators_of(item.id))
        return Progress(done, len(self.items), mine)


def _check_annotator(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UserError("no annotator name", hint="type your name in the annotator field (or --annotator NAME)")
    return name.strip()


def open_session(queue: str | Path, out: str | Path, labels: Sequence[str] = (), task: str | None = None,
                 per_record: int = 1, suggest_model: str | None = None) -> AnnotationSession:
    """Load the queue and existing labels; start background suggestions unless ``suggest_model`` is None."""
    task = task or ("classification" if labels else "answer")
    items = load_queue(queue, task)
    if task == "classification" and not labels:
        labels = sorted({item.given_suggestion for item in items if item.given_suggestion})
    if task == "classification":
        for item in items:
            if item.given_suggestion is not None and item.given_suggestion not in labels:
                raise UserError(f"label '{item.given_suggestion}' is not in --labels", where=f"{item.source}: label",
                                hint=f"add it to --labels or fix the record (labels: {', '.join(labels)})")
    store = LabelStore(out)
    suggester = None
    if suggest_model is not None:
        suggester = Suggester(suggest_model, items, task, labels)
    session = AnnotationSession(items, store, task, labels, per_record, suggester)
    if suggester is not None:
        suggester.start()
    return session
