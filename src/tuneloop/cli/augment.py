"""``tuneloop data augment``: paraphrases, self-instruct examples or noisy variants of a dataset.

    tuneloop data augment support.jsonl --out augmented.jsonl --method paraphrase --n 2
    tuneloop data augment support.jsonl --out synthetic.jsonl --method synthetic --n 100 --topics topics.txt
    tuneloop data prepare support.jsonl augmented.jsonl --out prepared/   # augmented -> train only

Registered in the ``data`` group by :mod:`tuneloop.cli.data`. Only click is imported at module level.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from tuneloop.errors import UserError


def _read_topics(path: str | None) -> tuple[str, ...]:
    if path is None:
        return ()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text (byte {e.start})", where=f"--topics {path}",
                        hint="a plain text file with one topic per line") from None
    topics = tuple(line.strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))
    if not topics:
        raise UserError(f"{path}: no topics (write one topic per line)")
    return topics


def _check_outputs(file: str, out: str, rejected_path: str | None) -> None:
    """Before any work: outputs must be writable and never overwrite the input (or each other)."""
    from tuneloop.paths import check_output_dir

    named = {"FILE": Path(file).resolve(), "--out": Path(out).resolve()}
    if rejected_path:
        named["--rejected"] = Path(rejected_path).resolve()
    for option in ("--out", "--rejected"):
        if option not in named:
            continue
        for other, path in named.items():
            if other != option and named[option] == path:
                raise UserError(f"{option} {named[option]} is the same file as {other}",
                                hint="write the new records to a file of their own; the input would be lost")
        check_output_dir(named[option].parent, option)


@click.command("augment")
@click.argument("file", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="JSONL of the new records (with augmented_from and augmentation).")
@click.option("--method", type=click.Choice(["paraphrase", "synthetic", "noise"]), required=True,
              help="paraphrase: a model rewrites user turns; synthetic: new Q/A pairs from seed examples; "
                   "noise: typos, casing, word dropout.")
@click.option("--model", default="smollm2-135m-instruct", show_default=True,
              help="Model for paraphrase/synthetic (catalog name, hub id, directory, .gguf, run).")
@click.option("--n", "n", type=click.IntRange(min=1), default=None,
              help="Variants per record (paraphrase, noise; default 1) or new records (synthetic; default: "
                   "as many as the input has).")
@click.option("--seed", default=0, show_default=True, help="Seed of sampling and noise.")
@click.option("--topics", type=click.Path(exists=True, dir_okay=False),
              help="synthetic: text file with one topic per line, cycled through.")
@click.option("--with-originals", is_flag=True, help="Also write the input records (first) to --out.")
@click.option("--skip-invalid", is_flag=True, help="Leave out invalid input records instead of stopping.")
@click.option("--rejected", "rejected_path", type=click.Path(dir_okay=False),
              help="Also write the rejected candidates with the reason (JSONL).")
def augment(file, out, method, model, n, seed, topics, with_originals, skip_invalid, rejected_path):
    """Generate new training records from FILE; each is validated, deduplicated and filtered."""
    from tuneloop.data.augment import AugmentOptions, augment_sources, load_sources
    from tuneloop.paths import write_jsonl_atomic

    _check_outputs(file, out, rejected_path)
    options = AugmentOptions(method=method, n=n, seed=seed, model=model, topics=_read_topics(topics))
    sources, skipped = load_sources(file, skip_invalid=skip_invalid)
    for problem in skipped:
        click.echo(f"skipped {problem}", err=True)
    result = augment_sources(sources, options)
    records = (sources if with_originals else []) + result.records
    if rejected_path:  # first: should it fail, --out is not left behind for a command that failed
        write_jsonl_atomic(rejected_path, result.rejected)
    write_jsonl_atomic(out, records)
    c = result.counts
    click.echo(f"{c['sources']} records in, {c['generated']} generated: {c['invalid']} invalid, "
               f"{c['exact_duplicates']} exact and {c['near_duplicates']} near duplicates, "
               f"{c['filtered']} filtered -> {c['output']} new records in {out}")
    kinds = Counter(item["kind"] for item in result.rejected)
    for kind, count in kinds.most_common():
        example = next(item for item in result.rejected if item["kind"] == kind)
        click.echo(f"  {count:>4} rejected as {kind}, e.g. {example['text'][:60]!r}: {example['reason']}")
    inputs = out if with_originals else f"{file} {out}"
    click.echo(f"next: tuneloop data prepare {inputs} --out prepared/   (augmented records go to train only)")
