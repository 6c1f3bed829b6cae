"""What a study leaves behind: the best recipe as plain YAML, ``trials.json`` and ``report.html``.

The HTML holds Optuna's own plots (optimization history, parameter importance, parallel
coordinates, intermediate values) with plotly.js embedded once, inline, so the file opens offline;
and ``history.png`` (matplotlib), embedded too, for viewers without JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from tuneloop.config.recipe import Recipe
from tuneloop.paths import write_json_atomic, write_text_atomic
from tuneloop.tune.space import base_dict, decode_params, set_path


def trial_rows(study, search) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "params": decode_params(t.params, search),
                     "outcome": t.user_attrs.get("outcome", t.state.name.lower()),
                     "steps": t.user_attrs.get("steps"), "seconds": duration,
                     "run_dir": t.user_attrs.get("run_dir"),
                     "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}})
    return rows


def best_trial(study):
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(done, key=lambda t: t.value) if done else None


def best_recipe_yaml(recipe: Recipe, params: dict) -> str:
    """The base recipe with the best trial's values, as a plain recipe (no search: section)."""
    import yaml

    raw = base_dict(recipe)
    for path, value in params.items():
        set_path(raw, path, value)
    raw["name"] = f"{recipe.name}-best"
    raw["output_dir"] = None
    return yaml.safe_dump(raw, sort_keys=False)


def write_outputs(study, recipe: Recipe, out_dir: Path, budget_minutes: float | None = None) -> dict:
    """best_recipe.yaml, trials.json, report.html (+ history.png); returns the summary."""
    out_dir = Path(out_dir)
    rows = trial_rows(study, recipe.search)
    best = best_trial(study)
    summary = {"study": study.study_name, "sampler": recipe.search.sampler, "pruner": recipe.search.pruner,
               "trials": len(rows), "counts": _counts(rows),
               "best": None if best is None else {"number": best.number, "value": best.value,
                                                  "params": decode_params(best.params, recipe.search),
                                                  "run_dir": best.user_attrs.get("run_dir")},
               "budget_minutes": budget_minutes, "rows": rows}
    if best is not None:
        write_text_atomic(out_dir / "best_recipe.yaml", best_recipe_yaml(recipe, summary["best"]["params"]))
    write_json_atomic(out_dir / "trials.json", summary)
    png = history_png(rows)
    (out_dir / "history.png").write_bytes(png)
    write_text_atomic(out_dir / "report.html", render_html(study, summary, png))
    return summary


def _counts(rows: list[dict]) -> dict:
    counts = {"complete": 0, "pruned": 0, "skipped": 0, "failed": 0, "running": 0}
    for r in rows:
        if r["outcome"].startswith("skipped"):
            counts["skipped"] += 1
        elif r["state"] in ("COMPLETE", "PRUNED", "RUNNING"):
            counts[r["state"].lower()] += 1
        elif r["state"] == "FAIL":
            counts["failed"] += 1
    return counts


def history_png(rows: list[dict]) -> bytes:
    """Each trial's validation-loss curve (pruned ones dashed) and the best value so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, history) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        if r["intermediate"]:
            steps = [int(s) for s in r["intermediate"]]
            curves.plot(steps, list(r["intermediate"].values()), "x--" if r["state"] == "PRUNED" else ".-",
                        alpha=0.7, label=f"#{r['number']}")
    curves.set(title="validation loss per trial (x, dashed: pruned)", xlabel="step", ylabel="validation loss")
    done = [(r["number"], r["value"]) for r in rows if r["state"] == "COMPLETE"]
    pruned = [(r["number"], r["value"]) for r in rows if r["state"] == "PRUNED" and r["value"] is not None]
    if pruned:  # Optuna gives a pruned trial its last reported value
        history.scatter(*zip(*pruned), marker="x", color="C7", label="pruned (last value)")
    if done:
        history.scatter(*zip(*done), label="complete")
        best, running = [], float("inf")
        for _, v in done:
            running = min(running, v)
            best.append(running)
        history.step([n for n, _ in done], best, where="post", color="C3", label="best so far")
        history.legend()
    history.set(title="optimization history", xlabel="trial", ylabel="best validation loss")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def optuna_plots(study) -> list[tuple[str, str]]:
    """(title, HTML div or a note) per Optuna plot; plotly.js inline in the first that renders."""
    import optuna.visualization as vis

    plots = [("Optimization history", vis.plot_optimization_history),
             ("Parameter importance", vis.plot_param_importances),
             ("Parallel coordinates", vis.plot_parallel_coordinate),
             ("Validation loss per trial (intermediate values)", vis.plot_intermediate_values)]
    out, js_done = [], False
    for title, plot in plots:
        try:
            figure = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. importance needs 2+ trials
            out.append((title, f"<p class=note>not available: {html.escape(str(e))}</p>"))
            continue
        out.append((title, figure.to_html(full_html=False, include_plotlyjs=not js_done)))
        js_done = True
    return out


def _number(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def render_html(study, summary: dict, png: bytes) -> str:
    best = summary["best"]
    best_html = ("<p>No trial has completed yet.</p>" if best is None else
                 f"<p>Best: trial #{best['number']}, validation loss <b>{best['value']:.4f}</b>, "
                 f"run <code>{html.escape(str(best['run_dir']))}</code>; recipe in "
                 f"<code>best_recipe.yaml</code>.</p><pre>{html.escape(json.dumps(best['params'], indent=2))}</pre>")
    rows = "".join(
        f"<tr><td>{r['number']}</td><td>{r['state']}</td><td>{_number(r['value'], '.4f')}"
        f"</td><td>{html.escape(r['outcome'])}</td><td>{r['steps'] or ''}</td>"
        f"<td>{_number(r['seconds'], '.0f')}</td>"
        f"<td><code>{html.escape(json.dumps(r['params']))}</code></td>"
        f"<td><code>{html.escape(str(r['run_dir'] or ''))}</code></td></tr>" for r in summary["rows"])
    counts = ", ".join(f"{v} {k}" for k, v in summary["counts"].items() if v)
    plots = "".join(f"<h2>{html.escape(t)}</h2>{body}" for t, body in optuna_plots(study))
    image = base64.b64encode(png).decode()
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tuneloop tune: {html.escape(summary['study'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:left}}.note{{color:#777}}</style></head><body>
<h1>Study <code>{html.escape(summary['study'])}</code></h1>
<p>Sampler {summary['sampler']}, pruner {summary['pruner']}; {summary['trials']} trials ({counts}).
Objective: the lowest validation loss a trial's run reached (lower is better).</p>
{best_html}
<h2>Trials</h2><table><tr><th>#</th><th>state</th><th>validation loss</th><th>outcome (reason)</th>
<th>steps</th><th>seconds</th><th>parameters</th><th>run directory</th></tr>{rows}</table>
<h2>Curves (matplotlib)</h2><img alt="validation loss per trial and best so far" src="data:image/png;base64,{image}">
{plots}
</body></html>"""
