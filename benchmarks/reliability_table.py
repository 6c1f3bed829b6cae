"""The README's reliability table, from the results JSON of fuzz.py, soak.py, faults.py and the
Schemathesis test (``benchmarks/results/schemathesis.json``, written by tests/test_serve_schema.py).

    .venv/bin/python benchmarks/reliability_table.py     # prints Markdown rows; "not run" where a file is missing
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def rows() -> list[str]:
    out = ["| check | inputs / duration | outcome |", "|---|---|---|"]
    fuzz = _load("fuzz")
    if fuzz:
        for t in fuzz["targets"]:
            crashes = "; ".join(c[0] for c in t["crashes"]) or "no crash"
            out.append(f"| fuzz `{t['target']}` ({fuzz['engine']}) | {t['examples']} inputs in {t['seconds']} s | {crashes} |")
    else:
        out.append("| fuzzing (benchmarks/fuzz.py) | not run | |")
    schema = _load("schemathesis")
    out.append(f"| Schemathesis on /openapi.json (tiny model) | {schema['cases']} cases over {schema['operations']} "
               f"operations | {schema['failures']} failures |" if schema else "| Schemathesis | not run | |")
    soak = _load("soak")
    if soak:
        rows_ = soak["rows"]
        out.append(f"| soak: {soak['clients']} clients, {soak['seconds_run'] / 60:.1f} min ({soak['label']}) | "
                   f"{rows_['requests_sent']} requests, {rows_['feedback_sent']} feedback | p95 last/first minute "
                   f"{soak['p95_last_over_first_full_minute']}; RSS growth after warm-up {soak['rss_mb']['growth_after_warmup']} MB; "
                   f"rows accounted for: {rows_['all_accounted_for']} |")
    else:
        out.append("| soak (benchmarks/soak.py) | not run | |")
    faults = _load("faults")
    if faults:
        for c in faults["cases"]:
            out.append(f"| fault: `{c['command']}`, {c['fault']} | exit {c.get('exit')} | "
                       f"{'clear error' if c.get('clear_error') else 'NOT a clear error'}; earlier outputs "
                       f"{'intact' if c.get('earlier_outputs_intact') else 'NOT intact'} |")
    else:
        out.append("| faults (benchmarks/faults.py) | not run | |")
    return out


if __name__ == "__main__":
    print("\n".join(rows()))
