"""``report.html`` of an improve round: what came in, what was trained, what the gate saw and decided."""

from __future__ import annotations

import html
from pathlib import Path

from tuneloop.paths import write_text_atomic

_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.pass{color:#176f2c;font-weight:bold}.fail{color:#b3261e;font-weight:bold}"""


def _table(rows: list[tuple], header: tuple | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _num(value) -> str:
    return f"{value:+.3f}" if isinstance(value, float) else html.escape(str(value))


def write_round_report(path: Path, result: dict, heldout: dict, regression: dict | None) -> None:
    status = result["status"]
    verdict = "pass" if status == "promoted" else "fail"
    checks = [(html.escape(c["check"]), html.escape(c.get("rule", "")), html.escape(c["metric"]),
               _num(c.get("production", "")), _num(c.get("candidate", "")), _num(c.get("delta", "")),
               f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]" if "ci95" in c else "",
               f"<span class={'pass' if c['passed'] else 'fail'}>{'pass' if c['passed'] else 'FAIL'}</span>")
              for c in result["gate"]["checks"]]
    counts = [(html.escape(k.replace("_", " ")), html.escape(str(v))) for k, v in result["counts"].items()]
    evals = [(html.escape(name), html.escape(str(r["data"])), r["n"], f"<a href='{d}/report.html'>{d}/report.html</a>")
             for name, r, d in (("held-out feedback", heldout, "eval-heldout"),
                                ("regression set", regression, "eval-regression")) if r]
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>improve round: {html.escape(result['round_dir'])}</title>
<style>{_STYLE}</style></head><body>
<h1>Improve round: <span class="{verdict}">{html.escape(status)}</span></h1>
<p>Production was v{result['parent']}; candidate v{result['candidate']}; production is now v{result['production']}.
Trigger: {html.escape(result['trigger'])}. Took {result['seconds']:.0f} s.</p>
<h2>Gate (paired bootstrap, 95% CI of candidate - production)</h2>
{_table(checks, ("check", "rule", "metric", "production", "candidate", "delta", "95% CI", "result"))}
<h2>Data of the round</h2>{_table(counts)}
<p>Feedback went through <a href="prepared/report.html">data prepare</a> (validation, PII redaction, dedup, split).</p>
<h2>Evaluations</h2>{_table(evals, ("set", "file", "n", "report"))}
</body></html>"""
    write_text_atomic(path, text)
