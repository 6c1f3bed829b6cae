"""``report.html``: one self-contained page (inline SVG plots, no scripts, no network) for an evaluation.

Sections, in the order a reviewer asks the questions: did the gate pass; how do the metrics compare
with the baseline (deltas with 95% CIs); where does the classifier go wrong (confusion); is any group
worse off (slices); how fast is it (latency histogram); what do wrong answers look like.
"""

from __future__ import annotations

import html
import io
import random

import numpy as np

from tuneloop.evaluate.compare import LOWER_IS_BETTER
from tuneloop.evaluate.plots import bar_chart, heatmap, histogram

FULL_MATRIX_MAX_LABELS = 20
MAX_CHART_GROUPS = 30
TIMING_METRICS = {"latency_ms_p50", "latency_ms_p95", "tokens_per_s"}
WRONG_SAMPLE_SIZE = 15

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1180px;color:#1d232b;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde3ea;padding-bottom:4px}
.meta{color:#5b6675}table{border-collapse:collapse;margin:6px 0}td,th{padding:4px 10px;border-bottom:1px solid #e6ebf0;text-align:left;vertical-align:top}
th{background:#f4f6f9;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.flat{color:#5b6675}
.banner{padding:10px 14px;border-radius:6px;margin:14px 0;font-weight:600}.pass{background:#e6f4ea;color:#137333}
.fail{background:#fce8e6;color:#b3261e}.note{color:#5b6675;font-size:12.5px}.flag{color:#b3261e;font-weight:600}
.wrong td{max-width:330px;word-wrap:break-word}summary{cursor:pointer;color:#1a73e8;margin:6px 0}svg{max-width:100%;height:auto}.two{display:flex;gap:20px;flex-wrap:wrap}
"""

METRIC_NOTES = ("accuracy, precision, recall, f1 (macro over labels), exact_match, rouge1/2/L and fact_accuracy are "
                "fractions (0-1); bleu and chrf are on sacreBLEU's 0-100 scale; perplexity is on the reference "
                "answers' tokens (lower is better); latency is per sample, from the start of its batch to its "
                "last token; 95% CIs come from paired bootstrap resampling of the samples (1,000 resamples).")


def _e(value) -> str:
    return html.escape(str(value))


def _answer(row: dict) -> str:
    if not row["prediction"].strip():
        return "<i class=note>(empty answer)</i>"
    # Cut answers get an ellipsis, so a reader does not take the cut for the model's own ending.
    return _e(row["prediction"]) + ("&hellip;" if row.get("finish_reason") == "length" else "")


def _fmt(value, name: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if name in ("latency_ms_p50", "latency_ms_p95", "peak_memory_mb", "model_size_mb", "tokens_per_s", "bleu", "chrf"):
        return f"{value:,.1f}"
    if name == "perplexity":
        return f"{value:,.2f}"
    return f"{value:.3f}" if isinstance(value, float) else _e(value)


def _delta_class(name: str, delta: float, ci) -> str:
    """good/bad only when the CI excludes zero, i.e. the difference is more than resampling noise."""
    if ci is None or ci[0] is None or (ci[0] <= 0 <= ci[1]) or name in TIMING_METRICS:
        # Timing depends on machine load and batching, which resampling samples cannot capture.
        return "flat"
    better = delta < 0 if name in LOWER_IS_BETTER else delta > 0
    return "good" if better else "bad"


def _decided_by(detail: dict) -> str:
    if detail.get("decided_by") == "ci":
        low, high = detail["margin_ci95"]
        return (f"95% CI of value &minus; threshold: [{_fmt(low, detail['metric'])}, {_fmt(high, detail['metric'])}]"
                f" (point: {'pass' if detail['passed_point'] else 'fail'})")
    return "point values"


def _gate_section(gate: dict | None) -> str:
    if gate is None:
        return ""
    rows = "".join(
        f"<tr><td>{'PASS' if d['passed'] else 'FAIL'}</td><td>{_e(d['rule'])}</td>"
        f"<td class=num>{_fmt(d['value'], d['metric'])}</td><td class=num>{_fmt(d['threshold'], d['metric'])}</td>"
        f"<td>{_decided_by(d)}</td></tr>"
        for d in gate["details"])
    verdict = "Gate passed" if gate["passed"] else "Gate FAILED: do not release"
    mode = gate.get("mode", "point")
    how = ("gate mode ci: a rule passes only if it holds at the near end of the 95% paired-bootstrap CI of "
           "value &minus; threshold (rules on single figures, and ==, fall back to the point values)"
           if mode == "ci" else "gate mode point: the observed values decide, so a difference inside the noise "
           "can pass")
    return (f"<div class='banner {'pass' if gate['passed'] else 'fail'}'>{verdict}</div><p class=note>{how}.</p>"
            f"<table><tr><th>result</th><th>rule</th><th class=num>value</th><th class=num>threshold</th>"
            f"<th>decided by</th></tr>{rows}</table>")


def _metrics_section(result: dict) -> str:
    comparison = result.get("comparison")
    if not comparison:
        rows = "".join(f"<tr><td>{_e(k)}</td><td class=num>{_fmt(v, k)}</td></tr>" for k, v in result["metrics"].items())
        return f"<h2>Metrics</h2><table><tr><th>metric</th><th class=num>value</th></tr>{rows}</table>"
    rows = []
    for name, row in comparison.items():
        ci = row.get("ci95")
        css = _delta_class(name, row["delta"], ci)
        ci_text = f"[{_fmt(ci[0], name)}, {_fmt(ci[1], name)}]" if ci else "-"
        sign = "+" if row["delta"] > 0 else ""
        rows.append(f"<tr><td>{_e(name)}{' (lower is better)' if name in LOWER_IS_BETTER else ''}</td>"
                    f"<td class=num>{_fmt(row['baseline'], name)}</td><td class=num>{_fmt(row['model'], name)}</td>"
                    f"<td class='num {css}'>{sign}{_fmt(row['delta'], name)}</td><td class=num>{ci_text}</td></tr>")
    head = ("<tr><th>metric</th><th class=num>baseline</th><th class=num>model</th><th class=num>delta</th>"
            "<th class=num>95% CI of delta</th></tr>")
    unit = [n for n in comparison if n in ("accuracy", "precision", "recall", "f1", "exact_match", "rouge1",
                                           "rouge2", "rougeL", "fact_accuracy")]
    chart = bar_chart(unit, {"baseline": [comparison[n]["baseline"] for n in unit],
                             "model": [comparison[n]["model"] for n in unit]}, "score (0-1)", ylim=(0, 1)) if unit else ""
    return (f"<h2>Model vs baseline</h2><p class=meta>model <b>{_e(result['model'])}</b> vs baseline "
            f"<b>{_e(result['baseline']['model'])}</b>. Green/red: the 95% CI of the delta excludes 0 (quality metrics only: timings depend on machine load, so compare them on an idle machine).</p>"
            f"<table>{head}{''.join(rows)}</table>{chart}")


def _confusion_block(confusion: dict, title: str) -> str:
    labels, matrix = confusion["labels"], np.asarray(confusion["matrix"])
    pairs = "".join(f"<tr><td>{_e(p['true'])}</td><td>{_e(p['predicted'])}</td><td class=num>{p['count']}</td></tr>"
                    for p in confusion["top_confused"])
    table = (f"<table><tr><th>true label</th><th>predicted as</th><th class=num>count</th></tr>{pairs}</table>"
             if pairs else "<p>No mistakes.</p>")
    if len(labels) <= FULL_MATRIX_MAX_LABELS:
        keep, caption = list(range(len(labels))), "all labels"
    else:
        errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
        keep = sorted(np.argsort(-errors, kind="stable")[:FULL_MATRIX_MAX_LABELS].tolist())
        caption = f"the {FULL_MATRIX_MAX_LABELS} labels with the most mistakes (of {len(labels)})"
    sub = matrix[np.ix_(keep, keep)]
    plot = heatmap(sub, [labels[i] for i in keep], annotate=len(keep) <= 12)
    return (f"<h3>{_e(title)}</h3><div class=two><div><p class=meta>Most frequent mistakes</p>{table}</div>"
            f"<div><p class=meta>Confusion matrix: {caption}; rows true, columns predicted</p>{plot}</div></div>")


CLASSIFY_NOTES = {
    "likelihood": "the label the model finds most likely as its whole answer, among the labels in the data "
                  "(every answer is a label; the generated text is shown beside it)",
    "generate": "the greedy answer, counted only when it is exactly a label (ignoring case, spacing and trailing "
                "punctuation); anything else is 'no label' and wrong",
    "similar": "LENIENT: the greedy answer mapped onto a label even when it is none: exact = the answer is the "
               "label; contained = the label occurs in the answer; similar = closest by spelling. Accuracy "
               "here overstates a model that does not answer with labels",
}


def _label_matching(result: dict, rows: list[dict], no_label) -> str:
    counts = {}
    for row in rows:
        counts[row.get("matched_by")] = counts.get(row.get("matched_by"), 0) + 1
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k)
    mode = result.get("classify") or "similar"
    return (f"<p class=note>Scoring <b>classify={_e(mode)}</b>: {_e(CLASSIFY_NOTES[mode])}. "
            f"No label: <b>{no_label or 0}</b> of {len(rows)} answers. How labels were found: {_e(parts)}.</p>")


def _classification_section(result: dict, rows, baseline_rows) -> str:
    if not result.get("confusion"):
        return ""
    parts = ["<h2>Where the classifier goes wrong</h2>", _label_matching(result, rows, result.get("no_label")),
             _confusion_block(result["confusion"], f"model: {result['model']}")]
    if result.get("baseline") and result["baseline"].get("confusion"):
        parts += [_label_matching(result, baseline_rows, result["baseline"].get("no_label")),
                  _confusion_block(result["baseline"]["confusion"], f"baseline: {result['baseline']['model']}")]
    return "".join(parts)


JUDGE_SAMPLE_SIZE = 10


def _judge_section(result: dict, rows: list[dict]) -> str:
    judge = result.get("judge")
    if not judge:
        return ""
    comparison = result.get("comparison") or {}
    head = ("<tr><th>rubric</th><th class=num>model (1-5)</th><th class=num>baseline</th><th class=num>delta, 95% CI</th>"
            "<th class=num>win rate of model, 95% CI</th><th class=num>position-consistent</th>"
            "<th class=num>unreadable replies</th></tr>")
    body = []
    for rubric in judge["rubrics"]:
        name = f"judge_{rubric}"
        row = comparison.get(name)
        delta = (f"{row['delta']:+.2f} [{row['ci95'][0]:+.2f}, {row['ci95'][1]:+.2f}]" if row else "-")
        win = result["metrics"].get(f"judge_win_rate_{rubric}")
        win_ci = judge["win_rate_ci95"].get(rubric)
        win_text = f"{win:.2f} [{win_ci[0]:.2f}, {win_ci[1]:.2f}]" if win is not None else "-"
        consistent = result["metrics"].get(f"judge_consistency_{rubric}")
        base = (result.get("baseline") or {}).get("metrics", {}).get(name)
        body.append(f"<tr><td>{_e(rubric)}</td><td class=num>{_fmt(result['metrics'][name])}</td>"
                    f"<td class=num>{_fmt(base)}</td><td class=num>{delta}</td><td class=num>{win_text}</td>"
                    f"<td class=num>{_fmt(consistent)}</td><td class=num>{judge['unreadable'][rubric]}</td></tr>")
    picked = sorted(random.Random(0).sample(range(len(rows)), min(JUDGE_SAMPLE_SIZE, len(rows))))
    rubric = judge["rubrics"][0]
    reasons = "".join(
        f"<tr><td>{_e(rows[i]['prompt'])}</td><td>{_answer(rows[i])}</td>"
        f"<td class=num>{_fmt(rows[i]['judge'][rubric]['score'])}</td><td>{_e(rows[i]['judge'][rubric]['reason'])}</td>"
        + (f"<td>{_e(rows[i]['judge'][rubric]['tuned_first'])}<hr>{_e(rows[i]['judge'][rubric]['tuned_second'])}</td>"
           if "tuned_first" in rows[i]["judge"][rubric] else "") + "</tr>"
        for i in picked)
    pair_head = "<th>pairwise replies (model as A / model as B)</th>" if result.get("baseline") else ""
    return (f"<h2>Judge: {_e(judge['judge'])}</h2><p class=meta>Scores 1-5 per rubric; win rate: each pair judged "
            "with the model's answer first and then second, a win only when both orders agree (a split counts 0.5). "
            "All replies are in predictions.jsonl.</p>"
            f"<table>{head}{''.join(body)}</table><h3>The judge's reasons ({_e(rubric)}, fixed random sample)</h3>"
            f"<table class=wrong><tr><th>prompt</th><th>model answer</th><th class=num>score</th><th>reason</th>"
            f"{pair_head}</tr>{reasons}</table>")


def _harness_section(result: dict) -> str:
    harness = result.get("harness")
    if not harness:
        return ""
    rows = "".join(
        f"<tr><td>{_e(task)}</td><td>{_e(name)}</td><td class=num>{_fmt(row['baseline'])}</td>"
        f"<td class=num>{_fmt(row['model'])} &plusmn; {_fmt(row['model_stderr'])}</td>"
        f"<td class=num>{_fmt(row['delta'])}</td></tr>"
        for task, metrics in harness.items() for name, row in metrics.items())
    return ("<h2>lm-evaluation-harness tasks</h2><p class=meta>Scored by the harness on both models "
            "(&plusmn; the harness's standard error); a drop on general tasks after fine-tuning is forgetting.</p>"
            "<table><tr><th>task</th><th>metric</th><th class=num>baseline</th><th class=num>model</th>"
            f"<th class=num>delta</th></tr>{rows}</table>")


def _slices_section(result: dict) -> str:
    slices = result.get("slices")
    if not slices:
        return ""
    metric = "accuracy" if result["task"] == "classification" else "rougeL"
    table = slices["groups"]
    eligible = [g for g, row in table.items() if row["n"] >= slices["min_group_size"]]
    groups = sorted(eligible or table, key=lambda g: (-table[g].get(metric, 0.0), g))
    caption = f"{metric} per group, best first" + (f" (groups of at least {slices['min_group_size']} samples)"
                                                   if eligible and len(eligible) < len(table) else "")
    if len(groups) > MAX_CHART_GROUPS:
        half = MAX_CHART_GROUPS // 2  # too many bars to read: the best and the worst groups
        groups = groups[:half] + groups[-half:]
        caption += f": the {half} best and the {half} worst of {len(eligible or table)}"
    series = {"model": [slices["groups"][g].get(metric, 0.0) for g in groups]}
    base = (result.get("baseline") or {}).get("slices")
    if base:
        series = {"baseline": [base["groups"].get(g, {}).get(metric, 0.0) for g in groups], **series}
    chart = f"<p class=meta>{_e(caption)}</p>" + bar_chart(groups, series, metric, ylim=(0, 1), rotate=len(groups) > 6)
    return (f"<h2>Slices by <code>{_e(slices['field'])}</code></h2>{_gap_table(slices)}{chart}"
            f"{_group_table(slices)}")


def _gap_table(slices: dict) -> str:
    intro = (f"<p class=meta>Largest gap between groups of at least {slices['min_group_size']} samples; "
             f"flagged above {slices['threshold']:g} (perplexity: relative to the best group; bleu: per 100).</p>")
    if not slices["gaps"]:
        return intro + "<p>No two groups are large enough to compare.</p>"
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class=num>{_fmt(g['gap'], name)}</td><td>{_e(g['best_group'])}</td>"
        f"<td>{_e(g['worst_group'])}</td><td>{'<span class=flag>FLAGGED</span>' if g['flagged'] else 'ok'}</td></tr>"
        for name, g in slices["gaps"].items())
    return (f"{intro}<table><tr><th>metric</th><th class=num>gap</th><th>best group</th><th>worst group</th>"
            f"<th></th></tr>{rows}</table>")


def _group_table(slices: dict, limit: int = 100) -> str:
    groups = list(slices["groups"].items())
    metrics = [m for m in groups[0][1] if m != "n"]
    head = "".join(f"<th class=num>{_e(m)}</th>" for m in metrics)
    rows = "".join(f"<tr><td>{_e(g)}</td><td class=num>{row['n']}</td>"
                   + "".join(f"<td class=num>{_fmt(row[m], m)}</td>" for m in metrics) + "</tr>"
                   for g, row in groups[:limit])
    more = f"<p class=note>{len(groups) - limit} more groups are in eval.json.</p>" if len(groups) > limit else ""
    table = f"<table><tr><th>group</th><th class=num>n</th>{head}</tr>{rows}</table>{more}"
    if len(groups) <= 12:
        return table
    return f"<details><summary>All {len(groups)} groups</summary>{table}</details>"


def _latency_section(rows, baseline_rows) -> str:
    series = {"model": [r["latency_ms"] for r in rows]}
    if baseline_rows:
        series = {"baseline": [r["latency_ms"] for r in baseline_rows], **series}
    return ("<h2>Latency</h2><p class=meta>Per sample: from the start of its batch until its last token.</p>"
            + histogram(series, "latency per sample (ms)"))


def _wrong_section(rows, baseline_rows, max_new_tokens=None) -> str:
    wrong = [i for i, r in enumerate(rows) if not r.get("correct")]
    if not wrong:
        return "<h2>Wrong answers</h2><p>None.</p>"
    picked = sorted(random.Random(0).sample(wrong, min(WRONG_SAMPLE_SIZE, len(wrong))))
    head = "<tr><th>prompt</th><th>reference</th><th>model answer</th>"
    head += "<th>baseline answer</th></tr>" if baseline_rows else "</tr>"
    body = []
    for i in picked:
        r = rows[i]
        answer = _answer(r) + (f"<br><span class=note>&rarr; {_e(r['predicted_label'])} ({_e(r['matched_by'])})</span>"
                                        if "predicted_label" in r else "")
        base = f"<td>{_answer(baseline_rows[i])}</td>" if baseline_rows else ""
        why = f" <a href='explain/index.html#ex-{_e(r['id'])}' title='token heat map'>why?</a>"  # tuneloop explain
        body.append(f"<tr><td>{_e(r['prompt'])}{why}</td><td>{_e(r['reference'])}</td><td>{answer}</td>{base}</tr>")
    cut = (f" Answers end after {max_new_tokens} new tokens (&hellip; marks a cut): enough for any label."
           if max_new_tokens and "predicted_label" in rows[0] else "")
    return (f"<h2>Wrong answers</h2><p class=meta>{len(picked)} of the model's {len(wrong)} wrong answers "
            f"(fixed random sample; all are in predictions.jsonl).{cut} <i>why?</i> links open after "
            f"<code>tuneloop explain --model MODEL --data predictions.jsonl --wrong-only</code> (writes explain/ here).</p><table class=wrong>{head}{''.join(body)}</table>")


def _classify_meta(result: dict) -> str:
    return f"; classify={_e(result['classify'])}" if result.get("classify") else ""


def render_report(result: dict, rows: list[dict], baseline_rows: list[dict] | None = None) -> str:
    """The whole page as one string."""
    out = io.StringIO()
    out.write(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>tuneloop eval: {_e(result['model'])}"
              f"</title><style>{CSS}</style></head><body>")
    out.write(f"<h1>Evaluation: {_e(result['model'])}</h1><p class=meta>{_e(result['task'])} on {result['n']} "
              f"samples of {_e(result['data'])}; greedy decoding{_classify_meta(result)}; "
              f"wall time {result.get('wall_s', 0):.0f} s</p>")
    out.write(_gate_section(result.get("gate")))
    out.write(_metrics_section(result))
    out.write(_judge_section(result, rows))
    out.write(_harness_section(result))
    out.write(_classification_section(result, rows, baseline_rows))
    out.write(_slices_section(result))
    out.write(_latency_section(rows, baseline_rows))
    out.write(_wrong_section(rows, baseline_rows, (result.get("timing") or {}).get("max_new_tokens")))
    out.write(f"<h2>Notes</h2><p class=note>{_e(METRIC_NOTES)}</p></body></html>\n")
    return out.getvalue()
