"""Regenerate the README's benchmark section from ``benchmarks/results/*.json``.

Rewrites what lies between ``<!-- benchmarks -->`` and ``<!-- /benchmarks -->`` in README.md; every
figure there comes from a results file, and a benchmark not yet run shows as "not measured".

    python benchmarks/make_readme_table.py            # rewrite README.md
    python benchmarks/make_readme_table.py --print    # print the section instead
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
README = BENCH_DIR.parent / "README.md"
START, END = "<!-- benchmarks -->", "<!-- /benchmarks -->"
SIDE_LABELS = {
    "tuneloop": "tuneloop (packing, supervised-only head)",
    "trl_defaults": "TRL `SFTTrainer` defaults, bf16 on (a)",
    "trl_defaults_fp32": "TRL defaults with bf16 off (a_fp32)",
    "trl_packing": "TRL defaults + `packing=True`",
    "trl_best": "TRL best CPU settings (b)",
}


def load_results(directory: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(directory.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    return out


def fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def machine_line(result: dict) -> str:
    m, v = result.get("machine", {}), result.get("versions", {})
    flags = ", ".join(m.get("cpu_flags", [])) or "none of avx2/avx512/amx"
    return (f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores ({flags}; native bf16: "
            f"{'yes' if m.get('native_bf16') else 'no'}), {m.get('ram_gb', '?')} GB RAM; load average "
            f"{m.get('load_average', '?')} at {result.get('when_utc', '?')}; torch {v.get('torch')}, "
            f"transformers {v.get('transformers')}, peft {v.get('peft')}, trl {v.get('trl')}")


def train_section(train: dict) -> list[str]:
    summary, compare = train.get("summary", {}), train.get("comparisons", {})
    peaks, data = train.get("peaks", {}), train.get("data", {})
    before, after = peaks.get("before") or {}, peaks.get("after") or {}
    loads = [r["load_average_before"][0] for r in train.get("runs", []) if "load_average_before" in r]
    load_note = f" 1-minute load average before each run: {min(loads)}-{max(loads)}." if loads else ""
    partial = sorted({s["steps"] for s in summary.values() if s.get("partial_epoch")})
    extent = (f"{train.get('epochs')} epoch" if not partial else
              f"{train.get('epochs')} epoch, but runs marked n/a stopped after {'/'.join(map(str, partial))} "
              "optimizer steps, so their validation loss is not comparable")
    lines = [
        f"**LoRA SFT throughput** ({train.get('mode')} mode: {data.get('examples')} training chats, "
        f"{data.get('tokens'):,} tokens, mean {fmt(data.get('mean_len'))} tokens; embedded "
        f"SmolLM2-135M-Instruct, LoRA r16/alpha 32 all-linear, max length 512, 8 examples per step, "
        f"{extent}; sides run one after another in separate processes).",
        f"Machine: {machine_line(train)}.{load_note}",
        f"Matmul peak (2048^3, before / after the runs): fp32 {fmt(before.get('fp32_gflops'))} / "
        f"{fmt(after.get('fp32_gflops'))} GFLOP/s, bf16 {fmt(before.get('bf16_gflops'))} / "
        f"{fmt(after.get('bf16_gflops'))} GFLOP/s ({'native' if before.get('bf16_native') else 'emulated'}); "
        f"MFU is against the better, {fmt(peaks.get('used_gflops'))} GFLOP/s, at "
        f"{fmt(train.get('flops', {}).get('flops_per_token', 0) / 1e6, 0)} MFLOP per token "
        "(4N + attention, N = non-embedding parameters).",
        "",
        "| side | tokens/s | tuneloop speed-up | MFU | peak RSS (GB) | validation loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ours = summary.get("tuneloop", {}).get("tokens_per_s")
    for name, s in summary.items():
        ratio = f"{ours / s['tokens_per_s']:.2f}x" if ours and name != "tuneloop" else "-"
        loss = (f"{fmt(s['validation_loss'], 4)}" if not s.get("partial_epoch")
                else f"n/a ({s.get('steps')} steps only)")
        lines.append(f"| {SIDE_LABELS.get(name, name)} | {fmt(s['tokens_per_s'])} | {ratio} | "
                     f"{fmt(100 * s['mfu'])}% | {fmt(s['peak_rss_gb'], 2)} | {loss} |")
    lines.append("")
    for key, c in compare.items():
        loss = (f"validation loss {c['validation_loss_delta']:+.4f}" if c.get("loss_comparable")
                else "validation loss not compared (stopped before the end of the epoch)")
        label = SIDE_LABELS.get(c["baseline"], c["baseline"]).rsplit(" (", 1)[0]
        lines.append(f"- vs ({key}) {label}: **{c['speedup']}x** "
                     f"(goal {c['goal']}x), memory {c['memory_ratio']}x, {loss}: goal "
                     f"{'met' if c['met'] else 'not met'}.")
    return lines


def levers_section(levers: dict) -> list[str]:
    lines = [f"**Speed levers** (tuneloop, one change at a time from its defaults, {levers.get('steps')} "
             f"optimizer steps each; steady state = after the first two steps):", "",
             "| change | tokens/s | speed vs default | steady-state speed vs default | peak RSS (GB) |",
             "|---|---:|---:|---:|---:|"]
    for name, row in levers.get("levers", {}).items():
        if "error" in row:
            lines.append(f"| {row['change']} | failed: {row['error']} | | | |")
            continue
        lines.append(f"| {row['change']} | {fmt(row.get('tokens_per_s'))} | {fmt(row.get('speed_vs_default'), 2, 'x')}"
                     f" | {fmt(row.get('steady_speed_vs_default'), 2, 'x')} | {fmt(row.get('peak_rss_gb'), 2)} |")
    return lines


def other_section(results: dict) -> list[str]:
    rows = []
    prep = results.get("prepare")
    if prep:
        rows.append(("`data prepare` (synthetic support chats, dedup + PII on)",
                     f"{fmt(prep.get('records_per_s'), 0)} records/s ({fmt(prep.get('records'), 0)} records)"))
    ev = results.get("eval")
    if ev and "error" not in ev:
        rows.append(("`eval`, embedded model, Banking77 classification",
                     f"{fmt(ev.get('samples_per_s'), 2)} samples/s ({ev.get('n')} samples; "
                     f"{fmt(ev.get('samples_per_s_process'), 2)}/s including start-up and load)"))
    serve = results.get("serve")
    if serve:
        one, many = serve.get("one_at_a_time", {}), serve.get("concurrent", {})
        rows.append((f"`serve`, generated tokens/s: one request at a time / {many.get('clients', '?')} "
                     f"concurrent clients (greedy, {serve.get('max_tokens')} tokens each, server threads: "
                     f"{serve.get('server_threads', 'all')})",
                     f"{fmt(one.get('tokens_per_s'))} / {fmt(many.get('tokens_per_s'))} "
                     f"({fmt(serve.get('speedup'), 2)}x from batching)"))
    start = results.get("startup")
    if start:
        load = start.get("model_load", {})
        again = load.get("load_model_again_s")
        rows.append(("embedded model load from the local store: first `load_model` in a process (incl. "
                     "transformers' lazy modeling imports)"
                     + (" / again, weights only" if again is not None else "")
                     + " (whole fresh process incl. importing torch + transformers)",
                     f"{fmt(load.get('load_model_s'), 2)} s"
                     + (f" / {fmt(again, 2)} s" if again is not None else "")
                     + f" ({fmt(load.get('process_s'), 2)} s)"))
        rows.append(("`import tuneloop` / `tuneloop --help` (process wall time; bare Python "
                     f"{fmt(start.get('python_bare_s'), 2)} s)",
                     f"{fmt(start.get('import_tuneloop_s'), 2)} s / {fmt(start.get('help_s'), 2)} s"))
    est = results.get("estimate_vs_measured")
    if est and "estimate" in est and "measured" in est and "estimate_over_measured" in est:
        rows.append(("`models estimate` memory vs measured peak RSS (LoRA, seq 512, batch 8)",
                     f"{fmt(est['estimate']['total_gb'], 2)} GB vs {fmt(est['measured']['peak_rss_gb'], 2)} GB "
                     f"(ratio {est['estimate_over_measured']})"))
    if not rows:
        return []
    return ["**Other figures:**", "", "| what | measured |", "|---|---|",
            *[f"| {what} | {value} |" for what, value in rows]]


def learning_section(result: dict) -> list[str]:
    """The learning-quality comparison: same recipe, same steps, exact-label accuracy."""
    sides, base = result.get("sides", {}), result.get("base", {})
    if not all("scored" in sides.get(s, {}) for s in ("tuneloop", "trl")):
        return []
    data, recipe = result["data"], result["recipe"]
    lines = [f"**Learning quality** (`benchmarks/learning_quality.py`, {result['mode']} mode): Banking77 through "
             f"`data prepare --task classification`, {data['n_train']:,} training chats, {recipe['epochs']} epoch, "
             f"LoRA r{recipe['lora']['r']} all-linear, {recipe['batch_size']} examples per step, lr "
             f"{recipe['learning_rate']} {recipe['lr_scheduler']}, max length {recipe['max_seq_len']}; accuracy by "
             f"exact label (greedy answer == label) on the {data['n_test']:,} queries of the prepared test split.",
             machine_line(result), "",
             "| side | optimizer steps | examples/step | train wall s | peak RSS (GB) | final train loss | "
             "validation loss | test accuracy | answers that are no label |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| base model (untrained) | - | - | - | - | - | {fmt(base.get('validation_loss'), 4)} | "
             f"{fmt(100 * base.get('accuracy', 0), 1, '%')} | {base.get('no_label')} |"]
    for name, label in (("tuneloop", "tuneloop (defaults: padding-free packing)"), ("trl", "TRL `SFTTrainer` (defaults)")):
        r = sides[name]
        lines.append(f"| {label} | {r['steps']} | {r['examples_per_step']} | {fmt(r['train_s'], 0)} | "
                     f"{fmt(r['peak_rss_gb'], 2)} | {fmt(r['final_train_loss'], 3)} | "
                     f"{fmt(r['scored']['validation_loss'], 4)} | {fmt(100 * r['scored']['accuracy'], 1, '%')} | "
                     f"{r['scored']['no_label']} |")
    verdict = result.get("verdict")
    if verdict:
        lines += ["", f"- accuracy tuneloop - TRL: {100 * verdict['accuracy_tuneloop_minus_trl']:+.1f} points "
                      f"({'at least TRL' if verdict['accuracy_at_least_trl'] else 'below TRL'}); same optimizer steps: "
                      f"{'yes' if verdict['same_optimizer_steps'] else 'no'}; TRL's training wall time / tuneloop's: "
                      f"{verdict['wall_time_ratio_trl_over_tuneloop']}x; tuneloop's peak RSS / TRL's: "
                      f"{verdict['peak_rss_ratio_tuneloop_over_trl']}x."]
    return lines


def render(results: dict) -> str:
    parts = ["Figures are produced by the scripts in `benchmarks/` (`make bench` runs them in quick mode, "
             "`python benchmarks/run_all.py` in full) and copied here by `benchmarks/make_readme_table.py` "
             "from `benchmarks/results/*.json`, which also hold the exact settings of every side. "
             "GOALS.md's reference figures were taken on a different machine (AVX-512 + AMX): compare the "
             "ratios, not the absolute numbers."]
    if "train" in results:
        parts.append("\n".join(train_section(results["train"])))
    else:
        parts.append("Training throughput: not measured yet (`python benchmarks/bench_train.py --quick`).")
    for name in ("learning_quality", "learning_quality_fp32"):
        if name in results and learning_section(results[name]):
            parts.append("\n".join(learning_section(results[name])))
    if "levers" in results:
        parts.append("\n".join(levers_section(results["levers"])))
    other = other_section(results)
    if other:
        parts.append("\n".join(other))
    return "\n\n".join(parts)


def replace_section(text: str, body: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"README.md needs the markers {START} and {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the section, leave README.md alone")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    body = render(load_results(args.results))
    if args.print:
        print(body)
        return 0
    args.readme.write_text(replace_section(args.readme.read_text(), body))
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
