"""API keys with scopes and the audit log of admin actions: two tables in the serving store.

A key is ``tl-`` + 43 random URL-safe characters (256 bits), shown once when it is made
(``tuneloop keys add``); the store keeps only its SHA-256. A slow password hash is not needed: the key
is random, so there is nothing to guess from a leaked hash. Scopes:

- ``infer``: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``
- ``feedback``: ``POST /v1/feedback``
- ``admin``: what changes what is served (registry promote/rollback and writes, key management)

Admin actions go to ``audit_log`` through :func:`audit` (``actor`` is the key name, or ``cli:<user>``
for a command run on the machine). Call it from any module that changes what is served.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, Column, DateTime, Integer, String, Table, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from tuneloop.errors import UserError
from tuneloop.database.engine import open_engine, utcnow
from tuneloop.serve.store import metadata

SCOPES = ("infer", "feedback", "admin")
KEY_PREFIX = "tl-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

api_keys_table = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), unique=True),
    Column("key_sha256", String(64), unique=True),
    Column("scopes", String(64)),  # comma-separated, a subset of SCOPES
    Column("rate_limit_per_minute", Integer, nullable=True),  # None: the server's --rate-limit
    Column("created", DateTime(timezone=True)),
    Column("revoked", DateTime(timezone=True), nullable=True),
)

audit_table = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created", DateTime(timezone=True), index=True),
    Column("actor", String(128)),
    Column("action", String(64), index=True),
    Column("detail", JSON, nullable=True),
)


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a stored key, the ``--api-key`` (all scopes), or anyone (no auth)."""

    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(scopes) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(s.strip() for part in scopes for s in part.split(",") if s.strip()))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise UserError(f"unknown scope {unknown[0]!r}" if unknown else "a key needs at least one scope",
                        where="--scope", hint=f"choose from {', '.join(SCOPES)} (repeat --scope or join with commas)")
    return chosen


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def audit(actor: str, action: str, detail: dict | None = None, engine: Engine | None = None,
          db_url: str | None = None) -> None:
    """Append one admin action to the audit log (``engine`` or ``db_url``; default: the default store)."""
    engine = engine or open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(insert(audit_table).values(created=utcnow(), actor=actor, action=action, detail=detail))


def audit_entries(engine: Engine, since: datetime | None = None) -> list[dict]:
    query = select(audit_table).order_by(audit_table.c.id)
    if since is not None:
        query = query.where(audit_table.c.created >= since)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def add_key(engine: Engine, name: str, scopes, rate_limit_per_minute: int | None = None,
            actor: str | None = None) -> str:
    """Store a new key; returns the key itself (the only time it exists in clear)."""
    if not _NAME.fullmatch(name):
        raise UserError(f"key name {name!r} is not allowed", where="NAME",
                        hint="1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")
    chosen = parse_scopes(scopes)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(insert(api_keys_table).values(
                name=name, key_sha256=hash_key(key), scopes=",".join(chosen),
                rate_limit_per_minute=rate_limit_per_minute, created=utcnow()))
    except IntegrityError:
        raise UserError(f"a key named {name!r} already exists", where="NAME",
                        hint="pick another name, or revoke the old key first (`tuneloop keys revoke NAME`)") from None
    audit(actor or cli_actor(), "key.add", {"name": name, "scopes": list(chosen),
                                            "rate_limit_per_minute": rate_limit_per_minute}, engine)
    return key


def revoke_key(engine: Engine, name: str, actor: str | None = None) -> None:
    with engine.begin() as conn:
        done = conn.execute(update(api_keys_table).where(
            api_keys_table.c.name == name, api_keys_table.c.revoked.is_(None)).values(revoked=utcnow()))
    if done.rowcount == 0:
        raise UserError(f"no active key named {name!r}", where="NAME", hint="`tuneloop keys list` shows the keys")
    audit(actor or cli_actor(), "key.revoke", {"name": name}, engine)


def list_keys(engine: Engine) -> list[dict]:
    """Every key ever made (never the key itself): name, scopes, limit, created, revoked."""
    columns = [c for c in api_keys_table.c if c.name != "key_sha256"]
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(select(*columns).order_by(api_keys_table.c.id))]


def active_principals(engine: Engine) -> dict[str, Principal]:
    """key hash -> Principal, for the keys not revoked."""
    query = select(api_keys_table).where(api_keys_table.c.revoked.is_(None))
    with engine.connect() as conn:
        return {row.key_sha256: Principal(row.name, frozenset(row.scopes.split(",")), row.rate_limit_per_minute)
                for row in conn.execute(query)}
