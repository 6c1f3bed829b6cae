"""``tuneloop monitor``: numbers computed from known rows, checked against hand-computed values."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tuneloop.cli.main import main
from tuneloop.monitor.report import parse_window, percentile, summarize
from tuneloop.serve.store import FeedbackRow, RequestRow, Store


def _row(i, model, latency, status=200, **kw):
    return {"id": f"c{i}", "model": model, "latency_ms": latency, "status": status, "prompt_tokens": 10,
            "completion_tokens": 5 if status == 200 else 0, **kw}


def test_percentile_interpolates_like_numpy():
    assert percentile([10, 20, 30, 40], 50) == 25
    assert percentile([10, 20, 30, 40], 95) == pytest.approx(38.5)
    assert percentile([7], 95) == 7 and percentile([], 50) is None


def test_summary_of_known_rows():
    requests = [_row(1, "base", 100), _row(2, "base", 200), _row(3, "base", 300), _row(4, "base", 400),
                _row(5, "base", 9999, status=408), _row(6, "tuned", 50), _row(7, "tuned", 0, status=404)]
    feedback = [{"model": "base", "rating": 1}, {"model": "base", "rating": -1}, {"model": "base", "rating": 1},
                {"model": "tuned", "rating": -1}]
    base, tuned = summarize(requests, feedback)
    assert (base.model, base.requests, base.errors, base.error_rate) == ("base", 5, 1, 0.2)
    assert base.latency_ms_p50 == 250 and base.latency_ms_p95 == pytest.approx(385)  # errors excluded
    assert (base.ratings, base.positive, base.satisfaction) == (3, 2, pytest.approx(2 / 3))
    assert base.completion_tokens == 20 and base.prompt_tokens == 50
    assert (tuned.requests, tuned.error_rate, tuned.latency_ms_p50, tuned.satisfaction) == (2, 0.5, 50, 0.0)


def test_window_parsing():
    assert parse_window("90s") == timedelta(seconds=90) and parse_window("2d") == timedelta(days=2)
    assert parse_window("1.5h") == timedelta(minutes=90)


def test_monitor_command_reads_the_window_from_the_store(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    store = Store(db)
    now = datetime.now(timezone.utc)
    for i, latency in enumerate([100, 200, 300]):
        store.record_request(RequestRow(f"r{i}", "support", "chat", latency, 200, 10, 4, created=now))
    store.record_request(RequestRow("r-err", "support", "chat", 5, 400, error="bad", created=now))
    store.record_request(RequestRow("r-old", "support", "chat", 5000, 200, created=now - timedelta(hours=5)))
    store.record_feedback(FeedbackRow("r0", "support", 1, created=now))
    store.record_feedback(FeedbackRow("r1", "support", -1, created=now))
    store.record_feedback(FeedbackRow("r2", "support", 1, created=now))
    store.record_feedback(FeedbackRow("r-old", "support", -1, created=now - timedelta(hours=5)))
    store.close()

    assert _run(["monitor", "--db", db, "--since", "1h", "--json"]) == 0
    (stats,) = json.loads(capsys.readouterr().out)["models"]
    assert (stats["requests"], stats["errors"], stats["error_rate"]) == (4, 1, 0.25)
    assert (stats["latency_ms_p50"], stats["latency_ms_p95"]) == (200, pytest.approx(290))
    assert (stats["ratings"], stats["satisfaction"]) == (3, pytest.approx(2 / 3))

    assert _run(["monitor", "--db", db, "--since", "1d"]) == 0
    table = capsys.readouterr().out
    assert "support" in table and "p95 ms" in table and "5 requests" in table and "50%" in table

    assert _run(["monitor", "--db", db, "--since", "soon"]) == 1
    assert "--since" in capsys.readouterr().err


def _run(argv) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return e.code or 0
    return 0
