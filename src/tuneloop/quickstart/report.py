"""What the quickstart shows: the before/after table, the training curve and ``report.html``.

Pure functions of the pipeline's results (a :class:`tuneloop.quickstart.pipeline.QuickstartResult`
turned into a dict), so the report can be re-rendered from ``quickstart.json`` without re-running.
The HTML is self-contained (inline CSS) and links the data report, the evaluation report and the
exported model by relative paths, so the output folder can be moved or zipped as a whole.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from tuneloop.paths import atomic_path

# (metric key in eval.json, label, format, higher is better)
TABLE_METRICS = (
    ("fact_accuracy", "held-out fact accuracy", "{:.0%}", True),
    ("rougeL", "ROUGE-L vs reference", "{:.3f}", True),
    ("latency_ms_p50", "latency p50 (ms)", "{:.0f}", False),
)


def metric_rows(base: dict, tuned: dict) -> list[tuple[str, str, str, str]]:
    """(label, base, tuned, change) for each table metric present in both."""
    rows = []
    for key, label, fmt, _ in TABLE_METRICS:
        if key not in base or key not in tuned:
            continue
        delta = tuned[key] - base[key]
        change = f"{delta * 100:+.0f} points" if fmt.endswith("%}") else f"{delta:+.3g}"
        rows.append((label, fmt.format(base[key]), fmt.format(tuned[key]), change))
    return rows


def console_table(base: dict, tuned: dict) -> str:
    rows = [("metric", "base", "tuned", "change"), *metric_rows(base, tuned)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(r))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot_training_curve(metrics_file: Path, out_file: Path) -> bool:
    """Training (and validation) loss per step as an SVG; False when there is nothing to plot."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    validation = [(r["step"], r["validation_loss"]) for r in records if r.get("validation_loss") is not None]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed; also avoids a slow GUI backend probe
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot(*zip(*train), label="training loss", color="#2563eb")
    if validation:
        ax.plot(*zip(*validation), "o-", label="validation loss", color="#ea580c")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_file) as tmp:
        fig.savefig(tmp, format="svg")
    plt.close(fig)
    return True


CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#1f2937;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #d1d5db;padding:.4em .7em;text-align:left;
vertical-align:top}th{background:#f3f4f6}.good{color:#15803d;font-weight:600}.bad{color:#b91c1c}
.small{color:#6b7280;font-size:.9em}code{background:#f3f4f6;padding:0 .3em}"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(correct: bool) -> str:
    return '<span class="good">contains the fact</span>' if correct else '<span class="bad">misses it</span>'


def _side_by_side_html(examples: list[dict]) -> str:
    rows = []
    for e in examples:
        rows.append([html.escape(e["question"]), html.escape(", ".join(e["facts"])),
                     f"{html.escape(e['base'])}<br><span class=small>{_verdict(e['base_correct'])}</span>",
                     f"{html.escape(e['tuned'])}<br><span class=small>{_verdict(e['tuned_correct'])}</span>",
                     html.escape(e.get("exported", "")) or "-"])
    return _table(["question", "fact", "base model", "tuned model", "exported model (plain transformers)"], rows)


def render_html(summary: dict) -> str:
    """``report.html`` from the quickstart summary (the content of quickstart.json)."""
    e = html.escape
    base, tuned = summary["metrics"]["base"], summary["metrics"]["tuned"]
    metric_table = _table(["metric", "base", "tuned", "change"], [list(map(e, r)) for r in metric_rows(base, tuned)])
    stages = _table(["stage", "seconds"], [[e(k), f"{v:.0f}"] for k, v in summary["seconds"].items()])
    data = summary["data"]
    curve = ('<img src="training_curve.svg" alt="training loss per step" width="640">'
             if summary.get("training_curve") else "<p>(no loss was logged)</p>")
    settings = e(json.dumps(summary["settings"], indent=1))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tuneloop quickstart</title>
<style>{CSS}</style></head><body>
<h1>tuneloop quickstart: a Brightcart support assistant</h1>
<p>Model <code>{e(summary['model'])}</code>, LoRA-tuned on the bundled support chats of a fictional store, then
asked {summary['heldout_questions']} held-out questions about store facts in words it never saw in training.
A correct answer contains the fact (e.g. <code>45 days</code>).</p>
<h2>Before and after</h2>{metric_table}
<h2>Three questions, side by side</h2>{_side_by_side_html(summary['side_by_side'])}
<h2>Data</h2>
<p>{data['input']} records in, {data['invalid']} invalid, {data['exact_duplicates']} exact and
{data['near_duplicates']} near duplicates removed, {data['pii_redacted']} with personal data redacted;
{data['train']} for training and {data['validation']} for validation.
<a href="{e(summary['links']['data_report'])}">Data report</a></p>
<h2>Training</h2>{curve}
<p>{e(summary['training'].get('steps_text', ''))} <a href="{e(summary['links']['run_dir'])}">Run directory</a></p>
<h2>Evaluation</h2><p><a href="{e(summary['links']['eval_report'])}">Full evaluation report</a> (every
question, both models, bootstrap confidence intervals).</p>
<h2>Export</h2><p>Merged model: <a href="{e(summary['links']['exported'])}">{e(summary['links']['exported'])}</a>
(safetensors + tokenizer + chat template; loads with plain <code>transformers</code>).</p>
<h2>Time</h2>{stages}
<h2>Settings</h2><pre>{settings}</pre>
</body></html>
"""
