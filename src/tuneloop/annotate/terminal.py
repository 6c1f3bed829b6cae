"""The terminal labelling flow (``tuneloop annotate QUEUE --out LABELS --terminal``), for people
without a browser: the same session as the page, one prompt per record.

At each record: Enter accepts the suggestion, a number picks a label (classification), any other
text is the label or answer, ``s`` skips, ``q`` quits. For answers, a line ending in a backslash
continues on the next line. Each label is on disk before the next record is shown.
"""

from __future__ import annotations

from collections.abc import Callable

from tuneloop.annotate.session import AnnotationSession
from tuneloop.errors import UserError

SUGGESTION_WAIT_S = 30.0  # how long to wait for the model's suggestion before asking anyway


def _show(item, session: AnnotationSession, write: Callable[[str], None]) -> str | None:
    write(f"\n--- {item.source} [{item.id}]")
    for message in item.messages:
        write(f"{message['role']}: {message['content']}")
    suggestion, status = session.suggestion(item.id)
    if status == "pending":
        write("(computing a suggestion...)")
        suggestion = session.suggester.wait(item.id, SUGGESTION_WAIT_S)
    if session.task == "classification":
        write("labels: " + "  ".join(f"{i}={label}" for i, label in enumerate(session.labels, 1)))
    write(f"suggested: {suggestion}" if suggestion is not None else "suggested: (none)")
    return suggestion


def _read_value(read: Callable[[str], str], task: str) -> str:
    line = read("> ")
    while task == "answer" and line.endswith("\\"):
        line = line[:-1] + "\n" + read("  ")
    return line


def run_terminal(session: AnnotationSession, annotator: str, read: Callable[[str], str] = input,
                 write: Callable[[str], None] = print) -> int:
    """Label until the queue is empty for ``annotator`` or they quit; returns how many were saved."""
    saved, skipped = 0, []
    while (item := session.next_item(annotator, skipped)) is not None:
        suggestion = _show(item, session, write)
        while True:
            try:
                line = _read_value(read, session.task)
            except EOFError:
                return saved
            choice = line.strip()
            if choice == "q":
                return saved
            if choice == "s":
                skipped.append(item.id)
                break
            value = _choose(choice, line, suggestion, session)
            if value is None:
                write("nothing to accept: type a label or answer (s = skip, q = quit)")
                continue
            try:
                session.submit(item.id, annotator, value)
            except UserError as e:
                write(f"error: {e}")
                continue
            saved += 1
            progress = session.progress(annotator)
            write(f"saved ({progress.done}/{progress.total} done)")
            break
    write("nothing left to label")
    return saved


def _choose(choice: str, line: str, suggestion: str | None, session: AnnotationSession) -> str | None:
    if not choice:
        return suggestion
    if session.task == "classification" and choice.isdigit() and 1 <= int(choice) <= len(session.labels):
        return session.labels[int(choice) - 1]
    return choice if session.task == "classification" else line
