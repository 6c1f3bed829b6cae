"""Every dashboard page in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium).

One browser and one set of servers per module: a tiny model served by the real OpenAI-compatible
server (its requests go to the same SQLite store the dashboard reads), the dashboard with the
annotation app mounted, sample runs, an eval and registry versions. The checks: data appears on each
page, a run's curve grows while metrics lines are appended, the promote button moves the alias (in
the registry tables and the audit log), the playground streams an answer and its rating is stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_train.helpers import tiny_recipe

from tuneloop.dashboard import sample

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
pytestmark = [pytest.mark.slow,  # a real browser and a served model
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium package")]
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    from tuneloop.annotate import create_app as annotate_app
    from tuneloop.annotate import open_session
    from tuneloop.dashboard.app import DashboardSettings, create_app
    from tuneloop.serve.app import build
    from tuneloop.serve.runner import ServerThread
    from tuneloop.serve.settings import ServeSettings

    root = tmp_path_factory.mktemp("dash")
    runs, data = root / "runs", root / "prepared"
    sample.write_data_report(data)
    sample.write_run(runs, "alpha", 60, data_dir=data)
    sample.write_run(runs, "beta", 40, seed=1)
    sample.write_run(runs, "live", 5, finished=False)
    sample.write_eval(root / "eval", str(runs / "alpha"), "smollm2-135m-instruct")
    db = f"sqlite:///{root}/serve.db"
    sample.fill_store(db, 200)
    sample.fill_registry(db, "support", [runs / "alpha", runs / "beta"])
    queue = root / "queue.jsonl"
    queue.write_text(json.dumps({"id": "q1", "text": "My card was declined", "label": "card"}) + "\n")
    session = open_session(queue, root / "labels.jsonl", ["card", "refund"], None, 1, None)
    served = build([str(tiny_model_dir)], ServeSettings(db_url=db, threads=1))
    try:
        with ServerThread(served.app) as model_server:
            settings = DashboardSettings(token="t", runs_dir=runs, eval_dirs=[root], db_url=db,
                                         serve_url=model_server.url, poll_ms=250)
            with ServerThread(create_app(settings, {"/annotate/app": annotate_app(session)})) as ui:
                yield {"url": ui.url, "runs": runs, "db": db, "labels": root / "labels.jsonl", "root": root}
    finally:
        served.close()


@pytest.fixture(scope="module")
def page(site, tmp_path_factory):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(20_000)
        yield page
        browser.close()


def test_runs_list_and_a_live_runs_curve_grows(site, page):
    page.goto(site["url"] + "/runs")
    rows = page.locator("#runs-table tbody tr")
    assert rows.count() == 3
    assert "running" in page.locator("#runs-table").inner_text()
    page.click("text=live")
    chart = page.locator("#loss-chart")
    page.wait_for_function("document.getElementById('loss-chart').dataset.points === '5'")
    with (site["runs"] / "live" / "metrics.jsonl").open("a") as f:  # the trainer writes three more steps
        f.write("".join(sample.metrics_line(s) for s in range(6, 9)))
    page.wait_for_function("document.getElementById('loss-chart').dataset.points === '8'")
    assert chart.locator("polyline").first.get_attribute("data-count") == "8"
    assert page.locator("#run-status").inner_text() == "running"

    page.goto(site["url"] + "/runs/alpha")
    page.wait_for_function("document.getElementById('loss-chart').dataset.points === '60'")
    text = page.locator("main").inner_text()
    assert "final_loss" in text and "step-60" in text and "near_duplicates" in text  # summary, checkpoint, data
    assert page.locator("#loss-chart polyline").count() == 2  # loss and validation loss
    page.goto(site["url"] + "/runs/compare?run=alpha&run=beta")
    page.wait_for_function("document.getElementById('loss-chart').dataset.points === '100'")


def test_evals_page_shows_metrics_and_the_baseline_comparison(site, page):
    page.goto(site["url"] + "/evals")
    assert "accuracy 0.82" in page.locator("#evals-table").inner_text()
    page.click("#evals-table a")
    table = page.locator("#eval-metrics").inner_text()
    assert "0.82" in table and "0.61" in table and "0.21" in table  # model, baseline, delta
    assert page.locator("#eval-metrics .up").count() == 2  # accuracy and f1: CI above 0
    assert "gate PASSED" in page.locator("main").inner_text()


def test_serving_page_shows_store_statistics(site, page):
    page.goto(site["url"] + "/serving")
    stats = page.locator("#serving-stats").inner_text()
    assert "base" in stats and "support" in stats
    assert page.locator("#recent-requests tbody tr").count() == 50
    assert int(page.locator("#hourly").get_attribute("data-buckets")) >= 15
    page.click("a[rel=next]")
    assert "page 2 of" in page.locator(".pager").inner_text()


def test_promote_button_moves_the_alias(site, page):
    from tuneloop.registry.store import Registry
    from tuneloop.serve.access import audit_entries
    from tuneloop.serve.store import Store

    page.goto(site["url"] + "/registry")
    page.click("#registry-models a")
    assert page.locator("#alias-summary").inner_text() == "candidate -> v2, production -> v1"
    page.fill("#promote input[name=version]", "7")  # no such version: refused, field named
    page.once("dialog", lambda d: d.accept())
    page.click("#promote-button")
    assert "version: support has no version 7" in page.locator('p.error[data-field="version"]').inner_text()
    page.fill("#promote input[name=version]", "2")
    page.once("dialog", lambda d: d.accept())
    page.click("#promote-button")
    page.wait_for_selector(".notice")
    assert page.locator("#alias-summary").inner_text() == "archived -> v1, production -> v2"
    registry = Registry(site["db"])
    assert registry.aliases("support") == {"production": 2, "archived": 1}
    assert registry.events("support")[-2]["actor"] == "ui:local"
    moves = [e for e in audit_entries(Store(site["db"]).engine) if e["action"] == "registry.promote"]
    assert moves[-1]["detail"] == {"name": "support", "alias": "production", "from": 1, "to": 2}


def test_playground_streams_an_answer_and_stores_its_rating(site, page):
    from sqlalchemy import select

    from tuneloop.serve.store import Store, feedback_table, requests_table

    page.goto(site["url"] + "/playground")
    page.fill("#prompt", "Hello there")
    page.fill("#max_tokens", "lots")
    page.click("#send")
    error = page.wait_for_selector('p.error[data-field="max_tokens"]:not([hidden])')
    assert error.inner_text().startswith("max_tokens: ")
    page.fill("#max_tokens", "12")
    page.click("#send")
    column = page.locator('.answer-col[data-col="0"]')
    page.wait_for_function("document.querySelector('.answer-col').dataset.state === 'done'")
    assert len(page.locator("#answer0").inner_text()) > 0
    assert int(column.get_attribute("data-chunks")) > 1  # arrived as several events, not one reply
    completion_id = column.get_attribute("data-completion-id")
    column.locator("button[data-rating='1']").click()
    page.wait_for_function("document.querySelector('.answer-col .rated').textContent.includes('rated')")
    engine = Store(site["db"]).engine
    with engine.connect() as conn:
        assert conn.execute(select(requests_table.c.stream).where(requests_table.c.id == completion_id)).scalar() == 1
        assert conn.execute(select(feedback_table.c.rating)
                            .where(feedback_table.c.completion_id == completion_id)).scalar() == 1


def test_annotation_page_embeds_the_queue(site, page):
    page.goto(site["url"] + "/annotate")
    frame = page.frame_locator("#annotate-frame")
    frame.locator("#annotator").fill("ana")
    frame.locator("#annotator").press("Enter")
    frame.locator("#card[data-record-id='q1']").wait_for()
    frame.locator("#accept").click()
    frame.locator("#done").wait_for(state="visible")
    assert json.loads(site["labels"].read_text().splitlines()[0])["value"] == "card"


def test_tuning_study_page_lists_trials_and_draws_history_and_parallel_coordinates(site, page):
    import optuna

    out = site["root"] / "tune-demo"
    out.mkdir()
    study = optuna.create_study(study_name="demo", storage=f"sqlite:///{out / 'study.db'}", direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    values = [5.0, 3.0, 4.0, 1.5, 2.0]  # best so far: 5, 3, 3, 1.5, 1.5
    for v in values:
        study.enqueue_trial({"lr": v / 1000, "rank": int(v * 2)})
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) * 1000 + 0 * t.suggest_int("rank", 1, 16),
                   n_trials=len(values))
    page.goto(site["url"] + "/tune")
    listing = page.locator("#studies-table").inner_text()
    assert "demo" in listing and "1.5" in listing
    page.click("#studies-table a")
    assert page.locator("#trials-table tbody tr").count() == 5
    trials = page.locator("#trials-table").inner_text()
    assert "lr" in trials and "rank" in trials and "complete" in trials
    history = page.locator("svg#history")
    assert history.get_attribute("data-trials") == "5" and float(history.get_attribute("data-best")) == pytest.approx(1.5)
    assert history.locator("circle.trial").count() == 5
    best_line = history.locator("polyline.best")
    ys = [float(p.split(",")[1]) for p in best_line.get_attribute("points").split()]
    assert ys[1] == ys[2] and ys[3] == ys[4] and ys[0] < ys[1] < ys[3]  # flat, then lower objective = lower on page
    assert page.locator("svg#parallel").get_attribute("data-axes") == "3"  # lr, rank, objective
    assert page.locator("svg#parallel polyline.trial-line").count() == 5
    study.enqueue_trial({"lr": 0.0009, "rank": 2})  # a study still running: the next view shows its new best
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) * 1000 + 0 * t.suggest_int("rank", 1, 16),
                   n_trials=1)
    page.reload()
    assert page.locator("#trials-table tbody tr").count() == 6
    assert float(page.locator("svg#history").get_attribute("data-best")) == pytest.approx(0.9)
    page.goto(site["url"] + "/tune/view?study=0:nope/study.db:demo")
    assert "study: no study" in page.locator("main").inner_text()


def test_a_run_started_from_a_recipe_trains_and_its_curve_grows(site, page, tiny_model_dir, tmp_path):
    import yaml

    from tuneloop.serve.access import audit_entries
    from tuneloop.serve.store import Store

    bad = tiny_recipe(tiny_model_dir, tmp_path, name="from-ui-bad", learning_rate="fast")
    page.goto(site["url"] + "/runs")
    page.click("#new-run")
    page.fill("#recipe_yaml", yaml.safe_dump(bad))
    page.click("#start-run")
    error = page.locator('p.error[data-field="recipe_yaml"]').inner_text()
    assert "train.learning_rate" in error and "fast" in error
    assert not (site["runs"] / "from-ui-bad").exists()  # nothing started

    recipe = tmp_path / "from-ui.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, tmp_path / "elsewhere", name="from-ui", epochs=4)))
    page.fill("#recipe_yaml", "")
    page.fill("#recipe_path", str(recipe))
    page.click("#start-run")
    page.wait_for_url("**/runs/from-ui")
    # Every value the chart's point count takes while the run trains, as the page sees it.
    page.evaluate("""() => { const svg = document.getElementById('loss-chart'); window.seen = [svg.dataset.points];
        new MutationObserver(() => { if (window.seen.at(-1) !== svg.dataset.points) window.seen.push(svg.dataset.points); })
          .observe(svg, {attributes: true, attributeFilter: ['data-points']}); }""")
    page.wait_for_function("document.getElementById('run-status').textContent === 'finished'", timeout=300_000)
    run_dir = site["runs"] / "from-ui"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = len([p for p in logged if isinstance(p.get("loss"), (int, float))])
    assert steps == json.loads((run_dir / "summary.json").read_text())["steps"] > 8
    page.wait_for_function(f"document.getElementById('loss-chart').dataset.points === '{steps}'")
    seen = [int(n) for n in page.evaluate("window.seen")]
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == steps  # it grew while training
    started = [e for e in audit_entries(Store(site["db"]).engine) if e["action"] == "run.start"]
    assert [e["detail"]["name"] for e in started] == ["from-ui"] and started[0]["actor"] == "ui:local"
    assert not (tmp_path / "elsewhere").exists()  # the run went under the dashboard's runs folder


def test_eval_page_shows_base_and_tuned_answers_per_sample_and_filters_the_changed_ones(site, page):
    verdicts = {"s1": (False, True), "s2": (True, False), "s3": (True, True), "s4": (False, False),
                "s5": (False, True), "s6": (True, True)}  # (base correct, tuned correct)
    folder = site["root"] / "eval"
    tuned = [{"id": i, "prompt": f"question {i}", "reference": f"answer {i}", "prediction": f"tuned says {i}",
              "correct": t} for i, (b, t) in verdicts.items()]
    base = [{"id": i, "prompt": f"question {i}", "reference": f"answer {i}", "prediction": f"base says {i}",
             "correct": b} for i, (b, t) in reversed(verdicts.items())]  # another order: matched by id
    for name, rows in [("predictions.jsonl", tuned), ("predictions.baseline.jsonl", base)]:
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    page.goto(site["url"] + "/evals")
    page.click("#evals-table a")
    table = page.locator("#sample-diffs tbody tr")
    assert table.count() == 6
    s2 = page.locator("#sample-diffs tbody tr", has_text="question s2").inner_text()
    assert "base says s2" in s2 and "tuned says s2" in s2 and "answer s2" in s2 and "broken" in s2
    assert s2.index("base says s2\ncorrect") < s2.index("tuned says s2\nincorrect")
    page.click("#sample-filters a[data-show=changed]")
    ids = page.locator("#sample-diffs tbody tr td:first-child").all_inner_texts()
    assert ids == ["s1", "s2", "s5"]
    page.click("#sample-filters a[data-show=fixed]")
    assert page.locator("#sample-diffs tbody tr td:first-child").all_inner_texts() == ["s1", "s5"]
    page.click("#sample-filters a[data-show=broken]")
    assert page.locator("#sample-diffs tbody tr td:first-child").all_inner_texts() == ["s2"]
    assert "broken (1)" in page.locator("#sample-filters").inner_text()
