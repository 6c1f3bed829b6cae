"""report.html for ``data prepare``: one self-contained page (inline CSS and SVG, works offline).

It shows the record accounting, splits, PII counts, a token-length histogram, label bars per split
and the issues table, all from the same dict as report.json (:func:`render_html`).
"""

from __future__ import annotations

from html import escape

MAX_ISSUE_ROWS = 1000  # the page stays light; report.json has every issue
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#070}.bad{color:#a00}
svg text{font-size:11px;font-family:system-ui,sans-serif}.note{color:#666}"""


def _table(rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _cell(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="n">{value:,}</td>'
    return f"<td>{escape(str(value))}</td>"


def _bar_chart(items: list[tuple[str, int]], width: int = 760, bar: int = 16) -> str:
    """Horizontal bars, one per (name, value)."""
    if not items:
        return '<p class="note">nothing to show</p>'
    label_w, top = 300, max(v for _, v in items) or 1
    height = bar * len(items) + 4
    parts = [f'<svg width="{width}" height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">']
    for i, (name, value) in enumerate(items):
        y = i * bar + 2
        w = (width - label_w - 60) * value / top
        parts.append(f'<text x="{label_w - 6}" y="{y + bar - 5}" text-anchor="end">{escape(str(name)[:48])}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar - 3}" fill="#4a7bd0"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 5}">{value:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(tokens: dict) -> str:
    bins = tokens.get("histogram") or []
    items = [(f"{b['from']}-{b['to'] - 1}" if b["to"] else f"{b['from']}+", b["count"]) for b in bins]
    return _bar_chart(items)


def _labels(labels: dict) -> str:
    if not labels:
        return '<p class="note">no labels (not a classification dataset)</p>'
    names = sorted({name for per_split in labels.values() for name in per_split})
    rows = [[name] + [labels[s].get(name, 0) for s in labels] for name in names]
    totals = sorted(((n, sum(labels[s].get(n, 0) for s in labels)) for n in names), key=lambda x: -x[1])
    return _bar_chart(totals) + _table(rows, ["label", *labels])


def render_html(report: dict) -> str:
    counts = report["counts"]
    identity = counts["input"] == sum(counts[k] for k in
                                      ("invalid", "exact_duplicates", "near_duplicates", "filtered", "output"))
    tokens = report["tokens"]
    issues = report["issues"]
    token_rows = [[k, v] for k, v in tokens.items() if k not in ("histogram",)]
    pii_rows = [[k, v] for k, v in report["pii"].items() if k != "enabled"]
    issue_rows = [[i["source"], i["kind"], i["message"]] for i in issues[:MAX_ISSUE_ROWS]]
    more = (f'<p class="note">{len(issues) - MAX_ISSUE_ROWS:,} more in report.json</p>'
            if len(issues) > MAX_ISSUE_ROWS else "")
    estimate_note = ('<p class="bad">Token counts are estimates: ' + escape(tokens["tokenizer"]) + "</p>"
                     if tokens.get("estimated") else "")
    sections = [
        f"<h1>Data preparation report</h1><p>task <b>{escape(report['task'])}</b>; inputs: "
        f"{escape(', '.join(report['inputs']))}; {report['seconds']} s</p>",
        "<h2>Records</h2>" + _table([[k, v] for k, v in counts.items()]),
        f'<p class="{"ok" if identity else "bad"}">input = invalid + exact_duplicates + near_duplicates + '
        f'filtered + output: {"holds" if identity else "DOES NOT HOLD"}</p>',
        "<h2>Splits</h2>" + _table([[k, v] for k, v in report["splits"].items()]),
        "<h2>Record shapes</h2>" + _table([[k, v] for k, v in report["shapes"].items()]),
        "<h2>Token lengths</h2>" + estimate_note + _histogram(tokens) + _table(token_rows),
        "<h2>Labels</h2>" + _labels(report["labels"]),
        "<h2>PII redacted</h2>" + (_table(pii_rows, ["type", "count"]) if report["pii"].get("enabled")
                                   else '<p class="note">PII redaction was off (--no-pii)</p>'),
        "<h2>Near-duplicates</h2>" + _table([[k, str(v)] for k, v in report["near_duplicates"].items()]),
        f"<h2>Issues ({len(issues):,})</h2>" + _table(issue_rows, ["source", "kind", "message"]) + more,
        "<h2>Settings</h2>" + _table([[k, str(v)] for k, v in report["settings"].items()]),
    ]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>tuneloop data report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n")
