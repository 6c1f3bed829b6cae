"""Serving statistics straight from the store's tables, with SQL doing the counting.

``tuneloop monitor`` loads a window's rows into Python; at 100,000 stored requests that takes seconds,
too slow for a page. Here the counts are sums per (hour, model) from one grouped query over a
covering index, kept in :class:`HourlySums` once an hour has ended (a closed hour's rows do not
change: the server stamps each row with the time it writes it), so a page view re-reads only the
current hour and the window's partial first hour. Latency percentiles come from the model index in
latency order (``LIMIT 2 OFFSET rank``: numpy's linear interpolation, as ``monitor`` computes them);
recent requests are read a page at a time with their feedback joined.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, case, func, select
from sqlalchemy.engine import Engine

from tuneloop.database.engine import utcnow
from tuneloop.errors import UserError
from tuneloop.serve.store import feedback_table, requests_table

R, F = requests_table.c, feedback_table.c
HOUR = timedelta(hours=1)
SUMS = ("requests", "errors", "completion_tokens", "latency_sum", "latency_n", "ratings", "positive")

# The page's covering indexes are declared with the requests table (serve/store.py) and created by
# the store's migration 0003.
DASHBOARD_INDEXES = tuple(i for i in requests_table.indexes if i.name.startswith("ix_requests_dashboard"))


def ensure_indexes(engine: Engine) -> None:
    for index in DASHBOARD_INDEXES:
        index.create(engine, checkfirst=True)


def _hour(engine: Engine, column):
    # SQLite keeps a DateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' text: its first 13 characters are the hour
    # (a string slice, much cheaper per row than strftime). Elsewhere: date_trunc (PostgreSQL).
    if engine.dialect.name == "sqlite":
        return func.substr(column, 1, 13)
    return func.date_trunc("hour", column)


def _hour_start(value) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.strptime(value, "%Y-%m-%d %H").replace(tzinfo=timezone.utc)


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _empty() -> dict:
    return dict.fromkeys(SUMS, 0)


class HourlySums:
    """Sums per (hour, model) of the requests and feedback tables; ended hours are read from SQL once."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._closed: dict[datetime, dict] = {}  # hour start -> {model: sums}
        self._lock = threading.Lock()

    def window(self, since: datetime, now: datetime | None = None) -> dict[datetime, dict]:
        """{hour start: {model: sums}} for the rows created in [since, now]."""
        now = now or utcnow()
        current = _floor_hour(now)
        if since >= current:
            return self._read(since, None)
        first_full = since if since == _floor_hour(since) else _floor_hour(since) + HOUR
        out: dict[datetime, dict] = {}
        if first_full > since:  # the window's partial first hour: not the whole hour, so not cached
            out.update(self._read(since, first_full))
        with self._lock:
            for begin, end in _runs_of_missing(list(_hours(first_full, current)), self._closed):
                read = self._read(begin, end)
                for h in _hours(begin, end):
                    self._closed[h] = read.get(h, {})
            out.update({h: self._closed[h] for h in _hours(first_full, current)})
        for h, models in self._read(max(current, since), None).items():  # the hour still being written
            out[h] = models
        return out

    def _read(self, start: datetime, end: datetime | None) -> dict[datetime, dict]:
        bucket = _hour(self.engine, R.created).label("bucket")
        where = [R.created >= start] + ([R.created < end] if end is not None else [])
        ok = R.status == 200
        query = (select(bucket, R.model, func.count().label("requests"),
                        func.sum(case((R.status >= 400, 1), else_=0)).label("errors"),
                        func.sum(func.coalesce(R.completion_tokens, 0)).label("completion_tokens"),
                        func.sum(case((and_(ok, R.latency_ms.is_not(None)), R.latency_ms), else_=0)).label("latency_sum"),
                        func.sum(case((and_(ok, R.latency_ms.is_not(None)), 1), else_=0)).label("latency_n"))
                 .where(*where).group_by(bucket, R.model))
        fbucket = _hour(self.engine, F.created).label("bucket")
        fwhere = [F.created >= start] + ([F.created < end] if end is not None else [])
        rated = (select(fbucket, F.model, func.count(F.rating).label("ratings"),
                        func.sum(case((F.rating > 0, 1), else_=0)).label("positive"))
                 .where(*fwhere).group_by(fbucket, F.model))
        out: dict[datetime, dict] = defaultdict(dict)
        with self.engine.connect() as conn:
            for r in conn.execute(query):
                out[_hour_start(r.bucket)][r.model] = {**_empty(), **{k: r._mapping[k] or 0 for k in SUMS[:5]}}
            for r in conn.execute(rated):
                sums = out[_hour_start(r.bucket)].setdefault(r.model, _empty())
                sums.update(ratings=r.ratings or 0, positive=r.positive or 0)
        return dict(out)


def _runs_of_missing(hours: list[datetime], known: dict) -> list[tuple[datetime, datetime]]:
    """[start, end) ranges of consecutive hours not in ``known`` (each is read with one query)."""
    ranges: list[list[datetime]] = []
    for h in hours:
        if h in known:
            continue
        if ranges and ranges[-1][1] == h:
            ranges[-1][1] = h + HOUR
        else:
            ranges.append([h, h + HOUR])
    return [(a, b) for a, b in ranges]


def _hours(start: datetime, end: datetime):
    hour = start
    while hour < end:
        yield hour
        hour += HOUR


def model_stats(engine: Engine, sums: dict[datetime, dict], since: datetime) -> list[dict]:
    """Per model: requests, errors, error rate, latency p50/p95 (HTTP 200 only), tokens, satisfaction."""
    totals: dict = defaultdict(_empty)
    for models in sums.values():
        for model, row in models.items():
            for k in SUMS:
                totals[model][k] += row[k]
    stats = []
    with engine.connect() as conn:
        for model in sorted(totals, key=lambda m: m or ""):
            row = totals[model]
            ok = and_(R.created >= since, R.model == model if model is not None else R.model.is_(None),
                      R.status == 200)
            stats.append({"model": model, "requests": row["requests"], "errors": row["errors"],
                          "completion_tokens": row["completion_tokens"], "ratings": row["ratings"],
                          "positive": row["positive"],
                          "error_rate": row["errors"] / row["requests"] if row["requests"] else 0.0,
                          "satisfaction": row["positive"] / row["ratings"] if row["ratings"] else None,
                          **_percentiles(conn, ok, row["latency_n"], {"latency_ms_p50": 50, "latency_ms_p95": 95})})
    return stats


def hourly(sums: dict[datetime, dict]) -> list[dict]:
    """Per hour over all models: requests, errors, mean latency of successful ones, ratings, positive."""
    series = []
    for hour in sorted(sums):
        total = _empty()
        for row in sums[hour].values():
            for k in SUMS:
                total[k] += row[k]
        series.append({"start": hour.isoformat(), "requests": total["requests"], "errors": total["errors"],
                       "latency_ms_mean": total["latency_sum"] / total["latency_n"] if total["latency_n"] else None,
                       "ratings": total["ratings"], "positive": total["positive"]})
    return series


def _percentiles(conn, where, n: int, wanted: dict[str, float]) -> dict[str, float | None]:
    """{name: q-th percentile of latency_ms} over the ``n`` rows matching ``where`` (numpy's interpolation).

    Each rank is read from the nearer end of the latency index (a p95 walks 5% of it, not 95%).
    ``n`` comes from the hourly sums read just before, so a request stored in between (milliseconds)
    can shift a rank by one: the page is a snapshot, not a transaction.
    """
    where = and_(where, R.latency_ms.is_not(None))
    out: dict[str, float | None] = {}
    for name, q in wanted.items():
        rank = (n - 1) * q / 100
        low = math.floor(rank)
        high = min(low + 1, n - 1)
        if n == 0:
            out[name] = None
            continue
        if low <= (n - 1) / 2:
            values = list(conn.execute(select(R.latency_ms).where(where).order_by(R.latency_ms.asc())
                                       .limit(2).offset(low)).scalars())
            pair = values[:1] * 2 if len(values) == 1 or high == low else values[:2]
        else:
            values = list(conn.execute(select(R.latency_ms).where(where).order_by(R.latency_ms.desc())
                                       .limit(2).offset(n - 1 - high)).scalars())
            pair = values[:1] * 2 if len(values) == 1 or high == low else values[1::-1]
        out[name] = None if not values else pair[0] + (pair[1] - pair[0]) * (rank - low)
    return out


def window_total(sums: dict[datetime, dict], model: str | None = None) -> int:
    """Requests in the window (of ``model``), from the hourly sums: the count the pager needs."""
    return sum(row["requests"] for models in sums.values() for m, row in models.items()
               if model is None or m == model)


def recent_requests(engine: Engine, since: datetime, page: int, per_page: int = 50,
                    model: str | None = None) -> list[dict]:
    """One page of requests, newest first, each with its feedback (if any)."""
    where = [R.created >= since] + ([R.model == model] if model else [])
    # The page's ids first, from the time index alone (an OFFSET over full rows would read them all).
    ids = (select(R.id).where(*where).order_by(R.created.desc(), R.id.desc())
           .limit(per_page).offset((page - 1) * per_page))
    query = (select(R.id, R.created, R.model, R.kind, R.status, R.latency_ms, R.completion_tokens,
                    func.substr(R.response, 1, 200).label("response"), R.error,
                    F.rating, F.score, F.comment)
             .select_from(requests_table.outerjoin(feedback_table, F.completion_id == R.id))
             .where(R.id.in_(ids.scalar_subquery())).order_by(R.created.desc(), R.id.desc()))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}


def parse_window(text: str) -> timedelta:
    if text not in WINDOWS:
        raise UserError(f"{text!r} is not a window the page offers", where="since",
                        hint="one of " + ", ".join(WINDOWS))
    return WINDOWS[text]


def window_start(since: timedelta, now: datetime | None = None) -> datetime:
    return (now or datetime.now(timezone.utc)) - since
