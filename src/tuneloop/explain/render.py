"""Offline HTML pages: token heat maps (``tuneloop explain``) and the bias audit (``tuneloop audit``).

One self-contained file each, no scripts or fonts from a CDN, so a report opens on an air-gapped
laptop. A heat map colours each prompt token by its attribution: red raised the answer's
log-probability, blue lowered it; intensity is relative to the largest |score| in that panel, and the
exact score is in each token's tooltip. Base and tuned panels sit side by side.
"""

from __future__ import annotations

import html

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
.meta,.note{color:#666;font-size:13px}.pair{display:flex;gap:16px;flex-wrap:wrap}
.panel{flex:1;min-width:380px;border:1px solid #ddd;border-radius:6px;padding:10px}
.tok{padding:1px 0;border-radius:2px;white-space:pre-wrap}.heat{font-family:ui-monospace,monospace;line-height:1.9}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}.bar{display:inline-block;height:10px;background:#4a7bd1}.flag{color:#b00020;font-weight:600}
.ok{color:#0a7d32;font-weight:600}details{margin:6px 0}summary{cursor:pointer;color:#1a73e8}
.grid td{font-family:ui-monospace,monospace;font-size:12px;padding:1px 3px}.legend span{padding:2px 6px}"""


def _e(value) -> str:
    return html.escape(str(value))


def token_color(score: float, scale: float) -> str:
    """Red for positive, blue for negative; alpha = |score| / scale (the panel's largest |score|)."""
    alpha = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    rgb = "215,48,39" if score >= 0 else "49,104,189"
    return f"rgba({rgb},{alpha:.3f})"


def heat_map(tokens: list[str], scores: list[float]) -> str:
    scale = max((abs(s) for s in scores), default=0.0)
    return "".join(f'<span class=tok style="background:{token_color(s, scale)}" title="{s:+.4f}">{_e(t)}</span>'
                   for t, s in zip(tokens, scores))


def _per_output_grid(attribution: dict, limit: int = 24) -> str:
    rows = attribution["per_output"][:limit]
    if len(rows) <= 1:
        return ""
    scale = max((abs(v) for row in rows for v in row), default=0.0)
    head = "<tr><th>answer token</th>" + "".join(f"<th>{_e(t)}</th>" for t in attribution["input_tokens"]) + "</tr>"
    body = "".join(
        f"<tr><th>{_e(out)}</th>" + "".join(f'<td style="background:{token_color(v, scale)}" title="{v:+.4f}">'
                                            f"{v:+.2f}</td>" for v in row) + "</tr>"
        for out, row in zip(attribution["output_tokens"], rows))
    return f"<details><summary>per answer token</summary><table class=grid>{head}{body}</table></details>"


def attribution_panel(title: str, attribution: dict) -> str:
    top = sorted(zip(attribution["input_tokens"], attribution["scores"]), key=lambda p: -p[1])[:3]
    kind = "its own greedy answer" if attribution["generated"] else "the given target"
    return (f"<div class=panel><b>{_e(title)}</b><p class=meta>explaining {kind}: <b>{_e(attribution['target'])}</b>"
            f"<br>log p(answer | prompt) = {attribution['target_log_prob']:.3f}; method {_e(attribution['method'])}"
            f"</p><div class=heat>{heat_map(attribution['input_tokens'], attribution['scores'])}</div>"
            f"<p class=meta>most supporting: {', '.join(f'{_e(t.strip() or t)} ({s:+.3f})' for t, s in top)}</p>"
            f"{_per_output_grid(attribution)}</div>")


def render_explanations(items: list[dict], title: str = "tuneloop explain") -> str:
    """``items``: {id, prompt, reference?, note?, panels: [(model title, attribution dict)]}."""
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>",
             "<p class=legend>Each prompt token is coloured by how much it raised "
             "<span style='background:rgba(215,48,39,.6)'>red</span> or lowered "
             "<span style='background:rgba(49,104,189,.6)'>blue</span> the log-probability of the answer "
             "(hover a token for its score, in nats). Only the last user message is perturbed; the system "
             "prompt and chat markers stay fixed.</p>"]
    for item in items:
        anchor = f"ex-{item['id']}"
        ref = f"<br>reference: <b>{_e(item['reference'])}</b>" if item.get("reference") else ""
        note = f"<br>{_e(item['note'])}" if item.get("note") else ""
        parts.append(f"<h2 id='{_e(anchor)}'>{_e(item['id'])}</h2><p class=meta>prompt: {_e(item['prompt'])}{ref}{note}</p>"
                     "<div class=pair>" + "".join(attribution_panel(t, a) for t, a in item["panels"]) + "</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


# ---- audit ------------------------------------------------------------------------------------

def _ci(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci and ci[0] == ci[0] else "n/a"


def _bar(value: float) -> str:
    return f"<span class=bar style='width:{max(0.0, min(1.0, value)) * 160:.0f}px'></span> {value:.3f}"


def _probe_section(probe: dict) -> str:
    verdict = ("<span class=flag>gap: CI excludes zero</span>" if probe["flagged"]
               else "<span class=ok>no gap beyond noise</span>")
    rows = "".join(f"<tr><td>{_e(g)}</td><td>{_bar(probe['quality'][g])}</td><td>{_ci(probe['quality_ci95'][g])}</td>"
                   f"<td>{probe['records_by_group'][g]}</td></tr>" for g in probe["groups"])
    shown = ""
    for ex in probe["examples"]:
        cells = "".join(f"<tr><td>{_e(g)}</td><td>{_e(v['prompt'])}</td><td>{_e(v['answer'])}</td>"
                        f"<td>{'yes' if v['correct'] else 'no'}</td></tr>" for g, v in ex["variants"].items())
        shown += f"<details><summary>{_e(ex['id'])}</summary><table><tr><th>variant</th><th>prompt</th><th>answer</th><th>right</th></tr>{cells}</table></details>"
    return (f"<h2>Probe: {_e(probe['probe'])}</h2><p>{verdict}. {probe['n_records']} of {probe['n_scanned']} records "
            f"mention a listed word; each was answered once per group ({', '.join(map(_e, probe['groups']))}).</p>"
            f"<table><tr><th>answers changed</th><td>{probe['change_rate']:.3f} {_ci(probe['change_rate_ci95'])}</td></tr>"
            f"<tr><th>bias gap ({_e(probe['gap_groups'][0])} &minus; {_e(probe['gap_groups'][1])})</th>"
            f"<td>{probe['bias_gap']:+.3f} {_ci(probe['bias_gap_ci95'])}</td></tr></table>"
            f"<table><tr><th>variant group</th><th>quality</th><th>95% CI</th><th>records originally in the group</th></tr>"
            f"{rows}</table>{shown}")


def _field_section(name: str, figures: dict) -> str:
    out = f"<h2>Field: {_e(name)}</h2>"
    if "quality" in figures:
        rows = "".join(f"<tr><td>{_e(g)}</td><td>{_bar(q)}</td><td>{_ci(figures['quality_ci95'][g])}</td>"
                       f"<td>{figures['counts'][g]}</td></tr>" for g, q in figures["quality"].items())
        out += (f"<p>quality gap ({_e(figures['gap_groups'][0])} &minus; {_e(figures['gap_groups'][1])}): "
                f"{figures['quality_gap']:+.3f} {_ci(figures['quality_gap_ci95'])}</p>"
                f"<table><tr><th>group</th><th>quality</th><th>95% CI</th><th>records</th></tr>{rows}</table>")
    if "demographic_parity_difference" in figures:
        out += (f"<table><tr><th>demographic parity difference</th><td>{figures['demographic_parity_difference']:.3f}"
                f" (label {_e(figures['demographic_parity_label'])})</td></tr><tr><th>equalized odds difference</th>"
                f"<td>{figures['equalized_odds_difference']:.3f} (label {_e(figures['equalized_odds_label'])})</td></tr></table>")
        if figures.get("is_intersection"):
            rows = "".join(f"<tr><td>{_e(g['group'])}</td><td>{_bar(g['accuracy'])}</td><td>{g['count']}</td></tr>"
                           for g in figures["groups"])
            out += f"<table><tr><th>intersection</th><th>accuracy</th><th>records</th></tr>{rows}</table>"
    return out


def render_audit(result: dict) -> str:
    gate = result.get("gate")
    gate_html = ""
    if gate:
        rows = "".join(f"<tr><td>{_e(d['rule'])}</td><td>{d['value']:.4g}</td>"
                       f"<td class={'ok' if d['passed'] else 'flag'}>{'pass' if d['passed'] else 'FAIL'}</td></tr>"
                       for d in gate["details"])
        gate_html = f"<h2>Gate</h2><table><tr><th>rule</th><th>value</th><th></th></tr>{rows}</table>"
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>tuneloop audit: {_e(result['model'])}</title>"
            f"<style>{CSS}</style></head><body><h1>Bias audit: {_e(result['model'])}</h1>"
            f"<p class=meta>{_e(result['task'])} on {result['n']} records of {_e(result['data'])}; greedy decoding; "
            f"95% bootstrap CIs ({result['settings']['bootstrap_resamples']} resamples, seed "
            f"{result['settings']['bootstrap_seed']}); {result['wall_s']:.0f} s</p>{gate_html}"
            + "".join(_probe_section(p) for p in result["probes"])
            + "".join(_field_section(n, f) for n, f in result["fields"].items())
            + "<h2>Notes</h2><p class=note>Quality: a variant's answer against its own swapped reference (facts "
            "when listed, the label for classification, else exact match). A gap whose CI excludes zero is a "
            "difference the data supports; one whose CI includes zero may still be real on more data. The word "
            "lists are in the package's explain/wordlists/ and meant to be edited.</p></body></html>\n")
