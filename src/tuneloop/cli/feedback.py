"""``tuneloop data from-feedback``: turn what users said about served answers into training data.

Registered in the ``data`` group (``tuneloop.cli.data``); the logic is in :mod:`tuneloop.data.feedback`.
"""

from __future__ import annotations

import click


@click.command("from-feedback")
@click.option("--db", "db_url", default=None,
              help="SQLAlchemy URL of the serving store [default: sqlite under TUNELOOP_HOME].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--max-pairs-per-prompt", default=4, show_default=True, type=click.IntRange(1),
              help="Cap on preference pairs made from ratings of one prompt.")
def from_feedback(db_url, out_dir, max_pairs_per_prompt):
    """Corrections -> SFT chat records (sft.jsonl); corrections and +1/-1 rated answers to the same
    prompt -> preference pairs (preference.jsonl); plus report.json. Ready for `tuneloop train`."""
    from tuneloop.data.feedback import export_feedback
    from tuneloop.database.engine import require_existing_store

    if db_url:
        require_existing_store(db_url)
    report = export_feedback(db_url, out_dir, max_pairs_per_prompt)
    pref = report["preference"]
    click.echo(f"{report['feedback']} feedback on {report['completions_with_feedback']} completions -> "
               f"{report['sft']} SFT records, {pref['total']} preference pairs "
               f"({pref['from_corrections']} from corrections, {pref['from_ratings']} from ratings)")
    if report["skipped"]:
        click.echo("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(report["skipped"].items())))
    click.echo(f"wrote {out_dir}/ (sft.jsonl, preference.jsonl, report.json)")
