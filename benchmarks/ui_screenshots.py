"""Screenshots of every dashboard page for the README (``docs/ui/*.png``), in headless Chromium.

    python benchmarks/ui_screenshots.py [--model smollm2-135m-instruct]

Builds sample data (``tuneloop.dashboard.sample``: runs, one still training, an eval with a baseline,
stored requests with ratings, registry versions), serves ``--model`` with ``tuneloop serve``'s app
for the playground, mounts an annotation queue, and saves one PNG per page after the page's data
has appeared (the live run's curve drawn, the playground's answer streamed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, ensure_workdir  # noqa: E402

from tuneloop.annotate import create_app as annotate_app  # noqa: E402
from tuneloop.annotate import open_session  # noqa: E402
from tuneloop.dashboard import sample  # noqa: E402
from tuneloop.dashboard.app import DashboardSettings, create_app  # noqa: E402
from tuneloop.serve.app import build  # noqa: E402
from tuneloop.serve.runner import ServerThread  # noqa: E402
from tuneloop.serve.settings import ServeSettings  # noqa: E402

OUT = REPO / "docs" / "ui"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def shoot(base: str, labels_queue_done) -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 860})
        page.set_default_timeout(120_000)

        def save(name: str) -> None:
            OUT.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=OUT / f"{name}.png", full_page=False)
            saved.append(OUT / f"{name}.png")

        page.goto(base + "/runs")
        save("runs")
        page.goto(base + "/runs/run-0000")
        page.wait_for_function("Number(document.getElementById('loss-chart').dataset.points) > 0")
        save("run")
        page.goto(base + "/runs/compare?run=run-0000&run=run-0001&run=run-0002")
        page.wait_for_function("Number(document.getElementById('loss-chart').dataset.points) >= 360")
        save("compare")
        page.goto(base + "/evals/view?eval=0:evals/eval-0000/eval.json")
        save("eval")
        page.goto(base + "/serving")
        save("serving")
        page.goto(base + "/registry/support")
        save("registry")
        page.goto(base + "/playground")
        page.fill("#prompt", "My card was declined at checkout. What should I do?")
        page.uncheck("#side-by-side")
        page.click("#send")
        page.wait_for_function("document.querySelector('.answer-col').dataset.state === 'done'")
        save("playground")
        page.goto(base + "/tune")
        save("tune")
        page.click("#studies-table a")
        page.locator("svg#history").wait_for()
        save("study")
        page.goto(base + "/runs/new")
        save("new_run")
        page.goto(base + "/annotate")
        frame = page.frame_locator("#annotate-frame")
        frame.locator("#annotator").fill("ana")
        frame.locator("#annotator").press("Enter")
        frame.locator("#card").wait_for()
        save("annotate")
        browser.close()
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the model the playground talks to")
    args = parser.parse_args()
    root = ensure_workdir() / "ui_screenshots"
    shutil.rmtree(root, ignore_errors=True)
    site = sample.build_site(root, n_runs=12, n_requests=3000, n_evals=3, steps=180)
    sample.write_study(site["eval_dir"] / "tuning" / "support-tune")  # found under the --evals folder
    queue = root / "queue.jsonl"
    queue.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "q1", "text": "My card was declined at the shop", "label": "card"},
        {"id": "q2", "text": "I want my money back for order 17", "label": "refund"}]))
    session = open_session(queue, root / "labels.jsonl", ["card", "refund", "other"], None, 1, None)
    served = build([args.model], ServeSettings(db_url=site["db"]))
    try:
        with ServerThread(served.app) as model_server:
            settings = DashboardSettings(token="shots", runs_dir=site["runs"], eval_dirs=[site["eval_dir"]],
                                         db_url=site["db"], serve_url=model_server.url)
            with ServerThread(create_app(settings, {"/annotate/app": annotate_app(session)})) as ui:
                for path in shoot(ui.url, None):
                    print(path.relative_to(REPO))
    finally:
        served.close()


if __name__ == "__main__":
    main()
