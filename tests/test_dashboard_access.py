"""``tuneloop ui``'s guard and readers, over real sockets and a real SQLite store (no browser).

From a non-loopback address every route answers 401 without the token: the dashboard listens on
0.0.0.0 and the test connects through this machine's own non-loopback address, so the server sees a
real non-loopback client (and, for machines without one, with an empty trusted set over loopback).
"""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import psutil
import pytest
from starlette.routing import Mount

from tuneloop.dashboard import sample, serving
from tuneloop.dashboard.app import DashboardSettings, create_app
from tuneloop.dashboard.runs import read_metrics
from tuneloop.monitor.report import summarize
from tuneloop.serve.access import add_key, audit_entries
from tuneloop.serve.runner import ServerThread
from tuneloop.serve.store import RequestRow, Store

TOKEN = "test-token-123"


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash-access")
    runs = root / "runs"
    sample.write_run(runs, "alpha", 20)
    sample.write_run(runs, "beta", 10)
    sample.write_eval(root / "eval", str(runs / "alpha"), "base")
    db = f"sqlite:///{root}/serve.db"
    sample.fill_store(db, 400)
    sample.fill_registry(db, "support", [runs / "alpha", runs / "beta"])
    return root, runs, db


def _settings(site, **extra) -> DashboardSettings:
    root, runs, db = site
    return DashboardSettings(token=TOKEN, runs_dir=runs, eval_dirs=[root], db_url=db,
                             serve_url="http://127.0.0.1:9", **extra)


def _every_route(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app, path parameters filled in."""
    out = [("GET", "/"), ("GET", "/no-such-page"), ("GET", "/annotate/app/api/config")]
    for route in app.app.routes:
        path = re.sub(r"\{[^}]+\}", "alpha", route.path)
        if isinstance(route, Mount):
            out.append(("GET", path + "/"))
            continue
        out += [(m, path) for m in sorted(route.methods - {"HEAD"})]
    return out


def _assert_all_401(base: str, routes, headers=None) -> None:
    with httpx.Client(base_url=base, headers=headers or {}) as client:
        for method, path in routes:
            response = client.request(method, path, data={"version": "2", "alias": "production", "confirm": "yes"}
                                      if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.status_code)


def test_every_route_answers_401_from_a_non_loopback_address_without_the_token(site):
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address (the next test covers the check)")
    app = create_app(_settings(site))
    routes = _every_route(app)
    assert len(routes) > 15
    with ServerThread(app, host="0.0.0.0") as server:
        base = f"http://{address}:{server.port}"
        _assert_all_401(base, routes)
        some = [("GET", "/runs"), ("GET", "/api/runs/alpha/metrics"), ("POST", "/registry/support/promote")]
        _assert_all_401(base, some, {"Authorization": "Bearer wrong-token"})
        infer_key = add_key(Store(site[2]).engine, "reader", ["infer"])
        _assert_all_401(base, some, {"Authorization": f"Bearer {infer_key}"})  # not an admin key
        assert httpx.get(f"{base}/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        admin_key = add_key(Store(site[2]).engine, "ops", ["admin"])
        deadline = time.monotonic() + 10  # the key ring re-reads stored keys every 2 s
        while httpx.get(f"{base}/runs", headers={"Authorization": f"Bearer {admin_key}"}).status_code != 200:
            assert time.monotonic() < deadline, "a stored admin key was not accepted"
            time.sleep(0.2)
        with httpx.Client(base_url=base) as browser:  # ?token= once, then the cookie it set
            assert browser.get("/runs", params={"token": TOKEN}).status_code == 200
            assert browser.get("/registry").status_code == 200
        loopback = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{loopback}/runs").status_code == 200  # this machine's own browser needs no token


def test_an_empty_trusted_set_makes_loopback_need_the_token_and_foreign_hosts_are_refused(site):
    app = create_app(_settings(site, trusted_networks=()))
    with ServerThread(app) as server:
        _assert_all_401(server.url, _every_route(app))
    with ServerThread(create_app(_settings(site))) as server:
        # a page that rebinds its DNS name to 127.0.0.1 sends its own Host: refused
        assert httpx.get(f"{server.url}/runs", headers={"Host": "evil.example"}).status_code == 401
        # a form posted from another site: refused before it reaches the registry
        response = httpx.post(f"{server.url}/registry/support/promote", headers={"Origin": "http://evil.example"},
                              data={"version": "2", "alias": "production", "confirm": "yes"})
        assert response.status_code == 403


def test_forms_and_parameters_reject_bad_input_naming_the_field(site):
    root, runs, db = site
    with ServerThread(create_app(_settings(site))) as server, httpx.Client(base_url=server.url) as client:
        for form, field in [({"version": "abc", "alias": "production", "confirm": "yes"}, "version"),
                            ({"version": "9", "alias": "production", "confirm": "yes"}, "version"),
                            ({"version": "2", "alias": "Bad Alias!", "confirm": "yes"}, "alias"),
                            ({"version": "2", "alias": "production"}, "confirm")]:
            response = client.post("/registry/support/promote", data=form)
            assert response.status_code == 422
            assert f'data-field="{field}"' in response.text and f"{field}: " in response.text
        for path, field in [("/runs?page=0", "page"), ("/runs?page=x", "page"), ("/serving?since=2y", "since"),
                            ("/evals/view?eval=../../etc/passwd", "eval"), ("/evals/view?eval=0:eval/eval.json&show=x", "show"), ("/api/runs/alpha/metrics?offset=-1", "offset")]:
            response = client.get(path)
            assert response.status_code == 400, path
            assert field in response.text
        assert client.get("/runs/..%2F..%2Fetc").status_code in (400, 404)
        response = client.post("/api/feedback", json={"completion_id": "x", "rating": 5})
        assert response.status_code == 422 and response.json()["field"] == "rating"
    from tuneloop.registry.store import Registry

    assert Registry(db).aliases("support")["production"] == 1  # nothing moved
    assert not [e for e in audit_entries(Store(db).engine) if e["action"].startswith("registry.")]


def test_metrics_are_read_incrementally_and_a_half_written_line_waits(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + '{"step": 2, "lo')
    points, offset = read_metrics(tmp_path, 0)
    assert points == [{"step": 1, "loss": 2.0}] and offset == len(json.dumps({"step": 1, "loss": 2.0})) + 1
    with path.open("a") as f:
        f.write('ss": 1.5, "validation_loss": 1.7}\n')
    points, offset2 = read_metrics(tmp_path, offset)
    assert points == [{"step": 2, "loss": 1.5, "validation_loss": 1.7}] and offset2 == path.stat().st_size
    assert read_metrics(tmp_path, offset2) == ([], offset2)


def test_sql_serving_stats_equal_monitors_python_figures(site):
    db = site[2]
    store = Store(db)
    start = serving.window_start(serving.parse_window("24h"))
    expected = {s.model: s for s in summarize(store.requests(since=start), store.feedback(since=start))}
    sums = serving.HourlySums(store.engine)
    first = sums.window(start)
    assert sums.window(start) == first  # the second view adds the cached ended hours to fresh reads
    got = serving.model_stats(store.engine, first, start)
    assert {s["model"] for s in got} == set(expected) == {"base", "support"}
    for row in got:
        want = expected[row["model"]]
        assert (row["requests"], row["errors"], row["ratings"], row["positive"]) == \
               (want.requests, want.errors, want.ratings, want.positive)
        assert row["latency_ms_p50"] == pytest.approx(want.latency_ms_p50, rel=1e-12)
        assert row["latency_ms_p95"] == pytest.approx(want.latency_ms_p95, rel=1e-12)
    hours = serving.hourly(first)
    assert sum(h["requests"] for h in hours) == 400 and sum(h["ratings"] for h in hours) == \
           sum(s.ratings for s in expected.values())
    rows = serving.recent_requests(store.engine, start, page=2, per_page=50)
    assert serving.window_total(first) == 400 and len(rows) == 50
    assert serving.window_total(first, "base") == expected["base"].requests
    store.record_request(RequestRow("chatcmpl-new", "base", "chat", 10.0, 200))
    assert serving.window_total(sums.window(start)) == 401  # the current hour is read again on each view
    assert all(a["created"] >= b["created"] for a, b in zip(rows, rows[1:]))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 21])
def test_percentiles_read_from_either_end_of_the_index_equal_monitors(tmp_path, n):
    from datetime import datetime, timedelta, timezone

    from tuneloop.monitor.report import percentile
    from sqlalchemy import insert

    from tuneloop.database.engine import utcnow
    from tuneloop.serve.store import RequestRow, requests_table

    store = Store(f"sqlite:///{tmp_path}/s.db")
    values = [[2.0, 2.0, 5.0, 1.0, 9.5, 3.25][i % 6] + (i // 6) for i in range(n)]  # ties included
    rows = [RequestRow(f"c{i}", "m", "chat", v, 200) for i, v in enumerate(values)]
    rows.append(RequestRow("bad", "m", "chat", 1e6, 500))  # errors do not count
    with store.engine.begin() as conn:
        conn.execute(insert(requests_table), [{**r.__dict__, "created": utcnow(), "stream": 0} for r in rows])
    start = datetime.now(timezone.utc) - timedelta(hours=2)
    [row] = serving.model_stats(store.engine, serving.HourlySums(store.engine).window(start), start)
    assert row["latency_ms_p50"] == pytest.approx(percentile(values, 50), abs=1e-12)
    assert row["latency_ms_p95"] == pytest.approx(percentile(values, 95), abs=1e-12)


@pytest.mark.slow  # a real `tuneloop ui` process
def test_the_ui_command_serves_and_prints_the_token_and_refuses_bad_options(site, tmp_path, capsys):
    import subprocess
    import sys

    root, runs, db = site
    cmd = [sys.executable, "-m", "tuneloop.cli.main", "ui", "--port", "0", "--runs", str(runs), "--db", db,
           "--evals", str(root)]
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**__import__("os").environ,
                                                                             "TUNELOOP_UI_TOKEN": "cli-token"})
    try:
        first = process.stderr.readline()
        address = re.search(r"dashboard at (http://\S+/)", first).group(1)
        assert process.stderr.readline().strip().endswith(f"{address}?token=cli-token")
        assert "alpha" in httpx.get(address + "runs", timeout=30).text
    finally:
        process.terminate()
        process.wait(30)
    from tuneloop.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main([*cmd[3:], "--annotate", str(tmp_path / "q.jsonl")])
    assert exit_info.value.code == 1 and "--annotate-out" in capsys.readouterr().err


def test_starting_a_run_is_refused_without_the_token_from_afar_and_from_another_site(site, tmp_path):
    root, runs, db = site
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: from-afar\nmodel: /nowhere\nmethod: lora\ndata: {train: /nowhere.jsonl}\n")
    form = {"recipe_path": str(recipe)}
    with ServerThread(create_app(_settings(site, trusted_networks=()))) as server:
        assert httpx.post(f"{server.url}/runs/new", data=form).status_code == 401
    with ServerThread(create_app(_settings(site))) as server:
        response = httpx.post(f"{server.url}/runs/new", headers={"Origin": "http://evil.example"}, data=form)
        assert response.status_code == 403
        response = httpx.post(f"{server.url}/runs/new", data={"recipe_path": str(tmp_path / "missing.yaml")})
        assert response.status_code == 422 and 'data-field="recipe_path"' in response.text
        assert "recipe file not found" in response.text
        response = httpx.post(f"{server.url}/runs/new", data={"recipe_yaml": "name: x\nmethod: lora\n"})
        assert response.status_code == 422 and "recipe_yaml: pasted recipe: data: Field required" in response.text
    assert not (runs / "from-afar").exists() and not (runs / "x").exists()
    assert not [e for e in audit_entries(Store(db).engine) if e["action"] == "run.start"]
