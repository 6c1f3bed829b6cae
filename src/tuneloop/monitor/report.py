"""Per-model statistics over a time window, computed from the ``requests`` and ``feedback`` tables.

Pure functions on rows (:func:`summarize`, :func:`percentile`), so the numbers can be checked
against hand-computed ones; :func:`load_window` fetches the rows from a store.

- latency p50/p95: over successful (HTTP 200) requests only, since a rejected request's latency
  says nothing about the model
- error rate: requests with a status >= 400 over all requests
- satisfaction: positive ratings over all ratings given in the window (None when there were none)
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from tuneloop.database.engine import require_existing_store
from tuneloop.errors import UserError
from tuneloop.serve.store import Store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass
class ModelStats:
    model: str
    requests: int
    errors: int
    error_rate: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    prompt_tokens: int
    completion_tokens: int
    ratings: int
    positive: int
    satisfaction: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def parse_window(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``2d``, ``1w`` -> a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"cannot read time window {text!r}", where="--since",
                        hint="a number and a unit: 90s, 30m, 1h, 2d or 1w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(requests: list[dict], feedback: list[dict]) -> list[ModelStats]:
    """One :class:`ModelStats` per model seen in ``requests`` or ``feedback``, sorted by name."""
    models = sorted({r["model"] or "-" for r in requests} | {f["model"] or "-" for f in feedback})
    stats = []
    for model in models:
        rows = [r for r in requests if (r["model"] or "-") == model]
        rated = [f["rating"] for f in feedback if (f["model"] or "-") == model and f["rating"] is not None]
        ok = [r["latency_ms"] for r in rows if r["status"] == 200 and r["latency_ms"] is not None]
        errors = sum(1 for r in rows if (r["status"] or 0) >= 400)
        positive = sum(1 for rating in rated if rating > 0)
        stats.append(ModelStats(
            model=model, requests=len(rows), errors=errors,
            error_rate=errors / len(rows) if rows else 0.0,
            latency_ms_p50=percentile(ok, 50), latency_ms_p95=percentile(ok, 95),
            prompt_tokens=sum(r["prompt_tokens"] or 0 for r in rows),
            completion_tokens=sum(r["completion_tokens"] or 0 for r in rows),
            ratings=len(rated), positive=positive,
            satisfaction=positive / len(rated) if rated else None))
    return stats


def load_window(db_url: str | None, since: timedelta, now: datetime | None = None):
    """(requests, feedback) rows created within ``since`` before ``now``."""
    start = (now or datetime.now(timezone.utc)) - since
    if db_url:
        require_existing_store(db_url)
    store = Store(db_url)
    try:
        return store.requests(since=start), store.feedback(since=start)
    finally:
        store.close()


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def format_table(stats: list[ModelStats]) -> str:
    header = ("model", "requests", "errors", "error rate", "p50 ms", "p95 ms", "tokens out", "ratings",
              "satisfaction")
    rows = [(s.model, str(s.requests), str(s.errors), f"{s.error_rate:.1%}", _fmt(s.latency_ms_p50, "{:.0f}"),
             _fmt(s.latency_ms_p95, "{:.0f}"), str(s.completion_tokens), str(s.ratings),
             _fmt(s.satisfaction, "{:.0%}")) for s in stats]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
