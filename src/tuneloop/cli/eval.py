"""``tuneloop eval``: metrics, base-vs-tuned comparison with a release gate, slices, report.

Heavy imports (torch, transformers) happen inside the command, so ``tuneloop --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

GATE_FAILED_EXIT = 3


@click.command(
    "eval",
    epilog=(
        "Exit codes: 0 evaluated (and every --gate held); 1 bad input (the message says where); "
        "2 bad command-line usage; 3 evaluated, but a --gate failed (outputs are still written).\n\n"
        "Scales: accuracy, precision, recall, f1 (macro), exact_match, rouge1/2/L, fact_accuracy in 0-1; "
        "bleu and chrf on sacreBLEU's 0-100 scale."
    ),
)
@click.option("--model", "model", required=True, metavar="M",
              help="Model to evaluate: catalog name, hub id, local dir, .gguf or run directory.")
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Evaluation data: prepared test.jsonl (chat records, with label for classification), "
                   "or {prompt, completion} / {text, label} JSONL.")
@click.option("--baseline", metavar="M", default=None, help="Model to compare with on the same data (e.g. the base model).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="eval", show_default=True,
              help="Directory for eval.json, predictions.jsonl and report.html.")
@click.option("--gate", "gates", multiple=True, metavar="RULE",
              help='Release rule, repeatable, all must hold: "f1 >= baseline + 0.02", "accuracy >= 0.8", '
                   '"rougeL > baseline", "latency_ms_p95 <= baseline * 1.2".')
@click.option("--gate-mode", type=click.Choice(["ci", "point"]), default="ci", show_default=True,
              help="ci: a rule passes only if it holds at the near end of the 95% paired-bootstrap CI "
                   "(f1 >= baseline + 0.02 needs the CI's lower bound of the F1 difference >= 0.02); "
                   "point: compare the observed values (a gain inside the noise passes).")
@click.option("--judge", metavar="M|URL", default=None,
              help="LLM judge: a catalog name, model or run directory (served locally for the evaluation), or the "
                   "URL of any OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1 of a `tuneloop serve`).")
@click.option("--judge-rubric", "judge_rubrics", multiple=True,
              type=click.Choice(["correctness", "helpfulness", "safety"]),
              help="Repeatable. Default: correctness (agreement with the reference answer).")
@click.option("--judge-model", metavar="NAME", default=None, help="Model name at the --judge URL (default: its first).")
@click.option("--judge-api-key", metavar="KEY", default=None, envvar="TUNELOOP_JUDGE_API_KEY",
              help="API key for the --judge URL (default: $TUNELOOP_JUDGE_API_KEY, else $OPENAI_API_KEY).")
@click.option("--tasks", metavar="LIST", default=None,
              help="lm-evaluation-harness tasks run on the model and the baseline (forgetting check): names "
                   "(arc_easy,hellaswag; their data must be reachable or cached) and/or task YAML files over local data.")
@click.option("--slice-by", metavar="FIELD", default=None,
              help="Report metrics per value of this record field (dotted for nested) and the largest gap.")
@click.option("--slice-threshold", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="Flag a gap between groups larger than this (0-1 metrics).")
@click.option("--task", type=click.Choice(["auto", "classification", "generation"]), default="auto",
              show_default=True, help="auto: classification when records carry a label.")
@click.option("--classify", "classify", type=click.Choice(["likelihood", "generate", "similar"]),
              default="likelihood", show_default=True,
              help="Classification scoring. likelihood: the label the model finds most likely as its answer; "
                   "generate: the greedy answer must be a label (case, spacing, trailing punctuation aside), "
                   "else it is 'no label' and wrong; similar: lenient mapping of free text onto the nearest label.")
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Evaluate a fixed random sample (seed 0) of N records.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Default: longest label + 4 (classification) or longest reference + 16, at most 256.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="auto: bfloat16 on a GPU, float32 on CPU.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(model, data, baseline, out_dir, gates, gate_mode, judge, judge_rubrics, judge_model, judge_api_key,
                 tasks, slice_by, slice_threshold, task, classify, max_samples,
                 batch_size, max_new_tokens, dtype, quiet):
    """Evaluate MODEL on FILE; compare with --baseline; fail the --gate rules that do not hold.

    \b
    Example:
      tuneloop eval --model runs/support-bot --baseline smollm2-135m-instruct \\
          --data prepared/test.jsonl --gate "f1 >= baseline + 0.02" --out eval/
    """
    from tuneloop.evaluate.run import run_eval

    result = run_eval(model, data, baseline=baseline, out_dir=out_dir, gates=gates, slice_by=slice_by,
                      max_samples=max_samples, task=task, batch_size=batch_size,
                      max_new_tokens=max_new_tokens, slice_threshold=slice_threshold, progress=not quiet,
                      dtype=dtype, classify=classify, gate_mode=gate_mode, judge=judge,
                      judge_rubrics=judge_rubrics, judge_model=judge_model, judge_api_key=judge_api_key, tasks=tasks)
    click.echo(summary_table(result))
    if result.get("harness"):
        click.echo(harness_table(result["harness"]))
    click.echo(f"report: {out_dir}/report.html   results: {out_dir}/eval.json")
    gate = result.get("gate")
    if gate is not None:
        for detail in gate["details"]:
            click.echo(gate_line(detail))
        if not gate["passed"]:
            # SystemExit, not ctx.exit: click's non-standalone main would swallow ctx.exit's code.
            sys.exit(GATE_FAILED_EXIT)


def gate_line(detail: dict) -> str:
    """One rule's verdict and what decided it: the CI of the margin, or the point values."""
    mark = "PASS" if detail["passed"] else "FAIL"
    line = (f"gate {mark}: {detail['rule']}  ({detail['metric']} = {detail['value']:.4g}, "
            f"threshold {detail['threshold']:.4g}")
    if detail.get("decided_by") == "ci":
        low, high = detail["margin_ci95"]
        return line + f"; decided by the 95% CI of the margin [{low:+.4g}, {high:+.4g}])"
    return line + "; decided by the point values)"


def harness_table(harness: dict) -> str:
    lines = [f"{'harness task':<24}{'metric':<14}{'baseline':>10}{'model':>10}{'delta':>10}"]
    for task, metrics in harness.items():
        for name, row in metrics.items():
            base = f"{row['baseline']:>10.4g}" if row["baseline"] is not None else f"{'-':>10}"
            delta = f"{row['delta']:>+10.4g}" if row["delta"] is not None else f"{'-':>10}"
            lines.append(f"{task:<24}{name:<14}{base}{row['model']:>10.4g}{delta}")
    return "\n".join(lines)


def summary_table(result: dict) -> str:
    """Plain-text metric table; with a baseline: baseline, model, delta and its 95% CI."""
    comparison = result.get("comparison")
    lines = [f"{result['task']} evaluation of {result['model']} on {result['n']} samples of {result['data']}"]
    if result.get("classify"):
        base = result.get("baseline") or {}
        no_label = f"no label: {result['no_label']}" + (f" (baseline {base['no_label']})" if base else "")
        lines.append(f"classification scored by {result['classify']}; {no_label}")
    if comparison:
        lines.append(f"{'metric':<16}{'baseline':>12}{'model':>12}{'delta':>12}   95% CI")
        for name, row in comparison.items():
            ci = f"[{row['ci95'][0]:+.4g}, {row['ci95'][1]:+.4g}]" if row.get("ci95") else ""
            lines.append(f"{name:<16}{row['baseline']:>12.4g}{row['model']:>12.4g}{row['delta']:>+12.4g}   {ci}")
    else:
        lines.append(f"{'metric':<16}{'value':>12}")
        lines += [f"{name:<16}{value:>12.4g}" for name, value in result["metrics"].items()]
    return "\n".join(lines)
