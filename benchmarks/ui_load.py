"""How long the dashboard's pages take with 1,000 runs and 100,000 stored requests (goal: < 1 s each).

    python benchmarks/ui_load.py [--runs 1000] [--requests 100000] [--evals 200] [--trials 500] [--repeats 5]

Builds the data with ``tuneloop.dashboard.sample`` (run directories as training writes them, rows
in the serving store's real tables, registry versions), serves the dashboard on a loopback port and
measures each page two ways: the HTTP response over a real socket (the first view after the server
started, with cold caches, then median and max of ``--repeats`` more) and, in headless Chromium
(Debian's, through Playwright), the time from
navigation to the ``load`` event (and, for run pages, until the loss curve is drawn). The playground
is measured without a model server (its page then says none answers). Writes
``benchmarks/results/ui_load.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_workdir, write_result  # noqa: E402

from tuneloop.dashboard import sample  # noqa: E402
from tuneloop.dashboard.app import DashboardSettings, create_app  # noqa: E402
from tuneloop.serve.runner import ServerThread  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
GOAL_MS = 1000


def pages(n_runs: int, n_requests: int) -> list[str]:
    last_page = -(-n_runs // 50)
    return ["/runs", f"/runs?page={last_page}", "/runs?q=run-09", "/runs/run-0000", f"/runs/run-{n_runs - 1:04d}",
            "/api/runs/run-0000/metrics", "/runs/compare?run=run-0000&run=run-0001&run=run-0002",
            "/evals", "/evals/view?eval=0:evals/eval-0000/eval.json", "/serving", f"/serving?page={max(1, n_requests // 100)}",
            "/serving?since=7d&model=support", "/registry", "/registry/support", "/playground", "/annotate",
            "/tune", "/runs/new"]


def http_times(base: str, paths: list[str], repeats: int) -> dict:
    out = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for path in tqdm(paths, desc="http"):
            started = time.perf_counter()  # the first view after start (cold caches), and a check it renders
            assert client.get(path).status_code == 200, path
            first_ms = (time.perf_counter() - started) * 1000
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, path
            out[path] = {"first_ms": round(first_ms, 1), "median_ms": round(statistics.median(times), 1),
                         "max_ms": round(max(times), 1),
                         "bytes": len(response.content)}
    return out


def browser_times(base: str, paths: list[str]) -> dict:
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        for path in tqdm([p for p in paths if not p.startswith("/api/")], desc="browser"):
            page.goto(base + path)  # warm-up: scripts and styles cached as a user's second visit
            started = time.perf_counter()
            page.goto(base + path, wait_until="load")
            row = {"load_ms": round((time.perf_counter() - started) * 1000, 1)}
            if path.startswith("/runs/") and path != "/runs/new":
                page.wait_for_function("Number(document.getElementById('loss-chart').dataset.points) > 0")
                row["curve_drawn_ms"] = round((time.perf_counter() - started) * 1000, 1)
            elif path.startswith("/tune/view"):
                page.locator("svg#history").wait_for()
                row["curve_drawn_ms"] = round((time.perf_counter() - started) * 1000, 1)
            out[path] = row
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--evals", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=500, help="trials of the tuning study shown on /tune")
    args = parser.parse_args()
    root = ensure_workdir() / "ui_load"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    with tqdm(total=args.runs, desc="runs") as bar:
        site = sample.build_site(root, args.runs, args.requests, args.evals, steps=200, progress=bar.update)
    sample.write_study(site["eval_dir"] / "tuning" / "support-tune", n_trials=args.trials)
    build_s = time.perf_counter() - started
    settings = DashboardSettings(token="bench", runs_dir=site["runs"], eval_dirs=[site["eval_dir"]],
                                 db_url=site["db"], serve_url="http://127.0.0.1:9")
    paths = pages(args.runs, args.requests)
    # the study's key as the tuning page links it (folder 1 = the evaluations folder), built here
    # rather than looked up, so that the first views below also pay for opening the study
    paths.append("/tune/view?" + urlencode({"study": "1:tuning/support-tune/study.db:support-tune"}))
    with ServerThread(create_app(settings)) as server:
        http = http_times(server.url, paths, args.repeats)
        browser = browser_times(server.url, paths) if Path(CHROMIUM).exists() else {}
    worst_http = max(max(v["max_ms"], v["first_ms"]) for v in http.values())
    worst_browser = max((v.get("curve_drawn_ms", v["load_ms"]) for v in browser.values()), default=None)
    path = write_result("ui_load", {
        "data": {"runs": args.runs, "metrics_lines_per_run": 200, "stored_requests": args.requests,
                 "study_trials": args.trials,
                 "evals": args.evals, "build_s": round(build_s, 1)},
        "goal_ms": GOAL_MS, "http": http, "browser": browser,
        "worst_http_ms": worst_http, "worst_browser_ms": worst_browser,
        "met": worst_http < GOAL_MS and (worst_browser is None or worst_browser < GOAL_MS)})
    print(f"worst HTTP {worst_http:.0f} ms, worst browser {worst_browser} ms -> {path}")
    for p, v in http.items():
        print(f"  {p:58s} first {v['first_ms']:6.1f} median {v['median_ms']:6.1f} max {v['max_ms']:6.1f} ms"
              f" {browser.get(p, {})}")


if __name__ == "__main__":
    main()
