"""``tuneloop monitor``: per-model latency p50/p95, error rate and satisfaction from the serving store."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--db", "db_url", default=None,
              help="SQLAlchemy URL of the serving store [default: sqlite under TUNELOOP_HOME].")
@click.option("--since", default="1h", show_default=True, help="Window: 90s, 30m, 1h, 2d, 1w.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def monitor(db_url, since, as_json):
    """Latency p50/p95, error rate, satisfaction (share of positive ratings) and request counts per
    model over the last --since, from what `tuneloop serve` recorded."""
    from tuneloop.monitor.report import format_table, load_window, parse_window, summarize

    window = parse_window(since)
    requests, feedback = load_window(db_url, window)
    stats = summarize(requests, feedback)
    if as_json:
        click.echo(json.dumps({"since": since, "models": [s.as_dict() for s in stats]}, indent=2))
    elif not stats:
        click.echo(f"no requests or feedback in the last {since}")
    else:
        click.echo(f"last {since}: {sum(s.requests for s in stats)} requests, "
                   f"{sum(s.ratings for s in stats)} ratings")
        click.echo(format_table(stats))
