"""``tuneloop auto DATA --budget-minutes M [--memory-gb G] [--out DIR]``: data in, best model out.

Picks the model, method, formulation and hyperparameters for the data and the budget, trains,
evaluates against the base model on the held-out split and writes a report saying why (see
:mod:`tuneloop.tune.auto`).
"""

from __future__ import annotations

import click


@click.command("auto")
@click.argument("data", type=click.Path(exists=True))
@click.option("--budget-minutes", type=click.FloatRange(min=1), required=True, help="Wall-clock budget.")
@click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True),
              help="Memory to plan for (default: this machine's RAM).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/auto", show_default=True)
@click.option("--model", help="Use this model instead of choosing one from the catalog.")
def auto(data, budget_minutes, memory_gb, out_dir, model):
    """Data in, best model out: picks model, method, formulation and hyperparameters for a budget."""
    from tuneloop.tune.auto import run_auto

    report = run_auto(data, budget_minutes, memory_gb, out_dir, model=model)
    for name, result in report["results"].items():
        if isinstance(result, dict) and "test" in result:
            tuned, base = result["test"].get("accuracy"), result["base_test"].get("accuracy")
            if tuned is not None:
                click.echo(f"{name}: test accuracy {tuned:.1%} (base {base:.1%})")
    click.echo(f"winner: {report.get('winner')}")
    if (report.get("winner") or {}).get("export"):
        click.echo(f"classifier exported to {report['winner']['export']}: "
                   f"tuneloop serve --model NAME={report['winner']['export']} answers POST /v1/classify")
    click.echo(f"report: {out_dir}/report.html")
