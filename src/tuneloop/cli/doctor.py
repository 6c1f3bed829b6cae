"""`tuneloop doctor`: what this machine has for fine-tuning, and known-bad combinations."""

from __future__ import annotations

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(as_json):
    """Versions, device, bf16/AMX support, free memory and disk, embedded model, known-bad combos."""
    import json

    from tuneloop.doctor import collect

    report = collect()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    for section, values in report.items():
        if section == "problems":
            continue
        click.echo(f"{section}:")
        for key, value in values.items():
            click.echo(f"  {key:22} {value}")
    if report["problems"]:
        click.echo("problems:")
        for p in report["problems"]:
            click.echo(f"  - {p}")
    else:
        click.echo("problems: none found")
