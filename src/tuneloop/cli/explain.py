"""`tuneloop explain --model M (--prompt TEXT | --data FILE) [--target TEXT] [--baseline M]`: token heat maps.

Heavy imports (torch, transformers, captum) happen inside the command, so ``tuneloop --help`` stays fast.
"""

from __future__ import annotations

import click

from tuneloop.errors import UserError
from tuneloop.explain.attribution import METHODS


@click.command()
@click.option("--model", required=True, metavar="M", help="Model to explain: catalog name, hub id, dir, .gguf or run.")
@click.option("--prompt", metavar="TEXT", default=None, help="One user message to explain.")
@click.option("--data", metavar="FILE", type=click.Path(dir_okay=False), default=None,
              help="An eval predictions.jsonl (explains the recorded answers) or any evaluation data file "
                   "(explains the model's own greedy answers).")
@click.option("--target", metavar="TEXT", default=None,
              help="Explain this answer instead (e.g. the right one), for every prompt.")
@click.option("--baseline", metavar="M", default=None, help="Also explain with this model, side by side (e.g. the base).")
@click.option("--wrong-only", is_flag=True,
              help="With an eval predictions.jsonl: the wrong answers its report shows (and links here).")
@click.option("--method", type=click.Choice(METHODS), default="ablation", show_default=True,
              help="ablation: exact drop per token; shapley: sampled Shapley values (8x the cost); "
                   "integrated-gradients: gradients along the embedding path.")
@click.option("--max-samples", type=click.IntRange(min=1), default=20, show_default=True,
              help="Explain at most this many records of --data.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Length of a generated answer (when there is no target).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: explain/, or beside the predictions with --wrong-only).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def explain(model, prompt, data, target, baseline, wrong_only, method, max_samples, max_new_tokens, out_dir, quiet):
    """Which prompt tokens drove each answer: Captum attributions as an offline HTML heat map.

    \b
    Examples:
      tuneloop explain --model runs/support-bot --baseline smollm2-135m-instruct \\
          --prompt "Can I return a kettle after 20 days?"
      tuneloop explain --model runs/support-bot --data eval/predictions.jsonl --wrong-only
    """
    from tuneloop.explain.explanations import ExplainItem, default_out_dir, explain as run_explain, items_from_file

    if (prompt is None) == (data is None):
        raise UserError("give either --prompt TEXT or --data FILE", hint="one of them, not both")
    if prompt is not None:
        items = [ExplainItem("prompt", [{"role": "user", "content": prompt}], target)]
    else:
        items = items_from_file(data, wrong_only, max_samples, target)
    out_dir = out_dir or default_out_dir(data, wrong_only)
    result = run_explain(model, items, baseline=baseline, out_dir=out_dir, method=method,
                         max_new_tokens=max_new_tokens, progress=not quiet)
    for item in result["items"]:
        for role in ("model", "baseline"):
            if item.get(role):
                top = sorted(zip(item[role]["input_tokens"], item[role]["scores"]), key=lambda p: -p[1])[:3]
                click.echo(f"{item['id']} [{role}] {item[role]['target'][:60]!r}: "
                           + ", ".join(f"{t.strip() or t!r} {s:+.3f}" for t, s in top))
    click.echo(f"explanations: {out_dir}/index.html   data: {out_dir}/explanations.json")
