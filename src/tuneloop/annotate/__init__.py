"""Labelling data offline: a queue of records, a local page (or terminal) where people accept or edit a
suggested label or answer, agreement statistics, and export of resolved labels for ``data prepare``.

Python API::

    from tuneloop.annotate import open_session, create_app, run_terminal
    from tuneloop.annotate import read_labels, agreement_report, export_records
    from tuneloop.annotate import cohen_kappa, fleiss_kappa

Modules: ``queue`` (records to label), ``store`` (labels on disk, append-only + fsync), ``suggest``
(model pre-labelling in the background), ``session`` (who labels what next), ``server`` + ``page.html``
(the browser page), ``terminal`` (the prompt loop), ``agreement`` (kappas), ``report`` (stats, export).
"""

from tuneloop.annotate.agreement import cohen_kappa, fleiss_kappa, majority, per_label_disagreement
from tuneloop.annotate.report import agreement_report, export_records, format_report, resolve
from tuneloop.annotate.server import create_app, serve
from tuneloop.annotate.session import AnnotationSession, open_session
from tuneloop.annotate.store import LabelStore, read_labels
from tuneloop.annotate.terminal import run_terminal

__all__ = [
    "AnnotationSession", "LabelStore", "agreement_report", "cohen_kappa", "create_app", "export_records",
    "fleiss_kappa", "format_report", "majority", "open_session", "per_label_disagreement", "read_labels",
    "resolve", "run_terminal", "serve",
]
