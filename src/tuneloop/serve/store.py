"""Where every served request and every feedback is kept: two SQLAlchemy tables.

SQLite (WAL mode, ``$TUNELOOP_HOME/serve.db``) by default; any SQLAlchemy URL such as
``postgresql+psycopg://user:pw@host/db`` with ``--db``: several replicas share one PostgreSQL.
:func:`tuneloop.database.engine.open_engine` opens it (and every other table of the database:
``access.py``'s, the registry's), upgrading the schema first. The server writes through
:class:`Store` from a single writer thread (see ``app.py``), so the event loop never waits on disk
and SQLite sees one writer. ``tuneloop monitor`` and ``tuneloop data from-feedback`` read the same
tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text, insert, select
from sqlalchemy.exc import IntegrityError

from tuneloop.database.engine import open_engine, utcnow

metadata = MetaData()

requests_table = Table(
    "requests", metadata,
    Column("id", String(64), primary_key=True),  # chatcmpl-... / cmpl-...: what feedback refers to
    Column("model", String(200), index=True),
    Column("kind", String(16)),  # "chat" or "completion"
    Column("created", DateTime(timezone=True), index=True),
    Column("latency_ms", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("status", Integer),  # the HTTP status the client got
    Column("error", Text, nullable=True),
    Column("prompt", JSON, nullable=True),  # messages list (chat) or prompt string (completion)
    Column("response", Text, nullable=True),
    Column("finish_reason", String(16), nullable=True),
    Column("stream", Integer, default=0),
    Column("choices", JSON, nullable=True),  # every candidate answer when a request asked for n > 1
    # Covering indexes for the dashboard's queries (migration 0003). A row holds a whole prompt and
    # answer, so a query that must read rows is many times slower than one an index serves. By time:
    # the hourly sums and the recent page's ids; by model: latency percentiles in latency order.
    Index("ix_requests_dashboard_time", "created", "model", "status", "latency_ms", "completion_tokens", "id"),
    Index("ix_requests_dashboard_model", "model", "status", "latency_ms", "created"),
)

feedback_table = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("completion_id", String(64), index=True),
    Column("model", String(200), index=True),
    Column("rating", Integer, nullable=True),  # -1 or 1 (thumbs); derived from score where only that was given
    Column("comment", Text, nullable=True),
    Column("correction", Text, nullable=True),
    Column("created", DateTime(timezone=True), index=True),
    Column("score", Integer, nullable=True),  # a 1-5 rating
    Column("choice", Integer, nullable=True),  # the preferred answer's index among the request's choices
    # The client's Idempotency-Key header: a retried feedback (another replica, a lost response) is
    # stored once. NULL when the client sent none.
    Column("idempotency_key", String(128), nullable=True),
    Index("uq_feedback_idempotency_key", "idempotency_key", unique=True),
)


@dataclass
class RequestRow:
    id: str
    model: str | None
    kind: str
    latency_ms: float
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    prompt: object = None
    response: str | None = None
    finish_reason: str | None = None
    stream: bool = False
    created: datetime | None = None
    choices: list[str] | None = None


@dataclass
class FeedbackRow:
    completion_id: str
    model: str | None
    rating: int | None
    comment: str | None = None
    correction: str | None = None
    created: datetime | None = None
    score: int | None = None
    choice: int | None = None
    idempotency_key: str | None = None


class Store:
    """Writes and reads of the serving tables. Thread-safe (one connection per call from the pool)."""

    def __init__(self, url: str | None = None):
        self.engine = open_engine(url)
        self.url = self.engine.url.render_as_string(hide_password=True)

    def record_request(self, row: RequestRow) -> None:
        values = dict(row.__dict__)
        values["created"] = row.created or utcnow()
        values["stream"] = int(row.stream)
        with self.engine.begin() as conn:
            conn.execute(insert(requests_table).values(**values))

    def record_feedback(self, row: FeedbackRow) -> tuple[dict, bool]:
        """Store ``row``: (the stored row, True). With an ``idempotency_key`` already stored nothing
        is written: (the row stored first under that key, False); the caller compares its completion_id."""
        values = dict(row.__dict__)
        values["created"] = row.created or utcnow()
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(insert(feedback_table).values(**values)).inserted_primary_key[0]
            return {**values, "id": new_id}, True
        except IntegrityError:
            # The unique index, not a read before the write, decides: two replicas may receive the
            # same retried feedback at the same moment.
            stored = self.feedback_by_key(row.idempotency_key) if row.idempotency_key else None
            if stored is None:
                raise
            return stored, False

    def feedback_by_key(self, idempotency_key: str) -> dict | None:
        query = select(feedback_table).where(feedback_table.c.idempotency_key == idempotency_key)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else dict(row._mapping)

    def request_model(self, completion_id: str) -> str | None:
        """The model a stored completion came from, or None when there is no such successful completion."""
        query = select(requests_table.c.model).where(
            requests_table.c.id == completion_id, requests_table.c.status == 200)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    def request_choices(self, completion_id: str) -> list | None:
        """The candidate answers of an n=2 completion (None for n=1 or an unknown id)."""
        query = select(requests_table.c.choices).where(requests_table.c.id == completion_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    def requests(self, since: datetime | None = None) -> list[dict]:
        query = select(requests_table).order_by(requests_table.c.created)
        if since is not None:
            query = query.where(requests_table.c.created >= since)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def feedback(self, since: datetime | None = None) -> list[dict]:
        query = select(feedback_table).order_by(feedback_table.c.id)
        if since is not None:
            query = query.where(feedback_table.c.created >= since)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def close(self) -> None:
        self.engine.dispose()
