"""The store's Alembic migrations: a store made by tuneloop 0.1 (before migrations; fixture dumps
made by tests/fixtures/store_v0_1/make_fixture.py from that release's code) upgrades keeping every
row, on SQLite and PostgreSQL; the migrations give exactly the tables the code declares; replicas
opening one new database at once all succeed; idempotent feedback is stored once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, select, text

from tuneloop.registry.store import Registry
from tuneloop.registry.store import metadata as registry_metadata
from tuneloop.database import migrations
from tuneloop.serve.access import active_principals
from tuneloop.serve.store import FeedbackRow, Store, metadata as serve_metadata

from store_support import postgres_schema, run_sql_script

FIXTURES = Path(__file__).parent / "fixtures" / "store_v0_1"
FIXTURE_SCHEMA = "tuneloop_legacy_fixture"
TABLES = {"requests": 4, "feedback": 3, "api_keys": 2, "audit_log": 4, "registry_models": 1, "registry_versions": 2,
          "registry_aliases": 2, "registry_events": 7, "improve_rounds": 2}  # rows in the fixture


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def legacy_store(request, tmp_path):
    """The URL of a fresh copy of the 0.1 fixture store."""
    if request.param == "sqlite":
        db = tmp_path / "serve.db"
        con = sqlite3.connect(db)
        con.executescript((FIXTURES / "sqlite.sql").read_text())
        con.close()
        yield f"sqlite:///{db}"
        return
    with postgres_schema("legacy") as (schema, url):
        run_sql_script(url, f"DROP SCHEMA {schema};\n" + (FIXTURES / "postgres.sql").read_text()
                       .replace(FIXTURE_SCHEMA, schema))
        yield url


def _all_rows(url: str) -> dict[str, list[dict]]:
    engine = create_engine(url)
    reflected = MetaData()
    reflected.reflect(engine)
    with engine.connect() as conn:
        rows = {name: [dict(r._mapping) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]
                for name, table in reflected.tables.items()}
    engine.dispose()
    return rows


def test_a_v0_1_store_upgrades_keeping_every_row(legacy_store):
    before = _all_rows(legacy_store)
    assert {name: len(rows) for name, rows in before.items()} == TABLES

    store = Store(legacy_store)  # the upgrade happens here
    registry = Registry(legacy_store)
    after = _all_rows(legacy_store)
    for name, rows in before.items():
        assert [{k: r[k] for k in rows[0]} for r in after[name]] == rows, name
    assert all(r["idempotency_key"] is None for r in after["feedback"])
    with store.engine.connect() as conn:
        assert migrations.current_revision(conn) == migrations.head_revision()

    # The old rows read back through this release's API as they were written.
    assert [r["id"] for r in store.requests()] == ["chatcmpl-0001", "chatcmpl-0002", "cmpl-0003", "chatcmpl-0004"]
    assert store.request_choices("chatcmpl-0002") == ["because", "it is so"]
    assert [(f["rating"], f["score"], f["choice"]) for f in store.feedback()] == [(1, None, None), (-1, None, None),
                                                                                 (None, 3, 1)]
    assert sorted(p.name for p in active_principals(store.engine).values()) == ["ci-bot"]
    assert registry.get("support", "production").version == 1  # the fixture rolled v2 back
    assert [(e["action"], e["alias"], e["to_version"]) for e in registry.events("support")][-2:] == \
        [("rollback", "production", 1), ("rollback", "archived", 2)]
    assert registry.feedback_through("support") == 3

    # ...and the upgraded store takes new writes, the feedback ids going on from the old ones.
    first, written = store.record_feedback(FeedbackRow("cmpl-0003", "support", 1, idempotency_key="k-1"))
    again, written_again = store.record_feedback(FeedbackRow("cmpl-0003", "support", 1, idempotency_key="k-1"))
    assert (written, written_again, first["id"], again["id"]) == (True, False, 4, 4)
    assert len(store.feedback()) == 4
    store.close()
    registry.close()

    reopened = Store(legacy_store)  # a second open is a no-op upgrade
    assert len(reopened.requests()) == 4
    reopened.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_store(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'new' / 'serve.db'}"
        return
    with postgres_schema("fresh") as (_schema, url):
        yield url


def test_migrations_create_exactly_the_declared_tables(new_store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    Store(new_store).close()
    engine = create_engine(new_store)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = [d for d in compare_metadata(context, [serve_metadata, registry_metadata])
                       if not (d[0] == "remove_table" and d[1].name == migrations.VERSION_TABLE)]
    engine.dispose()
    # A failure lists what the code declares but no migration creates (or the reverse): write the
    # migration (see tuneloop/database/migrations/__init__.py).
    assert differences == []


def test_replicas_opening_one_new_database_at_once_all_succeed(new_store):
    errors, stores = [], []

    def open_store():
        try:
            stores.append(Store(new_store))
        except Exception as e:  # noqa: BLE001 - collected and shown by the assert
            errors.append(repr(e))

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with stores[0].engine.connect() as conn:
        assert migrations.current_revision(conn) == migrations.head_revision()
        assert conn.execute(text(f"SELECT count(*) FROM {migrations.VERSION_TABLE}")).scalar() == 1
    for store in stores:
        store.close()


def test_a_store_of_a_newer_release_is_refused_with_a_clear_error(tmp_path):
    from tuneloop.errors import UserError

    url = f"sqlite:///{tmp_path / 'serve.db'}"
    Store(url).close()
    con = sqlite3.connect(tmp_path / "serve.db")
    con.execute(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '9999'")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="newer tuneloop"):
        Store(url)


def test_an_earlier_store_without_the_late_columns_and_tables_upgrades_too(tmp_path):
    # Stores older than 0.1's last schema: no n=2 choices, no 1-5 score, no registry or keys yet.
    db = tmp_path / "serve.db"
    con = sqlite3.connect(db)
    con.executescript((FIXTURES / "sqlite.sql").read_text())
    con.executescript("""
        ALTER TABLE requests DROP COLUMN choices; ALTER TABLE feedback DROP COLUMN score;
        ALTER TABLE feedback DROP COLUMN choice; DROP TABLE registry_aliases; DROP TABLE registry_versions;
        DROP TABLE registry_events; DROP TABLE improve_rounds; DROP TABLE registry_models;
        DROP TABLE api_keys; DROP TABLE audit_log;""")
    con.close()
    before = _all_rows(f"sqlite:///{db}")
    Store(f"sqlite:///{db}").close()
    after = _all_rows(f"sqlite:///{db}")
    assert set(after) == set(TABLES) | {migrations.VERSION_TABLE}
    for name, rows in before.items():
        assert [{k: r[k] for k in rows[0]} for r in after[name]] == rows, name
    assert [(r["score"], r["choice"], r["idempotency_key"]) for r in after["feedback"]] == [(None, None, None)] * 3
    assert Registry(f"sqlite:///{db}").names() == []
