"""Opening the one SQL database that serving, access keys and the registry share.

SQLite (WAL mode, ``$TUNELOOP_HOME/serve.db``) by default; any SQLAlchemy URL such as
``postgresql+psycopg://user:pw@host/db`` with ``--db``. :func:`open_engine` is how every table of it
(``serve/store.py``'s requests and feedback, ``serve/access.py``'s keys, ``registry/store.py``'s
versions) is opened; it upgrades the schema first (Alembic, ``migrations/``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from tuneloop.database import migrations
from tuneloop.errors import UserError
from tuneloop.paths import make_dir, tuneloop_home


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
