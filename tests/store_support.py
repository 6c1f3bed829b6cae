"""Helpers for tests of the store on PostgreSQL: a schema of its own per test, dropped afterwards,
so tests share one database (the one `.ci/services.sh` creates) without seeing each other's rows."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("TUNELOOP_TEST_POSTGRES_URL")


def require_postgres() -> str:
    if not POSTGRES_URL:
        pytest.skip("TUNELOOP_TEST_POSTGRES_URL is not set (source .ci/services.sh to start PostgreSQL)")
    return POSTGRES_URL


@contextmanager
def postgres_schema(prefix: str = "t") -> Iterator[tuple[str, str]]:
    """(schema name, a URL whose connections use only that schema); the schema is dropped on exit."""
    base = require_postgres()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield schema, url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def run_sql_script(url: str, script: str) -> None:
    """Run a multi-statement SQL script (a pg_dump) as psql would, on the driver's own cursor."""
    engine = create_engine(url)
    raw = engine.raw_connection()
    try:
        raw.cursor().execute(script)  # psycopg runs several statements in one call without parameters
        raw.commit()
    finally:
        raw.close()
        engine.dispose()
