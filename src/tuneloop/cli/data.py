"""``tuneloop data``: validate and prepare training data (SPEC "Data").

    tuneloop data validate train.jsonl more/            # exit 1 and FILE:LINE: FIELD: message lines
    tuneloop data prepare train.csv --out prepared/ --task classification \\
        --text-column text --label-column category

The group is meant to grow: other commands (augment, from-feedback) register themselves with
``@data.command()`` in their own modules and are added at the bottom of this file. Heavy imports
happen inside the commands so that ``tuneloop --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from tuneloop.data.validate import TASKS

_column_options = [
    click.option("--text-column", metavar="C", help="Column (CSV/Parquet) or key (JSON) holding the text."),
    click.option("--label-column", metavar="C", help="Column or key holding the class label."),
]


def _with_columns(f):
    for option in reversed(_column_options):
        f = option(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def data():
    """Validate and prepare training data."""


@data.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--task", type=click.Choice(TASKS), default="auto", show_default=True,
              help="What the records are for: sft needs the assistant to speak last, preference needs "
                   "chosen/rejected, classification text+label; auto accepts every shape.")
@_with_columns
def validate(files, task, text_column, label_column):
    """Check data files for format problems, one FILE:LINE: FIELD: message line each.

    FILES may be files or directories.

    Exits 0 when every record is valid, 1 otherwise.
    """
    from tuneloop.data.ingest import ColumnMap, expand_inputs, read_records
    from tuneloop.data.prepare import resolve_task
    from tuneloop.data.validate import validate_record

    columns = ColumnMap(text_column, label_column)
    raw = [r for path in expand_inputs(files) for r in read_records(path, columns)]
    task = resolve_task(raw, task)
    bad = 0
    for record in raw:
        problems = ([("record", record.error)] if record.error is not None
                    else [(p.field, p.message) for p in validate_record(record.obj, task)[1]])
        for field, message in problems:
            click.echo(f"{record.source}: {field}: {message}")
        bad += bool(problems)
    click.echo(f"{len(raw)} records, {bad} invalid (task: {task})", err=True)
    if not raw:
        click.echo(f"error: no records found in {', '.join(files)} (empty files?)", err=True)
    if bad or not raw:
        # sys.exit, not ctx.exit: with standalone_mode=False click would turn ctx.exit(1) into a return value.
        sys.exit(1)


@data.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--task", type=click.Choice(TASKS), default="auto", show_default=True,
              help="sft, preference or classification; auto decides from the records.")
@click.option("--split", "split_text", default="0.7,0.15,0.15", show_default=True,
              help="train,validation,test fractions.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split.")
@_with_columns
@click.option("--no-pii", is_flag=True, help="Do not redact e-mails, phones, cards, IBANs, ids, IPs, keys, names.")
@click.option("--near-dup-threshold", default=0.8, show_default=True,
              help="Character 5-gram Jaccard at which records are near-duplicates; 0 turns it off.")
@click.option("--keep-near-duplicates", is_flag=True,
              help="Keep near-duplicates (in the same split as their cluster) instead of dropping them.")
@click.option("--model", "model", default="smollm2-135m-instruct", show_default=True,
              help="Model whose tokenizer measures lengths (falls back to an estimate if unavailable).")
@click.option("--max-seq-len", default=1024, show_default=True, help="Report records longer than this.")
@click.option("--min-tokens", default=1, show_default=True, help="Drop records shorter than this.")
@click.option("--max-tokens", type=int, default=None, help="Drop records longer than this.")
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="Processes for the per-record stages (validation, cleaning, PII, tokens) on inputs over "
                   "20,000 records [default: cores, up to 4]; with --engine ray, the local cluster's CPUs "
                   "[default: all cores].")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the per-record stages run: local processes, or Ray Data (pip install 'tuneloop[scale]'). "
                   "The output is the same.")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="With --engine ray: an existing cluster (auto, HOST:6379 or ray://HOST:10001) "
                   "[default: start a local one].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def prepare(files, out_dir, task, split_text, seed, text_column, label_column, no_pii, near_dup_threshold,
            keep_near_duplicates, model, max_seq_len, min_tokens, max_tokens, workers, engine, ray_address, quiet):
    """Ingest, validate, clean, deduplicate, redact PII and split FILE... into --out.

    Writes train/validation/test.jsonl, report.json, report.html and manifest.json. Records stream
    through in chunks (memory stays bounded), so inputs larger than memory are fine.
    """
    from tuneloop.data.prepare import PrepareOptions
    from tuneloop.data.prepare import prepare as run_prepare
    from tuneloop.data.split import parse_fractions

    options = PrepareOptions(task=task, split=parse_fractions(split_text), seed=seed, text_column=text_column,
                             label_column=label_column, pii=not no_pii, near_dup_threshold=near_dup_threshold,
                             keep_near_duplicates=keep_near_duplicates, model=model, max_seq_len=max_seq_len,
                             min_tokens=min_tokens, max_tokens=max_tokens, workers=workers, engine=engine,
                             ray_address=ray_address)
    report = run_prepare(files, out_dir, options, progress=not quiet)
    if not quiet:
        _print_summary(report, out_dir)
    if report.counts["output"] == 0:  # empty splits would only fail later, in train or eval
        from tuneloop.errors import UserError

        first = report.issues[0] if report.issues else None
        raise UserError(f"none of the {report.counts['input']:,} records is usable (task {report.task})"
                        + (f"; first: {first['source']}: {first['message']}" if first else ""),
                        hint=f"{out_dir}/report.json lists every issue; `tuneloop data validate` prints each "
                             "invalid record; check --task and --text-column/--label-column")


def _print_summary(report, out_dir) -> None:
    c = report.counts
    click.echo(f"{c['input']:,} records in: {c['invalid']:,} invalid, {c['exact_duplicates']:,} exact and "
               f"{c['near_duplicates']:,} near duplicates, {c['filtered']:,} filtered -> {c['output']:,} out "
               f"({c['pii_redacted']:,} with PII redacted) in {report.seconds:.1f} s")
    s = report.splits
    click.echo(f"train {s['train']:,}  validation {s['validation']:,}  test {s['test']:,}  (task {report.task})")
    t = report.tokens
    if t.get("records"):
        note = " (estimated)" if t["estimated"] else ""
        click.echo(f"tokens{note}: median {t['p50']}, p95 {t['p95']}, max {t['max']}; "
                   f"{t['over_max_seq_len']} over --max-seq-len {t['max_seq_len']}")
        click.echo(f"training: {t['tokens_per_epoch']:,} tokens per epoch; {t.get('train_time', 'no estimate')}")
    invalid = [i for i in report.issues if i["kind"] == "invalid"]
    for issue in invalid[:3]:  # the first few, so a wrong column or shape is obvious without opening files
        click.echo(f"  {issue['source']}: {issue['message']}", err=True)
    if report.issues:
        click.echo(f"{len(report.issues):,} issues listed in {out_dir}/report.json "
                   f"(`tuneloop data validate` prints every invalid record)")
    click.echo(f"wrote {out_dir}/ (train/validation/test.jsonl, report.json, report.html, manifest.json)")


from tuneloop.cli.feedback import from_feedback  # noqa: E402  (light: click only)

data.add_command(from_feedback)

from tuneloop.cli.augment import augment  # noqa: E402  (light: click only)

data.add_command(augment)
