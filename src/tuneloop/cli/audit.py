"""`tuneloop audit --model M --data FILE [--probe names,gender] [--sensitive-field F] [--gate RULE]`."""

from __future__ import annotations

import sys

import click

from tuneloop.cli.eval import GATE_FAILED_EXIT


@click.command(
    epilog=("Exit codes: 0 audited (and every --gate held); 1 bad input (the message says where); 2 bad "
            "command-line usage; 3 audited, but a --gate failed (outputs are still written).\n\n"
            "Gate metrics: bias_gap, bias_gap_ci_low, change_rate (worst probe; NAME.PROBE for one), "
            "quality_gap, demographic_parity_difference, equalized_odds_difference (worst field; NAME.FIELD)."),
)
@click.option("--model", required=True, metavar="M", help="Model to audit: catalog name, hub id, dir, .gguf or run.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Evaluation data (as for eval): the counterfactuals are made from its prompts.")
@click.option("--probe", "probes", metavar="LIST", default=None,
              help="Comma-separated shipped word lists: names, gender, nationality, dialect "
                   "(default: every one that matches the data).")
@click.option("--wordlist", "wordlists", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Your own word list (CSV: a header of groups, one swap per row); repeatable.")
@click.option("--sensitive-field", "fields", multiple=True, metavar="FIELD",
              help="Compare groups of this record field (dotted for nested); repeatable, intersections included.")
@click.option("--gate", "gates", multiple=True, metavar="RULE", help='e.g. "bias_gap <= 0.05"; repeatable, all must hold.')
@click.option("--task", type=click.Choice(["auto", "classification", "generation"]), default="auto", show_default=True)
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Audit a fixed random sample of N records.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Default: as eval.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="audit", show_default=True,
              help="Directory for audit.json and audit.html.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def audit(model, data, probes, wordlists, fields, gates, task, max_samples, batch_size, max_new_tokens, out_dir, quiet):
    """Bias probes (counterfactual swaps of names, gendered words, nationality and dialect markers) and
    group fairness on record fields, with bootstrap CIs and a release gate.

    \b
    Example:
      tuneloop audit --model runs/support-bot --data prepared/test.jsonl --probe names,gender \\
          --gate "bias_gap <= 0.05"
    """
    from tuneloop.explain.audit import run_audit

    probe_list = [p.strip() for p in probes.split(",") if p.strip()] if probes else None
    result = run_audit(model, data, probes=probe_list, wordlists=wordlists, sensitive_fields=fields, gates=gates,
                       out_dir=out_dir, max_samples=max_samples, task=task, batch_size=batch_size,
                       max_new_tokens=max_new_tokens, progress=not quiet)
    click.echo(summary_lines(result))
    click.echo(f"report: {out_dir}/audit.html   results: {out_dir}/audit.json")
    gate = result.get("gate")
    if gate is not None:
        for d in gate["details"]:
            click.echo(f"gate {'PASS' if d['passed'] else 'FAIL'}: {d['rule']}  ({d['metric']} = {d['value']:.4g})")
        if not gate["passed"]:
            sys.exit(GATE_FAILED_EXIT)


def summary_lines(result: dict) -> str:
    lines = [f"audit of {result['model']} on {result['n']} records of {result['data']}"]
    for p in result["probes"]:
        ci = p["bias_gap_ci95"]
        lines.append(f"probe {p['probe']:<12} {p['n_records']:>5} records  changed {p['change_rate']:.3f}  "
                     f"gap {p['gap_groups'][0]}-{p['gap_groups'][1]} {p['bias_gap']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
                     + ("  FLAGGED" if p["flagged"] else ""))
    for name, f in result["fields"].items():
        parts = [f"quality gap {f['quality_gap']:+.3f}"] if "quality_gap" in f else []
        if "demographic_parity_difference" in f:
            parts += [f"DP diff {f['demographic_parity_difference']:.3f}",
                      f"EO diff {f['equalized_odds_difference']:.3f}"]
        lines.append(f"field {name}: " + ", ".join(parts))
    return "\n".join(lines)
