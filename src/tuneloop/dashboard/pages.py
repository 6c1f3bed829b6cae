"""The dashboard's pages, rendered from the readers in ``runs``, ``evals``, ``serving`` and the registry.

Each function takes what it shows and returns :class:`Html`; ``app.py`` fetches the data and handles
the requests. Charts that grow (a run's loss) are drawn by ``static/dashboard.js`` from the JSON API;
charts of stored figures (serving per hour) are drawn here as inline SVG.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from urllib.parse import quote, urlencode

from tuneloop.dashboard.evals import HEADLINE, SHOW, SamplePair, comparison_rows, side_by_side
from tuneloop.dashboard.html import Html, esc, field_error, join, join_with, layout, link, number, pager, table, tag
from tuneloop.dashboard.runs import RunPage
from tuneloop.dashboard.serving import WINDOWS
from tuneloop.dashboard.studies import StudyEntry, Trial, history_svg, parallel_svg



def _when(value) -> str:
    if isinstance(value, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "-" if value is None else str(value)


# -- runs -----------------------------------------------------------------------------------------
def runs_page(listing: RunPage, query: str, root) -> Html:
    rows = []
    for run in listing.runs:
        s = run.summary
        rows.append([tag("input", type="checkbox", name="run", value=run.name, form="compare"),
                     link(f"/runs/{quote(run.name)}", run.name),
                     tag("span", run.status, class_=f"status {run.status}"), s.get("method") or "-",
                     s.get("model") or "-", number(s.get("steps")), number(s.get("final_loss")),
                     number(s.get("validation_loss")), number(s.get("wall_seconds"), 3), _when(run.modified)])
    search = Html(f'<form class="inline" method="get" action="/runs"><input name="q" value="{esc(query)}" '
                  'placeholder="name contains"><button>Filter</button></form>'
                  '<form id="compare" class="inline" method="get" action="/runs/compare">'
                  '<button>Compare selected</button></form>')
    return layout("Runs", "runs", [
        tag("p", [f"{listing.total:,} runs under {root} (", link("/runs/new", "start a run", id="new-run"), ")"],
            class_="meta"), search,
        table(["", "run", "status", "method", "model", "steps", "loss", "validation loss", "wall s", "updated"],
              rows, id="runs-table"),
        pager("/runs", listing.page, listing.pages, q=query)])


def _chart(runs: list[str], live: bool, poll_ms: int) -> Html:
    return tag("div", [tag("svg", "", class_="chart", id="loss-chart", viewBox="0 0 720 300",
                           data_runs=json.dumps(runs), data_live="1" if live else "0", data_poll_ms=poll_ms,
                           data_points="0"),
                       tag("p", "", class_="legend", id="chart-legend")], class_="chart-box")


def run_page(name: str, status: str, summary: dict, recipe: str | None, ckpts: list[str], samples: list[dict],
             report_path: str | None, report: dict, evals: list, poll_ms: int) -> Html:
    facts = [[k, number(v) if not isinstance(v, (dict, list)) else json.dumps(v)] for k, v in summary.items()]
    parts = [tag("p", ["status: ", tag("span", status, class_=f"status {status}", id="run-status")], class_="meta"),
             _chart([name], status != "finished", poll_ms), tag("h2", "Summary"),
             table(["field", "value"], facts) if facts else tag("p", "no summary.json yet (the run is training "
                                                                      "or stopped before the end)")]
    if evals:
        parts += [tag("h2", "Evaluations of this run"),
                  tag("ul", [tag("li", link(f"/evals/view?{urlencode({'eval': e.key})}", e.key)) for e in evals])]
    parts += [tag("h2", "Recipe (recipe.resolved.yaml)"), tag("pre", recipe or "-")]
    parts += [tag("h2", "Checkpoints"), tag("p", ", ".join(ckpts) or "none")]
    if report:
        counts = report.get("counts") or {}
        parts += [tag("h2", "Training data report"), tag("p", report_path, class_="meta"),
                  table(list(counts), [[number(v) for v in counts.values()]])]
    if samples:
        parts += [tag("h2", "Samples during training"),
                  table(["step", "prompt", "output"],
                        [[number(s.get("step")), str(s.get("prompt", ""))[:300],
                          str(s.get("output", s.get("completion", "")))[:500]] for s in samples])]
    return layout(f"Run {name}", "runs", parts)


def new_run_page(root, errors: dict | None = None, form: dict | None = None) -> Html:
    errors, form = errors or {}, form or {}
    return layout("Start a run", "runs", [
        tag("p", f"validates the recipe, then runs `tuneloop train RECIPE --out {root}/NAME` in the background; "
                 "a pasted recipe's relative paths are read from that run folder", class_="meta"),
        Html('<form id="new-run-form" method="post" action="/runs/new">'
             f'<label class="wide">recipe path <input name="recipe_path" id="recipe_path" size="60" '
             f'value="{esc(form.get("recipe_path", ""))}" placeholder="recipes/lora.yaml"></label>'
             f'{field_error(errors, "recipe_path")}'
             '<label class="wide">or paste a recipe (YAML)<textarea name="recipe_yaml" id="recipe_yaml" rows="14">'
             f'{esc(form.get("recipe_yaml", ""))}</textarea></label>{field_error(errors, "recipe_yaml")}'
             '<button id="start-run">Start training</button></form>')])


def compare_page(names: list[str], summaries: list[dict], poll_ms: int, live: bool) -> Html:
    fields = list(dict.fromkeys(k for s in summaries for k, v in s.items() if not isinstance(v, (dict, list))))
    rows = [[f, *[number(s.get(f)) for s in summaries]] for f in fields]
    return layout("Compare runs", "runs", [_chart(names, live, poll_ms), table(["field", *names], rows)])


# -- evaluations ------------------------------------------------------------------------------------
def evals_page(entries: list, reports: list[dict], page: int, pages: int, total: int) -> Html:
    rows = []
    for entry, report in zip(entries, reports):
        metrics = report.get("metrics") or {}
        shown = [f"{m} {number(metrics[m])}" for m in HEADLINE if isinstance(metrics.get(m), (int, float))][:3]
        gate = report.get("gate")
        rows.append([tag("input", type="checkbox", name="eval", value=entry.key, form="compare"),
                     link(f"/evals/view?{urlencode({'eval': entry.key})}", entry.key), report.get("model", "-"),
                     report.get("task", "-"), number(report.get("n")), ", ".join(shown) or "-",
                     "yes" if report.get("baseline") else "no",
                     "-" if not gate else ("passed" if gate.get("passed") else "failed"), _when(entry.modified)])
    return layout("Evaluations", "evals", [
        tag("p", f"{total:,} eval.json reports", class_="meta"),
        Html('<form id="compare" class="inline" method="get" action="/evals/compare">'
             '<button>Compare selected</button></form>'),
        table(["", "report", "model", "task", "n", "headline", "baseline", "gate", "written"], rows, id="evals-table"),
        pager("/evals", page, pages)])


def _ci(ci) -> str:
    return "-" if not ci else f"[{number(ci[0])}, {number(ci[1])}]"


def eval_page(key: str, report: dict, diffs: Html | None = None) -> Html:
    rows = comparison_rows(report)
    base = report.get("baseline") or {}
    gate = report.get("gate")
    parts = [tag("p", [f"model {report.get('model', '-')} on {report.get('data', '-')} (n = {report.get('n', '-')})",
                       Html("<br>"), f"baseline: {base.get('model', 'none')}"], class_="meta")]
    if gate:
        parts.append(tag("p", f"gate {'PASSED' if gate.get('passed') else 'FAILED'}: {gate.get('rule', '')}",
                         class_="gate " + ("passed" if gate.get("passed") else "failed")))
    parts.append(table(["metric", "model", "baseline", "delta", "95% CI of delta"],
                       [[r["metric"], number(r["model"]), number(r["baseline"]),
                         tag("span", number(r["delta"]), class_=_significance(r)), _ci(r["ci95"])] for r in rows],
                       id="eval-metrics"))
    confusion = report.get("confusion") or {}
    if confusion.get("top_confused"):
        parts += [tag("h2", "Most confused labels"),
                  table(["true label", "predicted as", "count"],
                        [[p.get("true"), p.get("predicted"), number(p.get("count"))] for p in confusion["top_confused"]])]
    slices = report.get("slices") or {}
    if slices.get("groups"):
        metric_names = sorted({m for g in slices["groups"].values() for m in g if m != "n"})[:6]
        parts += [tag("h2", f"Slices by {slices.get('field', '?')}"),
                  table(["group", "n", *metric_names],
                        [[g, number(v.get("n")), *[number(v.get(m)) for m in metric_names]]
                         for g, v in slices["groups"].items()])]
    if diffs:
        parts.append(diffs)
    parts.append(tag("p", link(f"/evals/report?{urlencode({'eval': key})}", "full report.html (per-sample diffs, "
                                                                          "charts, explanations)")))
    return layout(f"Evaluation {key}", "evals", parts)


def _verdict(correct: bool) -> Html:
    return tag("span", "correct" if correct else "incorrect", class_="up" if correct else "down")


def sample_diffs(key: str, pairs: list[SamplePair], shown: list[SamplePair], show: str, page: int,
                 pages: int, per_page: int) -> Html:
    """Base vs tuned answers side by side, filterable to the samples whose verdict changed."""
    counts = {"fixed": sum(p.change == "fixed" for p in pairs), "broken": sum(p.change == "broken" for p in pairs)}
    counts["changed"], counts["all"] = counts["fixed"] + counts["broken"], len(pairs)
    filters = [link(f"/evals/view?{urlencode({'eval': key, 'show': name})}#samples", f"{name} ({counts[name]})",
                    class_="active" if name == show else None, data_show=name) for name in SHOW]
    rows = [[p.id, p.prompt[:400], p.reference[:300],
             tag("div", [p.base[:500], Html("<br>"), _verdict(p.base_correct)]),
             tag("div", [p.tuned[:500], Html("<br>"), _verdict(p.tuned_correct)]),
             tag("span", p.change, class_=f"change {p.change}")]
            for p in shown[(page - 1) * per_page: page * per_page]]
    return join([tag("h2", "Samples: base vs tuned", id="samples"),
                 tag("p", ["show: ", join_with(filters, " | ")], class_="meta", id="sample-filters"),
                 table(["id", "prompt", "reference", "base answer", "tuned answer", "change"], rows, id="sample-diffs"),
                 pager("/evals/view", page, pages, eval=key, show=show if show != "all" else "")])


def _significance(row) -> str | None:
    ci = row.get("ci95")
    if not ci or ci[0] is None:
        return None
    return "up" if ci[0] > 0 else "down" if ci[1] < 0 else None


def evals_compare_page(keys: list[str], reports: list[dict]) -> Html:
    rows = [[name, *[number(v) for v in values]] for name, values in side_by_side(reports)]
    models = [[k, r.get("model", "-")] for k, r in zip(keys, reports)]
    return layout("Compare evaluations", "evals", [table(["report", "model"], models),
                                                   table(["metric", *keys], rows, id="eval-compare")])


# -- tuning studies ----------------------------------------------------------------------------------
def studies_page(entries: list[StudyEntry], roots) -> Html:
    rows = [[link(f"/tune/view?{urlencode({'study': e.key})}", e.name), e.path.parent, e.direction,
             number(e.n_trials), number(e.best_value),
             ", ".join(f"{k}={number(v)}" for k, v in e.best_params.items()) or "-"] for e in entries]
    body = table(["study", "folder", "direction", "trials", "best", "best parameters"], rows, id="studies-table") \
        if rows else tag("p", "no study.db found (tuneloop tune RECIPE --trials N writes OUT/study.db)",
                         id="studies-none")
    return layout("Tuning studies", "tune", [
        tag("p", f"{len(entries)} studies in study.db files under {', '.join(map(str, roots))}", class_="meta"), body])


def study_page(entry: StudyEntry, trials: list[Trial]) -> Html:
    names = sorted({p for t in trials for p in t.params})
    rows = [[number(t.number), tag("span", t.state.lower(), class_=f"state {t.state.lower()}"), number(t.value),
             *[number(t.params.get(n)) for n in names], t.run_dir or "-"] for t in trials]
    return layout(f"Study {entry.name}", "tune", [
        tag("p", f"{entry.path} ({entry.direction}; best {number(entry.best_value)})", class_="meta"),
        tag("h2", "Optimisation history"), history_svg(trials, entry.direction),
        tag("h2", "Parallel coordinates"), parallel_svg(trials),
        tag("h2", "Trials"), table(["trial", "state", "objective", *names, "run"], rows, id="trials-table")])


# -- serving ------------------------------------------------------------------------------------------
def serving_page(since: str, model: str, stats: list[dict], series: list[dict], recent: list[dict], page: int,
                 pages: int, total: int, store_url: str) -> Html:
    windows = [link(f"/serving?{urlencode({'since': w, 'model': model} if model else {'since': w})}", w,
                    class_="active" if w == since else None) for w in WINDOWS]
    stat_rows = [[link(f"/serving?{urlencode({'since': since, 'model': s['model'] or ''})}", s["model"] or "-"),
                  number(s["requests"]), number(s["errors"]), f"{s['error_rate']:.1%}",
                  number(s["latency_ms_p50"], 4), number(s["latency_ms_p95"], 4), number(s["completion_tokens"]),
                  number(s["ratings"]), "-" if s["satisfaction"] is None else f"{s['satisfaction']:.0%}"]
                 for s in stats]
    recent_rows = [[_when(r["created"]), r["model"] or "-", r["kind"], number(r["status"]),
                    number(r["latency_ms"], 4), (r["response"] or r["error"] or "")[:120],
                    {1: "up", -1: "down"}.get(r["rating"], "-" if r["score"] is None else f"{r['score']}/5"),
                    r["comment"] or ""] for r in recent]
    return layout("Serving", "serving", [
        tag("p", [f"store: {store_url}; window: ", join_with(windows, " | "), f"; model: {model or 'all'}"],
            class_="meta"),
        table(["model", "requests", "errors", "error rate", "p50 ms", "p95 ms", "tokens out", "ratings",
               "satisfaction"], stat_rows, id="serving-stats"),
        tag("h2", "Per hour"), bar_svg(series),
        tag("h2", f"Recent requests ({total:,} in the window)"),
        table(["when", "model", "kind", "status", "latency ms", "answer / error", "rating", "comment"],
              recent_rows, id="recent-requests"),
        pager("/serving", page, pages, since=since, model=model)])


def bar_svg(series: list[dict], width: int = 720, height: int = 160) -> Html:
    """Requests per hour as bars (errors in red) and satisfaction as dots, as inline SVG."""
    if not series:
        return tag("p", "no requests in this window")
    top = max(s["requests"] for s in series) or 1
    step = width / len(series)
    shapes = []
    for i, s in enumerate(series):
        h = (height - 20) * s["requests"] / top
        e = (height - 20) * s["errors"] / top
        x = i * step
        shapes.append(f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{max(step - 1, 1):.1f}" height="{h:.1f}" '
                      f'class="bar"><title>{esc(s["start"])}: {s["requests"]} requests, {s["errors"]} errors</title></rect>')
        if e:
            shapes.append(f'<rect x="{x:.1f}" y="{height - e:.1f}" width="{max(step - 1, 1):.1f}" height="{e:.1f}" class="err"/>')
        if s.get("ratings"):
            y = 10 + (height - 20) * (1 - s["positive"] / s["ratings"])
            shapes.append(f'<circle cx="{x + step / 2:.1f}" cy="{y:.1f}" r="3" class="sat"/>')
    return Html(f'<svg class="bars" id="hourly" viewBox="0 0 {width} {height}" data-buckets="{len(series)}">'
                f'{"".join(shapes)}</svg><p class="legend">{esc(series[0]["start"][:13])}h to '
                f'{esc(series[-1]["start"][:13])}h UTC. Bars: requests per hour (red: errors); '
                f'dots: share of positive ratings (top = 100%). Peak {top:,} requests in an hour.</p>')


# -- registry --------------------------------------------------------------------------------------------
def registry_index(models: list[tuple[str, dict, int]]) -> Html:
    rows = [[link(f"/registry/{quote(name)}", name), number(count),
             ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "-"] for name, aliases, count in models]
    return layout("Registry", "registry", [table(["model", "versions", "aliases"], rows, id="registry-models")
                                           if rows else tag("p", "no models registered yet "
                                                                 "(`tuneloop registry register NAME RUN_DIR`)")])


def registry_model(name: str, versions, aliases: dict, events: list[dict], rounds: list[dict],
                   errors: dict | None = None, form: dict | None = None, notice: str = "") -> Html:
    errors, form = errors or {}, form or {}
    version_rows = [[f"v{v.version}", tag("span", ", ".join(v.aliases) or "-", class_="aliases",
                                          data_version=v.version),
                     v.path, v.base_model or "-", "-" if v.parent_version is None else f"v{v.parent_version}",
                     v.source or "-", _eval_headline(v.eval), _when(v.created)] for v in versions]
    event_rows = [[_when(e["created"]), e["action"], e["alias"] or "-",
                   "-" if e["from_version"] is None else f"v{e['from_version']}",
                   "-" if e["to_version"] is None else f"v{e['to_version']}", e["actor"], e["reason"] or ""]
                  for e in reversed(events[-50:])]
    round_rows = [[_when(r["created"]), r["status"], "-" if r["version"] is None else f"v{r['version']}",
                   json.dumps(r["gate"])[:200] if r["gate"] else "-"] for r in reversed(rounds[-20:])]
    alias_text = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
    parts = [tag("p", notice, class_="notice", role="status") if notice else Html(""),
             tag("p", ["aliases: ", tag("span", alias_text, id="alias-summary")], class_="meta"),
             table(["version", "aliases", "path", "base", "parent", "source", "eval", "registered"], version_rows,
                   id="versions"),
             promote_form(name, errors, form), tag("h2", "History"),
             table(["when", "action", "alias", "from", "to", "by", "why"], event_rows, id="events")]
    if round_rows:
        parts += [tag("h2", "improve rounds"), table(["when", "status", "candidate", "gate"], round_rows)]
    return layout(f"Registry: {name}", "registry", parts)


def _eval_headline(result) -> str:
    metrics = (result or {}).get("metrics") if isinstance(result, dict) else None
    if not isinstance(metrics, dict):
        return "-"
    shown = [f"{m} {number(metrics[m])}" for m in HEADLINE if isinstance(metrics.get(m), (int, float))][:2]
    return ", ".join(shown) or "-"


def promote_form(name: str, errors: dict, form: dict) -> Html:
    q = quote(name)
    return Html(
        f'<h2>Move an alias</h2><form id="promote" method="post" action="/registry/{q}/promote" '
        f'data-confirm="Move the alias of {esc(name)}? Servers following it switch to the new version.">'
        f'<label>version <input name="version" value="{esc(form.get("version", ""))}" size="6" placeholder="3"></label>'
        f'{field_error(errors, "version")}'
        f'<label>alias <input name="alias" value="{esc(form.get("alias", "production"))}" size="12"></label>'
        f'{field_error(errors, "alias")}'
        f'<label>reason <input name="reason" value="{esc(form.get("reason", ""))}" size="30"></label>'
        f'{field_error(errors, "reason")}'
        f'<input type="hidden" name="confirm" value="">{field_error(errors, "confirm")}'
        f'<button id="promote-button">Promote</button></form>'
        f'<form id="rollback" method="post" action="/registry/{q}/rollback" '
        f'data-confirm="Roll the alias of {esc(name)} back to its previous version?">'
        f'<label>alias <input name="alias" value="production" size="12"></label>'
        f'<input type="hidden" name="confirm" value="">'
        f'<button id="rollback-button">Roll back</button></form>')


# -- playground and annotation ------------------------------------------------------------------------------
def playground_page(models: list[str], serve_url: str, problem: str | None) -> Html:
    if problem:
        return layout("Playground", "playground", [tag("p", problem, class_="error", id="serve-problem")])
    options = join(tag("option", m, value=m) for m in models)

    def column(index: int) -> Html:
        return Html(f'<section class="answer-col" data-col="{index}"><label>model <select name="model{index}" '
                    f'id="model{index}">{options}</select></label>{field_error({}, "model")}'
                    f'<div class="answer" id="answer{index}" aria-live="polite"></div>'
                    f'<div class="rate" hidden><button data-rating="1">thumbs up</button>'
                    f'<button data-rating="-1">thumbs down</button><span class="rated"></span></div></section>')

    return layout("Playground", "playground", [
        tag("p", f"answers stream from {serve_url} (OpenAI-compatible /v1/chat/completions, stream: true); "
                 "ratings go to its /v1/feedback and so to the serving store", class_="meta"),
        Html('<form id="playground"><label class="wide">prompt<textarea name="prompt" id="prompt" rows="3">'
             '</textarea></label><p class="error" data-field="prompt" hidden></p>'
             '<label>max_tokens <input name="max_tokens" id="max_tokens" value="64" size="5"></label>'
             '<p class="error" data-field="max_tokens" hidden></p>'
             '<label>temperature <input name="temperature" id="temperature" value="0" size="4"></label>'
             '<p class="error" data-field="temperature" hidden></p>'
             '<label><input type="checkbox" id="side-by-side"' + (' checked' if len(models) > 1 else '') +
             '> side by side</label> <button id="send">Send</button>'
             '<p class="error" data-field="model" hidden></p></form>'),
        tag("div", [column(0), column(1)], class_="columns")])


def annotate_page(mounted: bool, url: str | None) -> Html:
    if mounted or url:
        src = "/annotate/app/" if mounted else url
        return layout("Annotation", "annotate", [
            tag("p", ["the annotation queue (", link(src, "open on its own"), ")"], class_="meta"),
            tag("iframe", "", src=src, id="annotate-frame", title="annotation")])
    return layout("Annotation", "annotate", [tag("p", (
        "No annotation queue is attached. Start the dashboard with one: "
        "tuneloop ui --annotate QUEUE.jsonl --annotate-out labels.jsonl --labels a,b,c "
        "(or --annotate-url URL of a running `tuneloop annotate`)."), id="annotate-none")])


def error_page(status: int, message: str, field: str | None, active: str = "") -> Html:
    text = f"{field}: {message}" if field and not message.startswith(f"{field}:") else message
    return layout(f"Error {status}", active, [tag("p", text, class_="error", data_field=field or "", role="alert")])
