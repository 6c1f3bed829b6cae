"""Alembic migrations of the store's database: the serving, access and registry tables, one history.

Every engine that ``database/engine.py`` opens runs :func:`upgrade` first, so ``tuneloop serve``,
``monitor``, ``keys``, ``registry`` and ``improve`` all bring an older store up to this release's
schema before they touch it, on SQLite and PostgreSQL alike. Revision ``0001`` is the schema of
tuneloop 0.1, made by ``create_all`` before there were migrations: it creates whatever of that schema
is missing, so a store of any earlier version (or none) reaches the same starting point.

Concurrent first opens (two replicas starting against one new database) are serialised: PostgreSQL
by an advisory lock held for the upgrade's transaction, SQLite by ``BEGIN IMMEDIATE``. The upgrade
is one transaction on both (their DDL is transactional), so a crash mid-upgrade leaves the old schema.

A schema change is a new file in ``versions/`` (copy the newest; ``down_revision`` is its
``revision``) next to the change of the ``Table`` definitions; ``tests/test_store_migrations.py``
fails while the two disagree.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).parent
VERSION_TABLE = "tuneloop_alembic_version"  # not alembic_version: the database may hold an app's own
_ADVISORY_LOCK_ID = 0x74756E65  # any constant: the key every tuneloop process locks while upgrading


def alembic_config(connection: Connection | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database behind ``engine`` to the newest revision (a no-op when it is there)."""
    with engine.connect() as conn:
        if current_revision(conn) == head_revision():
            return
    from alembic import command

    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        migrator = engine  # an in-memory database exists only on the engine's own connection
    else:
        # A connection of its own: SQLite's upgrade must start with BEGIN IMMEDIATE, which the store's
        # engines (pysqlite begins lazily) do not emit.
        migrator = create_engine(engine.url, poolclass=NullPool)
        if migrator.dialect.name == "sqlite":
            begin_immediate(migrator)
    try:
        with migrator.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_ID)))
            command.upgrade(alembic_config(conn), "head")
    finally:
        if migrator is not engine:
            migrator.dispose()


def begin_immediate(engine: Engine, busy_timeout_ms: int = 10000) -> None:
    """Every transaction of a SQLite ``engine`` takes the write lock at its start (BEGIN IMMEDIATE).

    pysqlite starts transactions lazily (at the first write), so two read-modify-write transactions
    could both read the same value; this is the SQLAlchemy documentation's recipe for serialisable
    SQLite transactions. A second writer waits up to ``busy_timeout_ms`` for the lock.
    """

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
