"""``tuneloop annotate``: label records in a local browser page (or the terminal), then check agreement
and export the resolved labels.

    tuneloop annotate QUEUE.jsonl --out labels.jsonl --labels refund,card,other [--annotator ana]
    tuneloop annotate QUEUE.jsonl --out labels.jsonl --task answer --terminal
    tuneloop annotate stats labels.jsonl [--json]
    tuneloop annotate export labels.jsonl --out labelled.jsonl     # then: tuneloop data prepare labelled.jsonl

``annotate QUEUE ...`` is short for ``annotate label QUEUE ...``. Heavy imports (FastAPI, torch) happen
inside the commands so ``tuneloop --help`` stays fast.
"""

from __future__ import annotations

import json
import socket

import click

from tuneloop.errors import UserError

SUBCOMMANDS = ("label", "stats", "export")


class _LabelByDefault(click.Group):
    """A group whose first argument, when it is not a subcommand, is the queue of ``label``."""

    def parse_args(self, ctx, args):
        if args and args[0] == "--stats":
            args = ["stats", *args[1:]]
        elif args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["label", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_LabelByDefault)
def annotate():
    """Label records with suggestions from a model; agreement statistics; export for `data prepare`.

    `tuneloop annotate QUEUE --out LABELS ...` is short for `tuneloop annotate label QUEUE ...`.
    """


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror})",
                            hint="another program uses that port; pick one with --port N") from None


def _check_out(out: str, source: str, what: str) -> None:
    """--out must not be the input it is made from (it would be overwritten or appended to)."""
    from pathlib import Path

    from tuneloop.paths import check_output_dir

    if Path(out).resolve() == Path(source).resolve():
        raise UserError(f"--out {out} is the same file as {what}", hint="write to a file of its own")
    check_output_dir(Path(out).resolve().parent, "--out")


@annotate.command("label")
@click.argument("queue", type=click.Path(dir_okay=True))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Labels file (JSONL, appended after every record; resumes where it stopped).")
@click.option("--labels", help="Label set for classification, comma-separated: a,b,c.")
@click.option("--task", type=click.Choice(["classification", "answer"]),
              help="classification (pick a label) or answer (write the assistant's answer). "
                   "Default: classification with --labels, else answer.")
@click.option("--annotator", default="", help="Your name (also editable on the page).")
@click.option("--annotators-per-record", "per_record", type=click.IntRange(min=1), default=1, show_default=True,
              help="A record is done once this many different annotators labelled it.")
@click.option("--suggest-model", default="smollm2-135m-instruct", show_default=True,
              help="Model that pre-labels records in the background; 'none' to disable.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--terminal", is_flag=True, help="Label in the terminal instead of a browser page.")
def label(queue, out, labels, task, annotator, per_record, suggest_model, host, port, terminal):
    """Serve the labelling page for QUEUE (or prompt in the terminal); labels go to --out."""
    from tuneloop.annotate.queue import parse_labels
    from tuneloop.annotate.session import open_session

    label_set = parse_labels(labels)
    _check_out(out, queue, "QUEUE")
    if task == "answer" and label_set:
        raise UserError("--labels is for --task classification", hint="drop --labels for answers")
    model = None if suggest_model.strip().lower() == "none" else suggest_model
    if terminal:
        if not annotator.strip():
            annotator = click.prompt("annotator name")
        session = open_session(queue, out, label_set, task, per_record, model)
        from tuneloop.annotate.terminal import run_terminal

        saved = run_terminal(session, annotator, read=input, write=click.echo)
        click.echo(f"{saved} labels saved to {out}")
        return
    _check_port(host, port)
    session = open_session(queue, out, label_set, task, per_record, model)
    progress = session.progress()
    click.echo(f"{progress.total} records, {progress.done} done; labels saved to {out} after every record")
    click.echo(f"open http://{host}:{port}/ (Ctrl+C to stop; nothing is lost)")
    from tuneloop.annotate.server import serve

    serve(session, host, port, annotator)


@annotate.command("stats")
@click.argument("labels_file", metavar="LABELS", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def stats(labels_file, as_json):
    """Agreement (Cohen's / Fleiss' kappa, per-label disagreement) and disputed records."""
    from tuneloop.annotate.report import agreement_report, format_report
    from tuneloop.annotate.store import read_labels

    report = agreement_report(read_labels(labels_file))
    click.echo(json.dumps(report, indent=2, ensure_ascii=False) if as_json else format_report(report))


@annotate.command("export")
@click.argument("labels_file", metavar="LABELS", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="JSONL of resolved records for `data prepare`: text+label (classification) or chat "
                   "messages ending in the answer.")
def export(labels_file, out):
    """Resolve labels by majority vote and write them for `data prepare`; ties are listed, not written."""
    from tuneloop.annotate.report import export_records
    from tuneloop.annotate.store import read_labels
    from tuneloop.paths import write_jsonl_atomic

    _check_out(out, labels_file, "LABELS")
    records, ties = export_records(read_labels(labels_file))
    n = write_jsonl_atomic(out, records)
    click.echo(f"{n} resolved records written to {out}; {len(ties)} ties left out")
    for tie in ties:
        values = ", ".join(f"{name}={value!r}" for name, value in tie["values"].items())
        click.echo(f"  tie {tie['source']} [{tie['record_id']}]: {values}")
    if records:
        click.echo(f"next: tuneloop data prepare {out} --out prepared/")
