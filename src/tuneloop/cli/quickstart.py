"""`tuneloop quickstart`: the main job, end to end on the embedded model, in a few minutes on a CPU."""

from __future__ import annotations

import click


@click.command()
@click.option("--out", "out_dir", default="quickstart-out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (report.html, data, run, evaluation, exported model).")
@click.option("--model", default="smollm2-135m-instruct", show_default=True,
              help="Model to fine-tune: catalog name, hub id, local dir or .gguf.")
@click.option("--epochs", type=float, default=None, help="Training epochs (default 3; 2 with --fast).")
@click.option("--max-steps", type=int, default=None, help="Stop training after this many steps.")
@click.option("--fast", is_flag=True, help="A quicker look: fewer epochs and 15 held-out questions.")
def quickstart(out_dir, model, epochs, max_steps, fast):
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
