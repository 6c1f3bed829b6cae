"""`tuneloop models`: list the catalog, recommend a model, estimate memory/time, import a model."""

from __future__ import annotations

import json

import click

from tuneloop.errors import UserError


@click.group()
def models():
    """Choose a model: catalog, recommendations, estimates, local store."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_models(as_json):
    """The catalog: name, parameters, architecture, context, licence, commercial use, source."""
    from tuneloop.models.catalog import CATALOG

    rows = [{
        "name": c.name, "parameters": c.parameters, "architecture": c.architecture,
        "context": c.context, "license": c.license, "commercial": c.commercial, "source": c.source,
    } for c in CATALOG]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':30} {'params':>8} {'arch':8} {'context':>8} {'commercial':10} licence / source")
    for r in rows:
        click.echo(f"{r['name']:30} {r['parameters'] / 1e9:7.2f}B {r['architecture']:8} {r['context']:>8} "
                   f"{'yes' if r['commercial'] else 'no':10} {r['license']} / {r['source']}")


@models.command()
@click.option("--task", required=True, help="chat, classification, summarization, code, reasoning, multilingual.")
@click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True), required=True, help="Memory available for training (GB).")
@click.option("--license", "license_", type=click.Choice(["any", "commercial"]), default="any",
              help="'commercial' keeps only models whose licence allows commercial use.")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True)
def recommend(task, memory_gb, license_, top):
    """Ranked model suggestions for a task and memory budget, with reasons."""
    from tuneloop.models.recommend import TASKS, recommend as rank
    from tuneloop.errors import did_you_mean

    if task not in TASKS:
        guess = did_you_mean(task, TASKS)
        raise UserError(f"--task {task!r} is not one of {', '.join(TASKS)}"
                        + (f"; did you mean '{guess}'?" if guess else ""))
    import torch

    ranked = rank(task, memory_gb, license_ == "commercial", cuda=torch.cuda.is_available())
    if not ranked:
        raise UserError(f"no catalog model fits in {memory_gb:g} GB", hint="raise --memory-gb")
    for i, rec in enumerate(ranked[:top], 1):
        click.echo(f"{i}. {rec.card.name} ({rec.method})")
        for reason in rec.reasons:
            click.echo(f"     - {reason}")


@models.command("estimate")
@click.argument("model")
@click.option("--method", type=click.Choice(["full", "lora", "qlora"]), default="lora", show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lora-r", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def estimate_command(model, method, seq_len, batch_size, lora_r, as_json):
    """Memory (GB) and time per 1k training tokens on this machine.

    MODEL is a catalog name or any model reference (local dir, .gguf, hub id) whose config is read.
    """
    from tuneloop.models.loading import card_for
    from tuneloop.models.estimate import estimate

    est = estimate(card_for(model), method, seq_len, batch_size, r=lora_r)
    if as_json:
        click.echo(json.dumps(est.as_dict(), indent=2))
        return
    click.echo(f"{est.model}, {method}, seq {seq_len} x batch {batch_size} on {est.device}")
    click.echo(f"  trainable parameters {est.trainable_parameters:,}")
    for part in ("runtime", "weights", "gradients", "optimizer", "activations"):
        click.echo(f"  {part:12} {getattr(est, part + '_gb'):7.2f} GB")
    click.echo(f"  {'total':12} {est.total_gb:7.2f} GB")
    click.echo(f"  time         {est.seconds_per_1k_tokens:7.2f} s per 1k tokens "
               f"(peak {est.peak_tflops:.2f} TFLOP/s measured, {est.flops_per_token / 1e6:.0f} MFLOP/token)")


@models.command("import")
@click.argument("source")
@click.option("--name", help="Name in the local store (default: from the source).")
def import_command(source, name):
    """Import a hub id, local directory or .gguf file into the local model store."""
    from tuneloop.models.store import import_model

    path = import_model(source, name)
    click.echo(f"imported {source} -> {path}")
