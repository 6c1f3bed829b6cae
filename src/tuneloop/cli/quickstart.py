"""`tuneloop quickstart`: the main job, end to end on the embedded model, in a few minutes on a CPU."""

from __future__ import annotations

import click


@click.command()
@click.option("--out", "out_dir", default="quickstart-out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (report.html, data, run, evaluation, exported model).")
@click.option("--model", default="smollm2-135m-instruct", show_default=True,
              help="Model to fine-tune: catalog name, hub id, local dir or .gguf.")
@click.option("--epochs", type=float, default=None, help="Training epochs (default 3; 1.5 with --fast).")
@click.option("--max-steps", type=int, default=None, help="Stop training after this many steps.")
@click.option("--fast", is_flag=True, help="A quicker look: fewer epochs and 15 held-out questions.")
@click.option("--loop", is_flag=True, help="Then the second act: a policy changes, users correct the served "
                                           "model, one improve round, the served answer changes (see README).")
def quickstart(out_dir, model, epochs, max_steps, fast, loop):
    """Bundled support chats -> prepare -> LoRA fine-tune -> evaluate base vs tuned -> report -> export.

    Fine-tunes a support assistant for Brightcart, a fictional online store, on chats that mention
    its policies and products, then asks both the base and the tuned model held-out questions about
    those facts in new words. Prints the before/after table and the path of report.html.
    """
    from tuneloop.quickstart.pipeline import QuickstartSettings, run_quickstart
    from tuneloop.quickstart.report import console_table

    overrides = {k: v for k, v in {"epochs": epochs, "max_steps": max_steps}.items() if v is not None}
    settings = (QuickstartSettings.fast if fast else QuickstartSettings)(model=model, **overrides)
    summary = run_quickstart(out_dir, settings=settings)
    click.echo("")
    click.echo(f"Held-out store questions ({summary['heldout_questions']}), base vs tuned {summary['model']}:")
    click.echo(console_table(summary["metrics"]["base"], summary["metrics"]["tuned"]))
    click.echo("")
    for example in summary["side_by_side"]:
        click.echo(f"Q: {example['question']}")
        click.echo(f"   base : {example['base']}")
        click.echo(f"   tuned: {example['tuned']}")
    same = sum(e["exported"] == e["tuned"] for e in summary["side_by_side"])
    click.echo(f"The exported model, loaded with plain transformers, gives the same answers: "
               f"{same}/{len(summary['side_by_side'])}")
    click.echo("")
    click.echo(f"Finished in {summary['seconds']['total'] / 60:.1f} min. Report: {out_dir}/report.html")
    click.echo(f"Exported model: {out_dir}/exported (tuneloop export {out_dir}/{summary['links']['run_dir']} "
               "--format gguf --out DIR for llama.cpp)")
    if loop:
        _loop_act(out_dir, summary)


def _loop_act(out_dir: str, summary: dict) -> None:
    from pathlib import Path

    from tuneloop.quickstart.loop_act import CHANGE, run_loop_act

    act = run_loop_act(Path(out_dir) / "loop", str(Path(out_dir) / summary["links"]["run_dir"]))
    click.echo("")
    click.echo(f"Loop act: the return window changed from {CHANGE.old} to {CHANGE.new}.")
    for before, after in zip(act["before"], act["after"]):
        click.echo(f"Q: {before['question']}")
        click.echo(f"   before the round: {before['answer']}")
        click.echo(f"   after the round : {after['answer']}")
    fmt = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
    click.echo(f"Improve round: {act['round']['status']} (v{act['round']['candidate']}); satisfaction "
               f"{fmt(act['satisfaction_before'])} -> {fmt(act['satisfaction_after'])}; requests during the "
               f"switch: {act['requests_during_switch']}")
    click.echo(f"Loop act finished in {act['seconds'] / 60:.1f} min. Round report: {act['round']['round_dir']}/report.html")
