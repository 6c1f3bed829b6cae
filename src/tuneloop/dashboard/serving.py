"""Serving statistics straight from the store's tables, with SQL doing the counting.

``tuneloop monitor`` loads a window's rows into Python; at 100,000 stored requests that is seconds,
too slow for a page. Here each figure is one aggregate query over the ``created`` / ``model`` /
``completion_id`` indexes: counts and sums grouped by model, percentiles by ``ORDER BY ... LIMIT 2
OFFSET rank`` (numpy's linear interpolation, as ``monitor`` computes them), an hourly series, and
recent requests one page at a time with their feedback joined.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from sqlalchemy import Integer, and_, case, cast, func, select
from sqlalchemy.engine import Engine

from tuneloop.errors import UserError
from tuneloop.serve.store import feedback_table, requests_table

R, F = requests_table.c, feedback_table.c


def model_stats(engine: Engine, since: datetime) -> list[dict]:
    """Per model: requests, errors, error rate, latency p50/p95 (HTTP 200 only), tokens, satisfaction."""
    in_window = R.created >= since
    query = (select(R.model, func.count().label("requests"),
                    func.sum(case((R.status >= 400, 1), else_=0)).label("errors"),
                    func.sum(func.coalesce(R.completion_tokens, 0)).label("completion_tokens"))
             .where(in_window).group_by(R.model).order_by(R.model))
    ratings = (select(F.model, func.count(F.rating).label("ratings"),
                      func.sum(case((F.rating > 0, 1), else_=0)).label("positive"))
               .where(F.created >= since).group_by(F.model))
    with engine.connect() as conn:
        rows = {r.model: dict(r._mapping) for r in conn.execute(query)}
        for r in conn.execute(ratings):
            rows.setdefault(r.model, {"model": r.model, "requests": 0, "errors": 0, "completion_tokens": 0})
            rows[r.model].update(ratings=r.ratings, positive=r.positive or 0)
        for model, row in rows.items():
            ok = and_(in_window, R.model == model if model is not None else R.model.is_(None), R.status == 200)
            row["latency_ms_p50"] = _percentile(conn, ok, 50)
            row["latency_ms_p95"] = _percentile(conn, ok, 95)
    stats = []
    for row in sorted(rows.values(), key=lambda r: r["model"] or ""):
        row.setdefault("ratings", 0)
        row.setdefault("positive", 0)
        row["errors"] = row["errors"] or 0
        row["error_rate"] = row["errors"] / row["requests"] if row["requests"] else 0.0
        row["satisfaction"] = row["positive"] / row["ratings"] if row["ratings"] else None
        stats.append(row)
    return stats


def _percentile(conn, where, q: float) -> float | None:
    n = conn.execute(select(func.count()).where(where, R.latency_ms.is_not(None))).scalar()
    if not n:
        return None
    rank = (n - 1) * q / 100
    low = math.floor(rank)
    values = list(conn.execute(select(R.latency_ms).where(where, R.latency_ms.is_not(None))
                               .order_by(R.latency_ms).limit(2).offset(low)).scalars())
    high = values[1] if len(values) > 1 else values[0]
    return values[0] + (high - values[0]) * (rank - low)


def _epoch_seconds(engine: Engine, column):
    if engine.dialect.name == "sqlite":
        return cast(func.strftime("%s", column), Integer)
    return cast(func.extract("epoch", column), Integer)  # PostgreSQL, MySQL


def hourly(engine: Engine, since: datetime, bucket_s: int = 3600) -> list[dict]:
    """Per hour: requests, errors, mean latency of successful ones, ratings and positive ratings."""
    bucket = (_epoch_seconds(engine, R.created) // bucket_s).label("bucket")
    query = (select(bucket, func.count().label("requests"),
                    func.sum(case((R.status >= 400, 1), else_=0)).label("errors"),
                    func.avg(case((R.status == 200, R.latency_ms), else_=None)).label("latency_ms_mean"))
             .where(R.created >= since).group_by(bucket).order_by(bucket))
    fbucket = (_epoch_seconds(engine, F.created) // bucket_s).label("bucket")
    rated = (select(fbucket, func.count(F.rating).label("ratings"),
                    func.sum(case((F.rating > 0, 1), else_=0)).label("positive"))
             .where(F.created >= since).group_by(fbucket))
    with engine.connect() as conn:
        series = {int(r.bucket): {"requests": r.requests, "errors": r.errors or 0,
                                  "latency_ms_mean": r.latency_ms_mean, "ratings": 0, "positive": 0}
                  for r in conn.execute(query)}
        for r in conn.execute(rated):
            series.setdefault(int(r.bucket), {"requests": 0, "errors": 0, "latency_ms_mean": None})
            series[int(r.bucket)].update(ratings=r.ratings, positive=r.positive or 0)
    return [{"start": datetime.fromtimestamp(b * bucket_s, timezone.utc).isoformat(), **v}
            for b, v in sorted(series.items())]


def recent_requests(engine: Engine, since: datetime, page: int, per_page: int = 50,
                    model: str | None = None) -> tuple[list[dict], int]:
    """One page of requests, newest first, each with its feedback (if any); and the total in the window."""
    where = [R.created >= since] + ([R.model == model] if model else [])
    query = (select(R.id, R.created, R.model, R.kind, R.status, R.latency_ms, R.completion_tokens,
                    func.substr(R.response, 1, 200).label("response"), R.error,
                    F.rating, F.score, F.comment)
             .select_from(requests_table.outerjoin(feedback_table, F.completion_id == R.id))
             .where(*where).order_by(R.created.desc()).limit(per_page).offset((page - 1) * per_page))
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(requests_table).where(*where)).scalar()
        rows = [dict(r._mapping) for r in conn.execute(query)]
    return rows, total


WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}


def parse_window(text: str) -> timedelta:
    if text not in WINDOWS:
        raise UserError(f"{text!r} is not a window the page offers", where="since",
                        hint="one of " + ", ".join(WINDOWS))
    return WINDOWS[text]


def window_start(since: timedelta, now: datetime | None = None) -> datetime:
    return (now or datetime.now(timezone.utc)) - since
