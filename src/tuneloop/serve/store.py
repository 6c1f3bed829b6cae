"""Where every served request and every feedback is kept: two SQLAlchemy tables.

SQLite (WAL mode, ``$TUNELOOP_HOME/serve.db``) by default; any SQLAlchemy URL such as
``postgresql+psycopg://user:pw@host/db`` with ``--db``: several replicas share one PostgreSQL.
:func:`open_engine` is how every table of the store (these, ``access.py``'s, the registry's) is
opened; it upgrades the schema first (Alembic, ``migrations/``). The server writes through
:class:`Store` from a single writer thread (see ``app.py``), so the event loop never waits on disk
and SQLite sees one writer. ``tuneloop monitor`` and ``tuneloop data from-feedback`` read the same
tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text,
                        create_engine, event, insert, select)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from tuneloop.errors import UserError
from tuneloop.paths import make_dir, tuneloop_home
from tuneloop.serve import migrations

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


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def default_db_url() -> str:
    return f"sqlite:///{tuneloop_home() / 'serve.db'}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets `tuneloop monitor` read while the server writes; NORMAL sync is durable across a
    # process crash (only an OS crash can lose the last commits), which is what a restart needs.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_engine(url: str | None, serialisable: bool = False) -> Engine:
    """A SQLAlchemy engine on the store at ``url`` (default: the SQLite file under TUNELOOP_HOME),
    its schema upgraded to this release's (``migrations/``). Every table of the store (serving,
    access, registry) is opened through here.

    ``serialisable``: on SQLite every transaction takes the write lock at its start (the registry's
    compare-and-set needs it; PostgreSQL gets the same from row locks).
    """
    url = url or default_db_url()
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except Exception as e:  # bad URL syntax or a missing driver: both are the user's to fix
        raise UserError(f"cannot use database URL {url!r}: {e}", where="--db",
                        hint="e.g. sqlite:///serve.db or postgresql+psycopg://user:pw@host/db") from e
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            make_dir(Path(database).expanduser().parent, "--db")
        event.listen(engine, "connect", _sqlite_pragmas)
        if serialisable:
            migrations.begin_immediate(engine)
    try:
        migrations.upgrade(engine)
    except Exception as e:
        engine.dispose()
        raise UserError(f"cannot open database {engine.url.render_as_string(hide_password=True)}: "
                        f"{getattr(e, 'orig', None) or e}", where="--db",
                        hint=_open_hint(engine, e)) from None
    return engine


def _open_hint(engine: Engine, error: Exception) -> str:
    if "Can't locate revision" in str(error):
        return "a newer tuneloop upgraded this store: upgrade tuneloop (`pip install -U tuneloop`)"
    if engine.dialect.name == "sqlite":
        return "an SQLite URL must name a new file or a tuneloop store"
    return "check that the server is running and the URL is right"


def require_existing_store(url: str) -> None:
    """For readers (monitor, from-feedback): a mistyped SQLite path must not become a new, empty store."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # open_engine reports the unparsable URL
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not Path(database).expanduser().is_file():
        raise UserError(f"no serving store at {database}", where="--db",
                        hint="pass the --db URL that `tuneloop serve` used (default: omit --db)")


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
