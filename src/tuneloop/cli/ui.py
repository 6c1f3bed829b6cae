"""``tuneloop ui``: the local web dashboard over runs, evaluations, serving, registry, playground, annotation.

    tuneloop ui [--port 8600] [--runs runs] [--evals .] [--db URL] [--serve-url http://127.0.0.1:8000]
    tuneloop ui --annotate queue.jsonl --annotate-out labels.jsonl --labels refund,card,other

It listens on 127.0.0.1 by default, where this machine's own browser needs no token. With
``--host 0.0.0.0`` (or any other address) clients from elsewhere need the token printed at start
(``--token`` / ``TUNELOOP_UI_TOKEN`` to choose it; a stored ``tuneloop keys`` key with the admin scope
works too). Heavy imports (FastAPI, uvicorn) happen inside the command.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from tuneloop.errors import UserError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs the token from other machines.")
@click.option("--port", default=8600, show_default=True, type=click.IntRange(0, 65535))
@click.option("--runs", "runs_dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder of run directories (runs/<name>/).")
@click.option("--evals", "eval_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Folders searched for eval.json reports (repeatable) [default: the current folder].")
@click.option("--db", "db_url", default=None,
              help="SQLAlchemy URL of the serving store and registry [default: sqlite under TUNELOOP_HOME].")
@click.option("--serve-url", default="http://127.0.0.1:8000", show_default=True,
              help="The `tuneloop serve` server the playground talks to.")
@click.option("--serve-key", envvar="TUNELOOP_API_KEY", default=None,
              help="API key for --serve-url (also from TUNELOOP_API_KEY).")
@click.option("--token", envvar="TUNELOOP_UI_TOKEN", default=None,
              help="Token other machines must send (also from TUNELOOP_UI_TOKEN) [default: a new random one].")
@click.option("--annotate", "annotate_queue", type=click.Path(dir_okay=True), default=None,
              help="An annotation queue to label on the Annotation page (with --annotate-out).")
@click.option("--annotate-out", type=click.Path(dir_okay=False), default=None, help="Labels file for --annotate.")
@click.option("--labels", default=None, help="Label set for --annotate (classification), comma-separated.")
@click.option("--annotate-url", default=None, help="Show a running `tuneloop annotate` page instead.")
def ui(host, port, runs_dir, eval_dirs, db_url, serve_url, serve_key, token, annotate_queue, annotate_out,
       labels, annotate_url):
    """Local web dashboard: runs (live curves, start one from a recipe), evaluations, tuning studies, serving,
    registry, playground, annotation."""
    if annotate_queue and not annotate_out:  # before the imports: a wrong option fails in a moment
        raise UserError("--annotate needs --annotate-out LABELS.jsonl (where the labels are saved)",
                        where="--annotate-out")
    from tuneloop.dashboard.app import DashboardSettings, create_app
    from tuneloop.serve.runner import bind_socket, run_foreground

    token = token or secrets.token_urlsafe(24)
    mounts = {}
    if annotate_queue:
        mounts["/annotate/app"] = _annotate_app(annotate_queue, annotate_out, labels)
    settings = DashboardSettings(token=token, runs_dir=Path(runs_dir), eval_dirs=[Path(d) for d in eval_dirs or ["."]],
                                 db_url=db_url, serve_url=serve_url, serve_key=serve_key, annotate_url=annotate_url)
    sock = bind_socket(host, port)
    app = create_app(settings, mounts)
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{sock.getsockname()[1]}/"
    click.echo(f"dashboard at {address} (runs: {runs_dir}; store: {app.app.state.store_url})", err=True)
    click.echo(f"from another machine: {address}?token={token}", err=True)
    run_foreground(app, sock, log_level="warning")


def _annotate_app(queue: str, out: str, labels: str | None):
    from tuneloop.annotate.queue import parse_labels
    from tuneloop.annotate.server import create_app
    from tuneloop.annotate.session import open_session

    return create_app(open_session(queue, out, parse_labels(labels), None, 1, None))
