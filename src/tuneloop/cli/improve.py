"""``tuneloop improve``: one round of the loop, or rounds on a schedule.

    tuneloop improve --model support --once                  # cron / a workflow engine calls this
    tuneloop improve --model support --every 1d --min-feedback 50
    tuneloop improve --model support --once --satisfaction-below 0.7 --gate "rougeL >= 0.4"

Exit codes of ``--once``: 0 when the round ran (promoted or rejected) or had nothing to do; 1 when
the input is wrong or another round of the model is in progress.
"""

from __future__ import annotations

import time

import click


@click.command()
@click.option("--model", "name", required=True, help="Registry model to improve (its production version).")
@click.option("--db", "db_url", default=None, envvar="TUNELOOP_REGISTRY_DB",
              help="SQLAlchemy URL of the serving store and registry [default: sqlite under TUNELOOP_HOME].")
@click.option("--gate", "gates", multiple=True, metavar="RULE",
              help="Extra rule on the held-out feedback, e.g. 'rougeL >= baseline + 0.1' (repeatable).")
@click.option("--margin", default=0.05, show_default=True, type=click.FloatRange(0),
              help="Largest loss on the regression set a candidate may show.")
@click.option("--once", is_flag=True, help="One round, then exit (the default without --every).")
@click.option("--every", default=None, metavar="INTERVAL", help="Check for a round every INTERVAL (30m, 6h, 1d).")
@click.option("--min-feedback", default=1, show_default=True, type=click.IntRange(1),
              help="New feedback needed to start a round.")
@click.option("--satisfaction-below", type=click.FloatRange(0, 1), default=None,
              help="Also start a round when the new feedback's satisfaction is below this (0-1).")
@click.option("--steps", default=40, show_default=True, type=click.IntRange(1), help="LoRA steps of the candidate.")
@click.option("--learning-rate", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--repeat", default=4, show_default=True, type=click.IntRange(1),
              help="Times each correction appears in the round's training data.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1), help="Examples per optimizer step.")
@click.option("--lora-r", default=8, show_default=True, type=click.IntRange(1), help="LoRA rank of the candidate.")
@click.option("--method", type=click.Choice(["sft", "dpo"]), default="sft", show_default=True,
              help="sft: corrections as chats + replay; dpo: the round's preference pairs (correction over the "
                   "answer it replaced, +1 over -1 answers, A/B choices) against production as reference.")
@click.option("--regression-data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Regression set [default: the production version's, else a held-back sample of its data].")
@click.option("--out", "out_dir", default=None, help="Where round directories go [default: TUNELOOP_HOME/improve/NAME].")
def improve(name, db_url, gates, margin, once, every, min_feedback, satisfaction_below, steps, learning_rate,
            repeat, batch_size, lora_r, method, regression_data, out_dir):
    """Feedback since the last round -> prepare -> train a candidate from production -> evaluate both
    on held-out feedback and a regression set -> register; promote when the gate passes."""
    from tuneloop.improve import ImproveSettings, describe, run_round
    from tuneloop.improve.lock import RoundInProgress
    from tuneloop.errors import UserError
    from tuneloop.monitor.report import parse_window

    settings = ImproveSettings(name=name, db_url=db_url, out_dir=out_dir, gates=list(gates), margin=margin,
                               min_feedback=min_feedback, satisfaction_below=satisfaction_below, steps=steps,
                               learning_rate=learning_rate, repeat=repeat, batch_size=batch_size, lora_r=lora_r,
                               method=method, regression_data=regression_data)
    if every is None:
        click.echo(describe(run_round(settings)))
        return
    if once:
        raise click.UsageError("--once and --every exclude each other")
    try:
        interval = parse_window(every).total_seconds()
    except UserError as e:
        raise UserError(e.message, where="--every", hint=e.hint) from None
    while True:
        try:
            click.echo(describe(run_round(settings)), err=False)
        except RoundInProgress as e:
            click.echo(f"skipped: {e.message}", err=True)
        time.sleep(interval)
