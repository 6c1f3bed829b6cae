"""The loop act (``tuneloop quickstart --loop``'s second act) timed on its own, from a given production model.

    python benchmarks/loop_act.py                          # production = the embedded base model
    python benchmarks/loop_act.py --production quickstart-out/runs/brightcart-support
    python benchmarks/loop_act.py --production ... --improve '{"steps": 60, "repeat": 8}' --out results/x.json

Writes ``benchmarks/results/loop_act.json``: the act's summary (answers before and after the round,
the gate, satisfaction before and after, outcomes of requests sent during the switch) and the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from tuneloop.quickstart.loop_act import run_loop_act  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "loop_act.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--production", default=None, help="run dir or model [default: the embedded base model]")
    parser.add_argument("--improve", default=None, help="ImproveSettings fields as JSON [default: the act's own]")
    parser.add_argument("--repeats", type=int, default=1, help="times users ask each return-window phrasing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, default=None, help="keep the act's directory here (round, evals)")
    args = parser.parse_args()
    from tuneloop.improve import ImproveSettings
    from tuneloop.models.loading import resolve_model

    production = args.production or str(resolve_model("smollm2-135m-instruct").path)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        improve = ImproveSettings(name="brightcart", **json.loads(args.improve)) if args.improve else None
        summary = run_loop_act(Path(tmp) / "loop", production, improve=improve, repeats=args.repeats)
    summary["production_model"] = args.production or "smollm2-135m-instruct (base)"
    summary["machine"] = machine()
    summary["improve_settings"] = json.loads(args.improve) if args.improve else "the act's defaults"
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps({k: summary[k] for k in ("answers_new_fact_before", "answers_new_fact_after",
                                              "satisfaction_before", "satisfaction_after",
                                              "requests_during_switch", "seconds")} | {"gate": summary["round"]["gate"]}, default=str))


if __name__ == "__main__":
    main()
